/**
 * Black-box harness for the `sleeve` executable: spawns it as a real process with the repo's
 * Node 24 (`node_modules/.bin/node src/main.ts …`, or a bundle), and `openssl` as an oracle.
 * Paths are resolved from this file, so tests run the same from any working directory.
 *
 * The child gets the caller's environment minus the variables that change the CLI's behaviour
 * (`SLEEVE_CONFIG`, `SLEEVE_VERBOSE`), with `NO_COLOR=1`; tests add what they need.
 */
import { spawn } from "node:child_process"
import { fileURLToPath } from "node:url"

/** The monorepo root. */
export const repoRoot = fileURLToPath(new URL("../../../../", import.meta.url))
/** The repo's Node 24 (the system `node` may be older). */
export const node = fileURLToPath(new URL("../../../../node_modules/.bin/node", import.meta.url))
/** The folder holding the repo's `node` (prepend it to PATH for `#!/usr/bin/env node` scripts). */
export const nodeBinDir = fileURLToPath(new URL("../../../../node_modules/.bin/", import.meta.url))
/** apps/sidecar. */
export const appDir = fileURLToPath(new URL("../../", import.meta.url))
/** The CLI's entry point, run from source. */
export const mainTs = fileURLToPath(new URL("../../src/main.ts", import.meta.url))

/** What a finished process left behind. */
export interface Ran {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
}

/** Options of {@link run}. */
export interface RunOptions {
  readonly cwd?: string
  /** Added to (and overriding) the cleaned environment; `undefined` removes a variable. */
  readonly env?: Readonly<Record<string, string | undefined>>
  /** Written to stdin, which is then closed; stdin is closed at once when absent. */
  readonly input?: string
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

/** Runs `command args…` to completion and collects its output (never rejects on a non-zero exit). */
export const run = (command: string, args: ReadonlyArray<string>, options: RunOptions = {}): Promise<Ran> =>
  new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: options.cwd ?? appDir, env: childEnv(options.env) })
    let stdout = ""
    let stderr = ""
    child.stdout.setEncoding("utf8").on("data", (c: string) => {
      stdout += c
    })
    child.stderr.setEncoding("utf8").on("data", (c: string) => {
      stderr += c
    })
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 20_000)
    child.on("error", (e) => {
      clearTimeout(timer)
      reject(e)
    })
    child.on("close", (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr })
    })
    child.stdin.end(options.input ?? "")
  })

/**
 * Starts `command args…`, sends `signal` once its stdout satisfies `ready`, and resolves with
 * how it ended (for long-running commands).
 */
export const stopWhenReady = (
  command: string,
  args: ReadonlyArray<string>,
  options: { readonly cwd: string; readonly ready: (stdout: string) => boolean; readonly signal: NodeJS.Signals }
): Promise<Ran & { readonly signalled: boolean }> =>
  new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: options.cwd, env: childEnv() })
    let stdout = ""
    let stderr = ""
    let signalled = false
    child.stdout.setEncoding("utf8").on("data", (c: string) => {
      stdout += c
      if (!signalled && options.ready(stdout)) {
        signalled = true
        child.kill(options.signal)
      }
    })
    child.stderr.setEncoding("utf8").on("data", (c: string) => {
      stderr += c
    })
    const timer = setTimeout(() => child.kill("SIGKILL"), 25_000)
    child.on("error", reject)
    child.on("close", (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr, signalled })
    })
  })

/** Runs `sleeve args…` from source with the repo's Node. */
export const sleeve = (args: ReadonlyArray<string>, options: RunOptions = {}): Promise<Ran> =>
  run(node, [mainTs, ...args], options)

/** Runs `openssl args…`; fails the test when openssl does. */
export const openssl = async (args: ReadonlyArray<string>): Promise<string> => {
  const r = await run("openssl", args)
  if (r.code !== 0) throw new Error(`openssl ${args.join(" ")} failed (${r.code}): ${r.stderr}`)
  return r.stdout
}

/** `openssl x509 -noout -<what> -nameopt RFC2253` without the `subject=` / `issuer=` prefix. */
export const opensslDn = async (certFile: string, what: "subject" | "issuer"): Promise<string> => {
  const out = await openssl(["x509", "-in", certFile, "-noout", `-${what}`, "-nameopt", "RFC2253"])
  if (!out.startsWith(`${what}=`)) throw new Error(`unexpected openssl output: ${out}`)
  return out.slice(what.length + 1).replace(/\n$/, "")
}

/** The lines of an output, without the final newline. */
export const lines = (text: string): ReadonlyArray<string> => (text === "" ? [] : text.replace(/\n$/, "").split("\n"))
