/**
 * The measurements. Each one loops repetitions × contestants (interleaved: one sample of every
 * contestant before the next repetition) and records samples into a `Results`. Proxy CPU comes
 * from /proc/PID/stat summed over the contestant's process tree; the generator core's busy share
 * (from /proc/stat) is kept with every sample as evidence that the generator had headroom.
 */
import type { Contestant, Env, Ports, Running } from "./contestants.ts"
import * as Gen from "./generators.ts"
import { coreTimes, cpuSeconds, LOAD_CPU, rssKiB, sleep, stop, waitHttp200, waitListening } from "./procs.ts"

export type Better = "higher" | "lower"

export interface Figure {
  readonly id: string
  readonly section: string
  readonly label: string
  readonly unit: string
  readonly better: Better
}

export interface Sample {
  readonly value: number
  /** Busy share of the generator core during the sample (every process on it), 0..1. */
  readonly loadCpuBusy?: number
  /** Share of one core the proxy (its process tree) used during the sample. */
  readonly proxyCpuShare?: number
  /** Share of one core the load generator client itself used during the sample. */
  readonly genCpuShare?: number
  readonly note?: string
}

export class Results {
  readonly figures: Array<Figure> = []
  readonly samples = new Map<string, Map<string, Array<Sample>>>()
  readonly notes: Array<string> = []
  add(figure: Figure, contestant: string, sample: Sample) {
    if (!this.samples.has(figure.id)) {
      this.figures.push(figure)
      this.samples.set(figure.id, new Map())
    }
    const m = this.samples.get(figure.id)!
    if (!m.has(contestant)) m.set(contestant, [])
    m.get(contestant)!.push(sample)
  }
}

export interface Params {
  readonly reps: number
  readonly startReps: number
  /** Repetitions of the idle-connection memory figures (the slowest part: N handshakes each). */
  readonly memReps: number
  readonly bytes: number
  readonly seconds: number
  readonly hsConns: number
  readonly holdSteps: ReadonlyArray<number>
  readonly idleSettleMs: number
}

export interface Live {
  readonly contestant: Contestant
  readonly running: Running
}

const treeCpu = (r: Running) => r.procs.reduce((s, p) => s + cpuSeconds(p.pid), 0)
const treeRss = (r: Running) => r.procs.reduce((s, p) => s + rssKiB(p.pid), 0)

/** Runs `f` and returns its result with the proxy's CPU seconds and the generator core's busy share. */
const metered = async <A extends Gen.Timed>(r: Running, f: () => Promise<A>) => {
  const cpu0 = treeCpu(r)
  const core0 = coreTimes(LOAD_CPU)
  const result = await f()
  const core1 = coreTimes(LOAD_CPU)
  const cpu = treeCpu(r) - cpu0
  return {
    result,
    cpu,
    shares: {
      loadCpuBusy: (core1.busy - core0.busy) / Math.max(1, core1.total - core0.total),
      proxyCpuShare: cpu / result.seconds,
      genCpuShare: result.cpu_s / result.seconds
    }
  }
}

const fig = (id: string, section: string, label: string, unit: string, better: Better): Figure => ({
  id,
  section,
  label,
  unit,
  better
})

// ---------------------------------------------------------------------------------------------

export const throughput = async (env: Env, live: ReadonlyArray<Live>, p: Params, out: Results) => {
  for (const mode of ["terminate", "originate"] as const)
    for (const dir of ["up", "down"] as const)
      for (const conns of [1, 8]) {
        const what = `${mode}, ${dir === "up" ? "client → server" : "server → client"}, ${conns} conn${conns > 1 ? "s" : ""}`
        const key = `${mode}-${dir}-${conns}`
        const mbps = fig(`tput-${key}`, "Throughput", what, "MB/s", "higher")
        const cpu = fig(`cpu-${key}`, "Throughput", `${what}: proxy CPU`, "CPU-s/GiB", "lower")
        for (let rep = 0; rep < p.reps; rep++)
          for (const { contestant, running } of live) {
            const port = mode === "terminate" ? running.ports.termEc : running.ports.orig
            const m = await metered(running, () =>
              Gen.throughput(env, port, dir, p.bytes, conns, { tls: mode === "terminate" })
            )
            out.add(mbps, contestant.name, { value: m.result.bytes / 1e6 / m.result.seconds, ...m.shares })
            out.add(cpu, contestant.name, { value: m.cpu / (m.result.bytes / 2 ** 30), ...m.shares })
          }
      }
}

