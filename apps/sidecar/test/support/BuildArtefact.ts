/**
 * Vitest global setup of the sidecar's project: builds the production artefact (`dist/`, the
 * same rolldown build as `pnpm --filter @sleeve/sidecar bundle`, into Sleeve.ts's `e2eDist`
 * rather than `dist/`, which the packing tests rebuild) once per test run, before any
 * test file starts, so that every end-to-end test spawns the built `main.js` — what users and
 * the container image run — from a fresh clone too, where `dist/` does not exist yet.
 *
 * `SLEEVE_E2E_SOURCE=1` skips the build and makes the harness run `src/main.ts` instead (for a
 * quick edit–test loop; see test/support/Sleeve.ts).
 */
import { build } from "rolldown"
import { options } from "../../rolldown.config.ts"
import { e2eDist, fromSource } from "./Sleeve.ts"

export default async function setup(): Promise<void> {
  if (fromSource) return
  const started = performance.now()
  await build({ ...options, output: { ...options.output, dir: e2eDist }, logLevel: "warn" })
  console.log(`sleeve e2e: built the artefact into ${e2eDist} in ${Math.round(performance.now() - started)} ms`)
}
