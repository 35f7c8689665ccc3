/**
 * Black-box harness for the `sleeve` executable: spawns it as a real process with the repo's
 * Node 24 — the production artefact, `node_modules/.bin/node dist/main.js …`, which
 * test/support/BuildArtefact.ts (the project's vitest global setup) builds once per test run —
 * on top of `Process` from @sleeve/testing (`openssl` as an oracle is `Openssl` there).
 * With `SLEEVE_E2E_SOURCE=1` in the environment, tests run `src/main.ts` instead, without a build.
 * Paths are resolved from this file, so tests run the same from any working directory.
 *
 * The child gets the caller's environment minus the variables that change the CLI's behaviour
 * (`SLEEVE_CONFIG`, `SLEEVE_VERBOSE`), with `NO_COLOR=1`; tests add what they need.
 */
import * as Process from "@sleeve/testing/Process"
import { fileURLToPath } from "node:url"

/** The monorepo root. */
export const repoRoot = fileURLToPath(new URL("../../../../", import.meta.url))
/** The repo's Node 24 (the system `node` may be older). */
export const node = fileURLToPath(new URL("../../../../node_modules/.bin/node", import.meta.url))
/** The folder holding the repo's `node` (prepend it to PATH for `#!/usr/bin/env node` scripts). */
export const nodeBinDir = fileURLToPath(new URL("../../../../node_modules/.bin/", import.meta.url))
/** apps/sidecar. */
export const appDir = fileURLToPath(new URL("../../", import.meta.url))
/** The CLI's entry point, run from source (development: `pnpm sleeve …`). */
export const mainTs = fileURLToPath(new URL("../../src/main.ts", import.meta.url))
/**
 * Where the e2e tests' copy of the production artefact is built (test/support/BuildArtefact.ts):
 * the same build as `dist/`, in a folder of its own, because the packing tests run
 * `pnpm run pack`, which empties and rebuilds `dist/` while other tests are running the artefact.
 */
export const e2eDist = fileURLToPath(new URL("../../../../node_modules/.cache/sleeve/e2e-dist/", import.meta.url))
/** The production artefact's entry point (its folder also holds the chunks it imports). */
export const mainJs = `${e2eDist}main.js`
/** `SLEEVE_E2E_SOURCE=1`: run the sources rather than the artefact. */
export const fromSource = /^(1|true|yes)$/i.test(process.env.SLEEVE_E2E_SOURCE ?? "")
/** What the e2e tests start: {@link mainJs}, or {@link mainTs} with `SLEEVE_E2E_SOURCE=1`. */
export const main = fromSource ? mainTs : mainJs

/** What a finished process left behind. */
export type Ran = Process.Ran

/** Options of {@link run}. */
export interface RunOptions {
  readonly cwd?: string
  /** Added to (and overriding) the cleaned environment; `undefined` removes a variable. */
  readonly env?: Readonly<Record<string, string | undefined>>
  /** Written to stdin, which is then closed; stdin is closed at once when absent. */
  readonly input?: string
  /** SIGKILL after this long (default 20 s). */
  readonly timeoutMs?: number
}

/** The environment a child gets: the caller's, cleaned (see the module header), plus `extra`. */
export const childEnv = (extra?: RunOptions["env"]): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: "1" }
  delete env.SLEEVE_CONFIG
  delete env.SLEEVE_VERBOSE
  for (const [k, v] of Object.entries(extra ?? {})) {
    if (v === undefined) delete env[k]
    else env[k] = v
  }
  return env
}

/** Runs `command args…` to completion in `appDir` (by default) with the cleaned environment. */
export const run = (command: string, args: ReadonlyArray<string>, options: RunOptions = {}): Promise<Ran> =>
  Process.run(command, args, {
    cwd: options.cwd ?? appDir,
    env: childEnv(options.env),
    timeoutMs: options.timeoutMs ?? 20_000,
    ...(options.input === undefined ? {} : { input: options.input })
  })

/**
 * Starts `command args…`, sends `signal` once its stdout satisfies `ready`, and resolves with
 * how it ended (for long-running commands); it is killed 25 s after the start whatever happens.
 */
export const stopWhenReady = async (
  command: string,
  args: ReadonlyArray<string>,
  options: { readonly cwd: string; readonly ready: (stdout: string) => boolean; readonly signal: NodeJS.Signals }
): Promise<Ran & { readonly signalled: boolean }> => {
  const daemon = Process.startDaemon(command, args, {
    cwd: options.cwd,
    env: childEnv(),
    stdin: "pipe",
    killAfterMs: 25_000
  })
  const signalled = await daemon.waitForOutput(options.ready, { timeoutMs: 25_000 }).then(
    () => {
      daemon.child.kill(options.signal)
      return true
    },
    () => false
  )
  const { code, signal } = await daemon.exited
  return { code, signal, stdout: daemon.stdout(), stderr: daemon.stderr(), signalled }
}

/** Runs `sleeve args…` ({@link main}) with the repo's Node. */
export const sleeve = (args: ReadonlyArray<string>, options: RunOptions = {}): Promise<Ran> =>
  run(node, [main, ...args], options)

/** The lines of an output, without the final newline. */
export const lines = (text: string): ReadonlyArray<string> => (text === "" ? [] : text.replace(/\n$/, "").split("\n"))