export const handshakes = async (env: Env, live: ReadonlyArray<Live>, p: Params, out: Results) => {
  const kinds: ReadonlyArray<[string, string, (ports: Ports) => number | undefined, Gen.ClientOptions]> = [
    ["hs-ec", "ECDSA P-256", (ports) => ports.termEc, { tls: true }],
    ["hs-rsa", "RSA-2048", (ports) => ports.termRsa, { tls: true }],
    ["hs-mtls", "mTLS (ECDSA) + client authorization", (ports) => ports.termMtls, { tls: true, clientCert: true }],
    ["hs-smtp", "STARTTLS SMTP (ECDSA)", (ports) => ports.smtp, { tls: true, smtp: true }]
  ]
  for (const [id, label, portOf, o] of kinds) {
    const f = fig(
      id,
      id === "hs-smtp" ? "STARTTLS" : "Handshakes",
      `full TLS 1.3 handshakes, ${label}`,
      "hs/s",
      "higher"
    )
    const cpu = fig(`${id}-cpu`, f.section, `${f.label}: proxy CPU`, "CPU-ms/hs", "lower")
    for (let rep = 0; rep < p.reps; rep++)
      for (const { contestant, running } of live) {
        const port = portOf(running.ports)
        if (port === undefined) continue
        const m = await metered(running, () => Gen.handshakes(env, port, p.seconds, p.hsConns, o))
        out.add(f, contestant.name, {
          value: m.result.handshakes / m.result.seconds,
          ...m.shares,
          ...(m.result.errors > 0 ? { note: `${m.result.errors} failed` } : {})
        })
        // Proxy CPU per handshake: what the rate would be on a whole core, whoever else took time.
        out.add(cpu, contestant.name, { value: (m.cpu * 1000) / Math.max(1, m.result.handshakes), ...m.shares })
      }
  }
}

export const latency = async (env: Env, live: ReadonlyArray<Live>, p: Params, out: Results) => {
  for (const conns of [1, 32]) {
    const p50 = fig(`rr50-${conns}`, "Latency", `1 KiB echo p50, ${conns} conn${conns > 1 ? "s" : ""}`, "µs", "lower")
    const p99 = fig(`rr99-${conns}`, "Latency", `1 KiB echo p99, ${conns} conn${conns > 1 ? "s" : ""}`, "µs", "lower")
    for (let rep = 0; rep < p.reps; rep++)
      for (const { contestant, running } of live) {
        const m = await metered(running, () =>
          Gen.requestResponse(env, running.ports.termEc, p.seconds, conns, 1024, { tls: true })
        )
        out.add(p50, contestant.name, { value: m.result.p50_us, ...m.shares })
        out.add(p99, contestant.name, { value: m.result.p99_us, ...m.shares })
      }
  }
}

/** Fresh process per sample: time to listening (every listener), to /readyz (Sleeve), idle RSS. */
export const startAndIdle = async (env: Env, contestants: ReadonlyArray<Contestant>, p: Params, out: Results) => {
  const listen = fig("start-listen", "Start and idle memory", "start to listening (all listeners)", "ms", "lower")
  const ready = fig("start-ready", "Start and idle memory", "start to /readyz 200", "ms", "lower")
  const idle = fig("rss-idle", "Start and idle memory", "RSS at idle, no connection", "MiB", "lower")
  for (let rep = 0; rep < p.startReps; rep++)
    for (const c of contestants) {
      if (c.kind === "baseline") continue
      const t0 = performance.now()
      const r = await c.start(env, `start${rep}`)
      try {
        const ports = Object.values(r.ports).filter((x): x is number => x !== undefined)
        const ms = await waitListening(r.procs[0]!, ports, t0)
        out.add(listen, c.name, { value: ms })
        if (r.readyUrl) out.add(ready, c.name, { value: await waitHttp200(r.procs[0]!, r.readyUrl, t0) })
        await sleep(p.idleSettleMs)
        out.add(idle, c.name, { value: treeRss(r) / 1024 })
      } finally {
        for (const proc of r.procs) await stop(proc)
      }
    }
}

/** Fresh process per sample: RSS before and with N idle established TLS connections (ECDSA, terminate). */
export const memory = async (
  env: Env,
  contestants: ReadonlyArray<Contestant>,
  p: Params,
  out: Results,
  log: (s: string) => void = () => {}
) => {
  for (let rep = 0; rep < p.memReps; rep++)
    for (const c of contestants) {
      if (c.kind === "baseline") continue
      const t0 = performance.now()
      const secs = () => `${((performance.now() - t0) / 1000).toFixed(0)} s`
      const r = await c.start(env, `mem${rep}`)
      try {
        const ports = Object.values(r.ports).filter((x): x is number => x !== undefined)
        await waitListening(r.procs[0]!, ports, performance.now())
        if (r.readyUrl) await waitHttp200(r.procs[0]!, r.readyUrl, performance.now())
        await sleep(p.idleSettleMs)
        const rss0 = treeRss(r)
        await Gen.hold(env, r.ports.termEc, p.holdSteps, { tls: true }, async (held, target) => {
          log(`  ${c.name}: ${held} of ${target} idle connections held after ${secs()}`)
          if (held < target) out.notes.push(`${c.name}: held ${held} of ${target} idle connections`)
          await sleep(p.idleSettleMs)
          const rss = treeRss(r)
          const n = target.toLocaleString("en-US")
          const section = "Memory per connection"
          out.add(
            fig(`held-${target}`, section, `idle TLS connections held, of ${n} opened`, "conns", "higher"),
            c.name,
            {
              value: held
            }
          )
          // Per connection over what the proxy really held (the note above says when that is fewer).
          out.add(fig(`conn-${target}`, section, `RSS per idle TLS connection, ${n} opened`, "KiB", "lower"), c.name, {
            value: (rss - rss0) / Math.max(1, held)
          })
          out.add(fig(`rss-${target}`, section, `RSS with ${n} idle TLS connections opened`, "MiB", "lower"), c.name, {
            value: rss / 1024
          })
        })
      } finally {
        for (const proc of r.procs) await stop(proc)
        log(`  ${c.name}: done after ${secs()} (closing and stopping included)`)
      }
    }
}
