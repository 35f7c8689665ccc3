/**
 * How quiet the machine was: the load average sampled through the run, and the CPU time that
 * processes outside this suite used meanwhile (every core's busy time from /proc/stat, minus this
 * process and all its children, waited-for and live). The report prints both, and calls the run
 * noisy when other processes took more than a few percent of the machine.
 */
import * as Fs from "node:fs"
import * as Os from "node:os"
import { processCpuSeconds, TICK, tree } from "./procs.ts"

const machineBusySeconds = (): number => {
  const line = Fs.readFileSync("/proc/stat", "utf8").split("\n")[0]!
  const v = line.trim().split(/\s+/).slice(1).map(Number)
  // user nice system idle iowait irq softirq steal …: busy = everything but idle and iowait.
  return (v.reduce((a, b) => a + b, 0) - v[3]! - v[4]!) / TICK
}

/** This process and every child it has waited for (utime, stime, cutime, cstime). */
const selfSeconds = (): number => {
  const s = Fs.readFileSync("/proc/self/stat", "utf8")
  const f = s.slice(s.lastIndexOf(")") + 2).split(" ")
  return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / TICK
}

/** Live descendants (not yet waited for). */
const childrenSeconds = (): number =>
  tree(process.pid)
    .slice(1)
    .reduce((s, p) => s + processCpuSeconds(p), 0)

export interface Noise {
  /** Stops sampling; returns the summary the report prints. */
  readonly finish: () => Summary
}

export interface Summary {
  readonly loadAverage1m: {
    readonly start: number
    readonly median: number
    readonly max: number
    readonly end: number
  }
  readonly wallSeconds: number
  /** CPU-seconds used by processes other than the suite and its children. */
  readonly foreignCpuSeconds: number
  /** The same, as a share of every core over the run (0..1). */
  readonly foreignShare: number
  readonly noisy: boolean
}

export const start = (): Noise => {
  const t0 = performance.now()
  const busy0 = machineBusySeconds()
  const ours0 = selfSeconds() + childrenSeconds()
  const load = [Os.loadavg()[0]!]
  const timer = setInterval(() => load.push(Os.loadavg()[0]!), 15_000)
  timer.unref()
  return {
    finish: () => {
      clearInterval(timer)
      load.push(Os.loadavg()[0]!)
      const wallSeconds = (performance.now() - t0) / 1000
      const foreign = Math.max(0, machineBusySeconds() - busy0 - (selfSeconds() + childrenSeconds() - ours0))
      const sorted = [...load].sort((a, b) => a - b)
      const foreignShare = foreign / (wallSeconds * Os.cpus().length)
      return {
        loadAverage1m: {
          start: load[0]!,
          median: sorted[sorted.length >> 1]!,
          max: sorted[sorted.length - 1]!,
          end: load[load.length - 1]!
        },
        wallSeconds,
        foreignCpuSeconds: foreign,
        foreignShare,
        noisy: foreignShare > 0.05
      }
    }
  }
}
