/**
 * Child processes for tests that use real programs as peers and oracles (`openssl`, `curl`,
 * `psql`, Prometheus, the `sleeve` binary itself):
 *
 * - `run`: a command that finishes; its output is collected and it is killed after an optional
 *   deadline. A non-zero exit is a result, not an error: the test asserts on the code.
 * - `startDaemon`: a command that runs until it is stopped (a server, or a client the test talks
 *   to through stdin), with its output collected, a way to wait for a line of it, and a `stop`
 *   that sends a signal and escalates to SIGKILL, so no test leaves a process behind.
 *
 * What it deliberately does not do: pick the environment. A child gets exactly `env` (default:
 * this process's environment); suites that must clean it (the sidecar's `childEnv`) pass their
 * own. Nothing here asserts anything about the program it runs.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { waitUntil } from "./Wait.ts"

/** How a process ended: its exit code, or the signal that ended it. */
export interface Exited {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
}

/** What a finished process left behind. */
export interface Ran extends Exited {
  readonly stdout: string
  readonly stderr: string
}

/** Options shared by {@link run} and {@link startDaemon}. */
export interface SpawnOptions {
  readonly cwd?: string
  /** The child's whole environment (default: this process's). */
  readonly env?: NodeJS.ProcessEnv
  /** Run as this user and group (the caller must be allowed to). */
  readonly uid?: number
  readonly gid?: number
  /** How stdout and stderr are decoded (default `utf8`; `latin1` keeps every byte as one char). */
  readonly encoding?: BufferEncoding
}

/** Options of {@link run}. */
export interface RunOptions extends SpawnOptions {
  /** Written to stdin, which is then closed; stdin is closed at once when absent. */
  readonly input?: string | Buffer
  /** SIGKILL after this long (default: no deadline). */
  readonly timeoutMs?: number
}

const spawnChild = (
  command: string,
  args: ReadonlyArray<string>,
  options: SpawnOptions,
  stdin: "pipe" | "ignore"
): { readonly child: ChildProcess; readonly stdout: () => string; readonly stderr: () => string } => {
  const child = spawn(command, [...args], {
    stdio: [stdin, "pipe", "pipe"],
    ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
    ...(options.env === undefined ? {} : { env: options.env }),
    ...(options.uid === undefined ? {} : { uid: options.uid }),
    ...(options.gid === undefined ? {} : { gid: options.gid })
  })
  let stdout = ""
  let stderr = ""
  const encoding = options.encoding ?? "utf8"
  child.stdout?.setEncoding(encoding).on("data", (c: string) => {
    stdout += c
  })
  child.stderr?.setEncoding(encoding).on("data", (c: string) => {
    stderr += c
  })
  // A program may exit without reading its input; that is its business, not a test failure.
  child.stdin?.on("error", () => {})
  return { child, stdout: () => stdout, stderr: () => stderr }
}

/**
 * Runs `command args…` to completion and resolves with its exit and output (never rejects on a
 * non-zero exit); rejects when it cannot be spawned (e.g. the program is not installed).
 */
export const run = (command: string, args: ReadonlyArray<string>, options: RunOptions = {}): Promise<Ran> =>
  new Promise((resolve, reject) => {
    const { child, stdout, stderr } = spawnChild(command, args, options, "pipe")
    const timer =
      options.timeoutMs === undefined ? undefined : setTimeout(() => child.kill("SIGKILL"), options.timeoutMs)
    child.on("error", (e) => {
      clearTimeout(timer)
      reject(e)
    })
    child.on("close", (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout: stdout(), stderr: stderr() })
    })
    child.stdin?.end(options.input ?? "")
  })

/** Options of {@link startDaemon}. */
export interface DaemonOptions extends SpawnOptions {
  /** `pipe` to write to the process through `child.stdin` (default `ignore`: it reads /dev/null). */
  readonly stdin?: "pipe" | "ignore"
  /** SIGKILL this long after the start, whatever it is doing (default: no deadline). */
  readonly killAfterMs?: number
}

