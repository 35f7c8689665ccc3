/**
 * The Sleeve contestant runs exactly what users run: the production artefact
 * `apps/sidecar/dist/main.js`, executed through its own `#!` line (as the `sleeve` command, the
 * container image and the systemd unit do), so that whatever Node flags the launcher carries are
 * part of the measurement. The suite builds the artefact when it is missing or older than any of
 * its inputs (the sources of the sidecar and of the packages it bundles, the build configuration,
 * the lockfile).
 */
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"

export interface Artefact {
  /** `apps/sidecar/dist/main.js`. */
  readonly main: string
  /** Its `#!` line, as written by the build. */
  readonly shebang: string
  /** The Node flags the `#!` line passes (empty for `#!/usr/bin/env node`; undefined when the line does not run node directly). */
  readonly nodeFlags: ReadonlyArray<string> | undefined
  /** Prepended to PATH for the child, so that `/usr/bin/env node` finds the repository's Node 24. */
  readonly pathPrefix: string
  /** Why it was (re)built, or undefined when the existing build was up to date. */
  readonly built: string | undefined
}

/** Files and folders whose change makes `dist/` stale. */
const inputs = (root: string) =>
  [
    "apps/sidecar/src",
    "apps/sidecar/rolldown.config.ts",
    "apps/sidecar/package.json",
    "packages/core/src",
    "packages/proxy/src",
    "packages/metrics/src",
    "packages/core/package.json",
    "packages/proxy/package.json",
    "packages/metrics/package.json",
    "pnpm-lock.yaml"
  ].map((p) => Path.join(root, p))

/** The newest modification time under `path` (a file or a folder, recursively), or 0 when absent. */
const newest = (path: string): { mtimeMs: number; file: string } => {
  let st: Fs.Stats
  try {
    st = Fs.statSync(path)
  } catch {
    return { mtimeMs: 0, file: path }
  }
  if (!st.isDirectory()) return { mtimeMs: st.mtimeMs, file: path }
  let best = { mtimeMs: 0, file: path }
  for (const e of Fs.readdirSync(path)) {
    const n = newest(Path.join(path, e))
    if (n.mtimeMs > best.mtimeMs) best = n
  }
  return best
}

/**
 * Splits a `#!` line into the interpreter's flags: `#!/usr/bin/env node`, `#!/usr/bin/env -S node
 * --flag …` and `#!/path/to/node --flag` are understood; anything else throws. Only for the report:
 * the suite always executes the file itself, so a launcher of another shape is measured as it is.
 */
export const parseShebang = (line: string): ReadonlyArray<string> => {
  if (!line.startsWith("#!")) throw new Error(`dist/main.js does not start with a #! line: ${line.slice(0, 80)}`)
  const words = line.slice(2).trim().split(/\s+/)
  let i = 0
  if (Path.basename(words[0] ?? "") === "env") {
    i++
    while (words[i]?.startsWith("-")) {
      if (!/^-S$|^--split-string$/.test(words[i]!))
        throw new Error(`dist/main.js: unsupported env option in the #! line: ${line}`)
      i++
    }
  }
  if (Path.basename(words[i] ?? "") !== "node") throw new Error(`dist/main.js: the #! line does not run node: ${line}`)
  return words.slice(i + 1)
}

/** Builds `apps/sidecar/dist` when missing or stale, makes `main.js` executable, reads its `#!` line. */
export const prepare = (root: string, node: string, log: (s: string) => void): Artefact => {
  const main = Path.join(root, "apps/sidecar/dist/main.js")
  const built = Fs.existsSync(main) ? Fs.statSync(main).mtimeMs : 0
  const input = inputs(root)
    .map(newest)
    .reduce((a, b) => (b.mtimeMs > a.mtimeMs ? b : a))
  const why =
    built === 0 ? "missing" : input.mtimeMs > built ? `older than ${Path.relative(root, input.file)}` : undefined
  if (why) {
    log(`building the production artefact apps/sidecar/dist (${why}): pnpm --filter @sleeve/sidecar bundle`)
    execFileSync("npx", ["-y", "pnpm@12.4.2", "--filter", "@sleeve/sidecar", "bundle"], {
      cwd: root,
      stdio: ["ignore", "inherit", "inherit"]
    })
  }
  // The published package's `bin` is this file; its mode is the packer's business, not the build's.
  Fs.chmodSync(main, Fs.statSync(main).mode | 0o111)
  const shebang = Fs.readFileSync(main, "utf8").split("\n", 1)[0]!
  let nodeFlags: ReadonlyArray<string> | undefined
  try {
    nodeFlags = parseShebang(shebang)
  } catch (e) {
    log(`${e instanceof Error ? e.message : String(e)}: executing it as it is`)
  }
  return { main, shebang, nodeFlags, pathPrefix: Path.dirname(node), built: why }
}
