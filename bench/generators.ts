/**
 * The load generator (bench/loadgen.c, C + the system OpenSSL): compiling it, starting the
 * backends it also provides, and running its client modes. Everything here runs on LOAD_CPU.
 */
import { execFileSync } from "node:child_process"
import * as Path from "node:path"
import type { Env, Pki } from "./contestants.ts"
import { freePort, LOAD_CPU, type Proc, run, start } from "./procs.ts"

export const compile = (outDir: string): string => {
  const out = Path.join(outDir, "loadgen")
  execFileSync(
    "gcc",
    ["-O2", "-pthread", "-o", out, Path.join(import.meta.dirname, "loadgen.c"), "-lssl", "-lcrypto"],
    {
      stdio: "inherit"
    }
  )
  return out
}

/** The shared backends: plaintext (sink/source/echo), TLS (for originate) and plaintext SMTP. */
export const startBackends = async (
  loadgen: string,
  pki: Pki
): Promise<{ ports: Env["backend"]; procs: Array<Proc> }> => {
  const ports = { plain: await freePort(), tls: await freePort(), smtp: await freePort() }
  const procs = [
    start("backend-plain", LOAD_CPU, [loadgen, "serve", String(ports.plain)]),
    start("backend-tls", LOAD_CPU, [loadgen, "serve", String(ports.tls), "--cert", pki.ecCert, "--key", pki.ecKey]),
    start("backend-smtp", LOAD_CPU, [loadgen, "serve", String(ports.smtp), "--smtp"])
  ]
  return { ports, procs }
}

/** How the generator talks to a port: plaintext, or TLS 1.3 verified against the test CA. */
export interface ClientOptions {
  readonly tls: boolean
  /** true: the authorized client certificate; "stranger": one from the same CA with another DN. */
  readonly clientCert?: boolean | "stranger"
  readonly smtp?: boolean
}

const clientArgs = (pki: Pki, o: ClientOptions): Array<string> => [
  ...(o.tls ? ["--ca", pki.ca] : []),
  ...(o.clientCert === true ? ["--cert", pki.clientCert, "--key", pki.clientKey] : []),
  ...(o.clientCert === "stranger" ? ["--cert", pki.strangerCert, "--key", pki.strangerKey] : []),
  ...(o.smtp ? ["--smtp"] : [])
]

const json = async <A>(name: string, argv: ReadonlyArray<string>): Promise<A> => {
  const out = await run(name, LOAD_CPU, argv)
  return JSON.parse(out.trim().split("\n").pop()!) as A
}

/** Every client result carries the wall time and the generator's own CPU seconds. */
export interface Timed {
  readonly seconds: number
  readonly cpu_s: number
}

export interface Tput extends Timed {
  readonly bytes: number
  readonly cipher: string
}
export const throughput = (
  env: Env,
  port: number,
  dir: "up" | "down",
  bytes: number,
  conns: number,
  o: ClientOptions
) =>
  json<Tput>("loadgen tput", [
    env.loadgen,
    "tput",
    String(port),
    dir,
    String(bytes),
    String(conns),
    ...clientArgs(env.pki, o)
  ])

export interface Hs extends Timed {
  readonly handshakes: number
  readonly errors: number
  readonly cipher: string
}
export const handshakes = (env: Env, port: number, seconds: number, conns: number, o: ClientOptions) =>
  json<Hs>("loadgen hs", [env.loadgen, "hs", String(port), String(seconds), String(conns), ...clientArgs(env.pki, o)])

/** Full handshakes that completed with the "HS" → "OK" exchange, without failing when there are none. */
export const completedHandshakes = async (env: Env, port: number, o: ClientOptions): Promise<number> => {
  const p = start("loadgen hs", LOAD_CPU, [env.loadgen, "hs", String(port), "0.3", "1", ...clientArgs(env.pki, o)], {
    stdout: "pipe"
  })
  let out = ""
  p.child.stdout!.on("data", (d: Buffer) => {
    out += d.toString()
  })
  await p.exited
  return (JSON.parse(out.trim()) as Hs).handshakes
}

export interface Rr extends Timed {
  readonly requests: number
  readonly p50_us: number
  readonly p99_us: number
  readonly cipher: string
}
export const requestResponse = (
  env: Env,
  port: number,
  seconds: number,
  conns: number,
  size: number,
  o: ClientOptions
) =>
  json<Rr>("loadgen rr", [
    env.loadgen,
    "rr",
    String(port),
    String(seconds),
    String(conns),
    String(size),
    ...clientArgs(env.pki, o)
  ])

/**
 * Opens idle connections in steps; calls `atStep(held)` after each step (the proxy's RSS is read
 * there), then lets the generator go on. Resolves when all steps are done and the connections closed.
 */
export const hold = async (
  env: Env,
  port: number,
  steps: ReadonlyArray<number>,
  o: ClientOptions,
  atStep: (held: number, target: number) => Promise<void>
): Promise<void> => {
  const p = start(
    "loadgen hold",
    LOAD_CPU,
    [env.loadgen, "hold", String(port), steps.join(","), ...clientArgs(env.pki, o)],
    {
      stdin: "pipe",
      stdout: "pipe"
    }
  )
  let buffered = ""
  let step = 0
  const done = new Promise<void>((resolve, reject) => {
    p.child.stdout!.on("data", (d: Buffer) => {
      buffered += d.toString()
      for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
        const line = buffered.slice(0, nl)
        buffered = buffered.slice(nl + 1)
        const { held } = JSON.parse(line) as { held: number }
        const target = steps[step++]!
        atStep(held, target).then(
          () => (step === steps.length ? p.child.stdin!.end() : p.child.stdin!.write("\n")),
          reject
        )
      }
    })
    void p.exited.then((code) => (code === 0 ? resolve() : reject(new Error(`loadgen hold: ${code} ${p.stderr}`))))
  })
  await done
}