/** Options of {@link Daemon.waitForOutput}. */
export interface OutputWaitOptions {
  /** The stream to watch (default stdout). */
  readonly stream?: "stdout" | "stderr"
  /** Default 10 s. */
  readonly timeoutMs?: number
}

/** A process that runs until it is stopped. */
export interface Daemon {
  readonly child: ChildProcess
  /** Everything written to stdout so far. */
  readonly stdout: () => string
  /** Everything written to stderr so far. */
  readonly stderr: () => string
  /** Both streams so far, labelled, for error messages. */
  readonly output: () => string
  /** Resolves when the process has exited and its output is complete (never rejects). */
  readonly exited: Promise<Exited>
  /** Whether the process has exited. */
  readonly hasExited: () => boolean
  /**
   * Resolves with the stream's text once it contains `match` (or `match` accepts it); rejects
   * when the process exits first, or after `timeoutMs`, with the output so far.
   */
  readonly waitForOutput: (
    match: string | RegExp | ((text: string) => boolean),
    options?: OutputWaitOptions
  ) => Promise<string>
  /**
   * Sends `signal` (default SIGTERM) and waits up to `graceMs` (default 10 s) for the exit;
   * then SIGKILL. Resolves with how it ended; safe to call more than once, or after the exit.
   */
  readonly stop: (signal?: NodeJS.Signals, graceMs?: number) => Promise<Exited>
}

/**
 * Spawns `command args…` and returns at once. A spawn failure (program missing) ends it as
 * `{ code: null, signal: null }` with `spawn failed: …` on its stderr.
 */
export const startDaemon = (command: string, args: ReadonlyArray<string>, options: DaemonOptions = {}): Daemon => {
  const { child, stdout, stderr } = spawnChild(command, args, options, options.stdin ?? "ignore")
  let spawnError = ""
  const allStderr = () => stderr() + spawnError
  const output = () => `--- stdout\n${stdout()}--- stderr\n${allStderr()}`
  let ended: Exited | undefined
  const killer =
    options.killAfterMs === undefined ? undefined : setTimeout(() => child.kill("SIGKILL"), options.killAfterMs)
  const exited = new Promise<Exited>((resolve) => {
    child.on("error", (e) => {
      spawnError += `spawn failed: ${e.message}\n`
      // A process that never started emits no `close`.
      if (child.pid === undefined) {
        clearTimeout(killer)
        ended = { code: null, signal: null }
        resolve(ended)
      }
    })
    child.on("close", (code, signal) => {
      clearTimeout(killer)
      ended ??= { code, signal }
      resolve(ended)
    })
  })
  const stop = async (signal: NodeJS.Signals = "SIGTERM", graceMs = 10_000): Promise<Exited> => {
    if (ended !== undefined) return ended
    child.kill(signal)
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs)
    const result = await exited
    clearTimeout(timer)
    return result
  }
  const waitForOutput: Daemon["waitForOutput"] = (match, waitOptions = {}) => {
    const stream = waitOptions.stream ?? "stdout"
    const text = stream === "stdout" ? stdout : allStderr
    const matches =
      typeof match === "string"
        ? (t: string) => t.includes(match)
        : match instanceof RegExp
          ? (t: string) => match.test(t)
          : match
    return waitUntil(
      `${command} ${args[0] ?? ""} to print ${typeof match === "function" ? "what the test waits for" : String(match)} on ${stream}`,
      () => {
        const now = text()
        if (matches(now)) return now
        if (ended !== undefined) throw new Error(`${command} exited (${JSON.stringify(ended)}) first\n${output()}`)
        return undefined
      },
      { timeoutMs: waitOptions.timeoutMs ?? 10_000, everyMs: 10, detail: output }
    )
  }
  return {
    child,
    stdout,
    stderr: allStderr,
    output,
    exited,
    hasExited: () => ended !== undefined,
    waitForOutput,
    stop
  }
}
