/**
 * Processes and /proc: spawning pinned children, their CPU time and RSS (summed over the process
 * tree, for peers that run a master and workers), how busy a core was, and waiting for ports.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Net from "node:net"

/** The core the proxy under test runs on; everything else (generator, backends, this script) uses the other. */
export const PROXY_CPU = 0
export const LOAD_CPU = 1
/**
 * Open-file limit given to every child: the hard limit this script may use (soft is raised to
 * it). 10 000 held connections need a bit over 20 000 descriptors in a proxy.
 */
export const NOFILE = Number(execFileSync("sh", ["-c", "ulimit -Hn"]).toString().trim().replace("unlimited", "1048576"))

export interface Proc {
  readonly name: string
  readonly child: ChildProcess
  readonly pid: number
  readonly exited: Promise<number | null>
  stderr: string
}

const live = new Set<Proc>()

/** Starts `argv` pinned to `cpu` with a raised open-file limit; stderr is kept for error messages. */
export const start = (
  name: string,
  cpu: number | string,
  argv: ReadonlyArray<string>,
  options: {
    stdin?: "pipe" | "ignore"
    stdout?: "pipe" | "ignore"
    cwd?: string
    /** Prepended to PATH (for a `#!/usr/bin/env node` script that must find the repository's Node). */
    pathPrefix?: string
  } = {}
): Proc => {
  const child = spawn("taskset", ["-c", String(cpu), "prlimit", `--nofile=${NOFILE}:${NOFILE}`, "--", ...argv], {
    stdio: [options.stdin ?? "ignore", options.stdout ?? "ignore", "pipe"],
    cwd: options.cwd,
    env: options.pathPrefix ? { ...process.env, PATH: `${options.pathPrefix}:${process.env.PATH ?? ""}` } : process.env
  })
  const proc: Proc = {
    name,
    child,
    pid: child.pid!,
    exited: new Promise((resolve) => child.once("exit", (code) => resolve(code))),
    stderr: ""
  }
  child.stderr!.on("data", (d: Buffer) => {
    proc.stderr = (proc.stderr + d.toString()).slice(-4000)
  })
  live.add(proc)
  void proc.exited.then(() => live.delete(proc))
  return proc
}

/** SIGTERM, then SIGKILL after `graceMs`. */
export const stop = async (proc: Proc, graceMs = 3000): Promise<void> => {
  if (proc.child.exitCode !== null || proc.child.signalCode !== null) return
  proc.child.kill("SIGTERM")
  const t = setTimeout(() => proc.child.kill("SIGKILL"), graceMs)
  await proc.exited
  clearTimeout(t)
}

export const stopAll = async (): Promise<void> => {
  await Promise.all([...live].map((p) => stop(p)))
}

/** Runs a command to completion on `cpu`; resolves with stdout, rejects with stderr on failure. */
export const run = async (name: string, cpu: number, argv: ReadonlyArray<string>): Promise<string> => {
  const p = start(name, cpu, argv, { stdout: "pipe" })
  let out = ""
  p.child.stdout!.on("data", (d: Buffer) => {
    out += d.toString()
  })
  const code = await p.exited
  if (code !== 0) throw new Error(`${name} exited with ${code}: ${p.stderr.trim() || out.trim()}`)
  return out
}

const stat = (pid: number): Array<string> | undefined => {
  try {
    const s = Fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    return s.slice(s.lastIndexOf(")") + 2).split(" ")
  } catch {
    return undefined
  }
}

/** `pid` and all its descendants (nginx's workers, for instance). */
export const tree = (pid: number): Array<number> => {
  const parent = new Map<number, number>()
  for (const e of Fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(e)) continue
    const f = stat(Number(e))
    if (f) parent.set(Number(e), Number(f[1]))
  }
  const out = [pid]
  for (let i = 0; i < out.length; i++) for (const [c, p] of parent) if (p === out[i]) out.push(c)
  return out
}

export const TICK = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100

/** utime + stime of one process, in seconds (0 when it is gone). */
export const processCpuSeconds = (pid: number): number => {
  const f = stat(pid)
  return f ? (Number(f[11]) + Number(f[12])) / TICK : 0
}

/** utime + stime of the whole tree, in seconds. */
export const cpuSeconds = (pid: number): number => tree(pid).reduce((sum, p) => sum + processCpuSeconds(p), 0)

/** VmRSS of the whole tree, in KiB. */
export const rssKiB = (pid: number): number =>
  tree(pid).reduce((sum, p) => {
    try {
      return sum + Number(/VmRSS:\s+(\d+)/.exec(Fs.readFileSync(`/proc/${p}/status`, "utf8"))?.[1] ?? 0)
    } catch {
      return sum
    }
  }, 0)

/** The CPUs a process may run on, as the kernel reports them. */
export const cpusAllowed = (pid: number): string =>
  /Cpus_allowed_list:\s+(\S+)/.exec(Fs.readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? "?"

/** Cumulative busy and total jiffies of one core, from /proc/stat. */
export const coreTimes = (cpu: number): { busy: number; total: number } => {
  const line = Fs.readFileSync("/proc/stat", "utf8")
    .split("\n")
    .find((l) => l.startsWith(`cpu${cpu} `))!
  const v = line.trim().split(/\s+/).slice(1).map(Number)
  const total = v.reduce((a, b) => a + b, 0)
  return { busy: total - v[3]! - v[4]!, total }
}

const handedOut = new Set<number>()
const anyPort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const s = Net.createServer().listen(0, "127.0.0.1", () => {
      const p = (s.address() as Net.AddressInfo).port
      s.close(() => resolve(p))
    })
    s.on("error", reject)
  })

/** A port free now and never handed out before in this run (contestants run side by side). */
export const freePort = async (): Promise<number> => {
  for (;;) {
    const p = await anyPort()
    if (!handedOut.has(p)) {
      handedOut.add(p)
      return p
    }
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const accepts = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const s = Net.connect(port, "127.0.0.1", () => {
      s.destroy()
      resolve(true)
    })
    s.on("error", () => resolve(false))
  })

const httpOk = (url: string): Promise<boolean> =>
  new Promise((resolve) => {
    const req = Http.get(url, (res) => {
      res.resume()
      resolve(res.statusCode === 200)
    })
    req.on("error", () => resolve(false))
    req.setTimeout(1000, () => req.destroy())
  })

/** Polls every 2 ms until every port accepts (or the process dies); returns ms since `t0`. */
export const waitListening = async (proc: Proc, ports: ReadonlyArray<number>, t0: number, timeoutMs = 20_000) => {
  const pending = new Set(ports)
  while (pending.size > 0) {
    if (proc.child.exitCode !== null) throw new Error(`${proc.name} exited: ${proc.stderr.trim()}`)
    if (performance.now() - t0 > timeoutMs) throw new Error(`${proc.name}: ports ${[...pending]} never opened`)
    for (const p of [...pending]) if (await accepts(p)) pending.delete(p)
    if (pending.size > 0) await sleep(2)
  }
  return performance.now() - t0
}

/** Polls `url` every 2 ms until it answers 200; returns ms since `t0`. */
export const waitHttp200 = async (proc: Proc, url: string, t0: number, timeoutMs = 20_000) => {
  while (!(await httpOk(url))) {
    if (proc.child.exitCode !== null) throw new Error(`${proc.name} exited: ${proc.stderr.trim()}`)
    if (performance.now() - t0 > timeoutMs) throw new Error(`${proc.name}: ${url} never answered 200`)
    await sleep(2)
  }
  return performance.now() - t0
}

export { sleep }
