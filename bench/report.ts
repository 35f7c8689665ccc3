/**
 * The report: medians with min/max per figure and contestant, each with its ratio to the best C
 * peer (stunnel, HAProxy, nginx) and to the no-proxy baseline; one markdown table, and the same
 * data (with every sample) as JSON.
 */
import * as Fs from "node:fs"
import type { Contestant } from "./contestants.ts"
import type { Results, Sample } from "./measurements.ts"

export interface Stat {
  readonly median: number
  readonly min: number
  readonly max: number
  readonly n: number
}

const stat = (xs: ReadonlyArray<Sample>): Stat => {
  const v = xs.map((s) => s.value).sort((a, b) => a - b)
  const mid = v.length >> 1
  return {
    median: v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2,
    min: v[0]!,
    max: v[v.length - 1]!,
    n: v.length
  }
}

const fmt = (x: number): string =>
  Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 10 ? x.toFixed(1) : Math.abs(x) >= 1 ? x.toFixed(2) : x.toFixed(3)

export interface FigureSummary {
  readonly id: string
  readonly section: string
  readonly label: string
  readonly unit: string
  readonly better: "higher" | "lower"
  readonly bestC: string | undefined
  readonly values: Record<
    string,
    Stat & {
      ratioToBestC: number | undefined
      ratioToBaseline: number | undefined
      loadCpuBusyMax: number | undefined
      proxyCpuShare: number | undefined
      genCpuShare: number | undefined
      samples: ReadonlyArray<Sample>
    }
  >
}

export const summarize = (results: Results, contestants: ReadonlyArray<Contestant>): Array<FigureSummary> =>
  results.figures.map((f) => {
    const byName = results.samples.get(f.id)!
    const stats = new Map([...byName].map(([name, s]) => [name, stat(s)]))
    const cPeers = contestants.filter((c) => c.kind === "c" && stats.has(c.name))
    const pick = (a: number, b: number) => (f.better === "higher" ? a >= b : a <= b)
    const bestC = cPeers.reduce<string | undefined>(
      (best, c) => (best === undefined || pick(stats.get(c.name)!.median, stats.get(best)!.median) ? c.name : best),
      undefined
    )
    const base = contestants.find((c) => c.kind === "baseline")
    const baseMedian = base && stats.get(base.name)?.median
    const values: FigureSummary["values"] = {}
    for (const c of contestants) {
      const s = stats.get(c.name)
      if (!s) continue
      const of = (k: "loadCpuBusy" | "proxyCpuShare" | "genCpuShare") =>
        byName
          .get(c.name)!
          .map((x) => x[k])
          .filter((x): x is number => x !== undefined)
      const busy = of("loadCpuBusy")
      const median = (xs: Array<number>) => (xs.length ? xs.sort((a, b) => a - b)[xs.length >> 1] : undefined)
      values[c.name] = {
        ...s,
        ratioToBestC: bestC ? s.median / stats.get(bestC)!.median : undefined,
        ratioToBaseline: baseMedian ? s.median / baseMedian : undefined,
        loadCpuBusyMax: busy.length ? Math.max(...busy) : undefined,
        proxyCpuShare: median(of("proxyCpuShare")),
        genCpuShare: median(of("genCpuShare")),
        samples: byName.get(c.name)!
      }
    }
    return { ...f, bestC, values }
  })

export const markdown = (summary: ReadonlyArray<FigureSummary>, contestants: ReadonlyArray<Contestant>): string => {
  const head = `| figure | unit | ${contestants.map((c) => c.name).join(" | ")} |`
  const sep = `| --- | --- | ${contestants.map(() => "---").join(" | ")} |`
  const rows: Array<string> = []
  let section = ""
  for (const f of summary) {
    if (f.section !== section) {
      section = f.section
      rows.push(`| **${section}** | | ${contestants.map(() => "").join(" | ")} |`)
    }
    const cells = contestants.map((c) => {
      const v = f.values[c.name]
      if (!v) return "n/a"
      const range = v.n > 1 ? ` (${fmt(v.min)}–${fmt(v.max)})` : ""
      const ratios = [
        v.ratioToBestC !== undefined && c.kind !== "baseline" ? `${v.ratioToBestC.toFixed(2)}×C` : undefined,
        v.ratioToBaseline !== undefined && c.kind !== "baseline" ? `${v.ratioToBaseline.toFixed(2)}×B` : undefined
      ].filter((x) => x !== undefined)
      return `**${fmt(v.median)}**${range}${ratios.length ? ` ${ratios.join(" ")}` : ""}`
    })
    rows.push(`| ${f.label} ${f.better === "higher" ? "↑" : "↓"} | ${f.unit} | ${cells.join(" | ")} |`)
  }
  return [head, sep, ...rows].join("\n")
}

/**
 * Evidence that the generator is not the bottleneck: for every throughput and handshake figure,
 * the baseline's median against the best proxy's, and how busy the generator core got.
 */
export const headroom = (summary: ReadonlyArray<FigureSummary>, contestants: ReadonlyArray<Contestant>): string => {
  const baseline = contestants.find((c) => c.kind === "baseline")!
  const base = baseline.name
  // Only proxies on the baseline's one core: a multi-core contestant shares the generator's core.
  const proxies = contestants.filter((c) => c.kind !== "baseline" && c.cpus === baseline.cpus).map((c) => c.name)
  const rows = summary
    .filter((f) => f.better === "higher" && f.values[base])
    .map((f) => {
      const best = proxies
        .filter((p) => f.values[p])
        .reduce((a, b) => (f.values[b]!.median > f.values[a]!.median ? b : a))
      const ratio = f.values[base]!.median / f.values[best]!.median
      const v = f.values[best]!
      const pct = (x: number | undefined) => (x === undefined ? "?" : `${(x * 100).toFixed(0)} %`)
      // The generator's ceiling: the baseline's rate scaled to the whole of cpu 1 (its CPU use is linear in the work).
      const genShare = f.values[base]!.genCpuShare
      const ceiling = genShare ? f.values[base]!.median / genShare : undefined
      const cratio = ceiling === undefined ? undefined : ceiling / v.median
      const flag = ratio < 1.2 && (cratio === undefined || cratio < 1.2) ? " ⚠" : ""
      return `| ${f.label} | ${fmt(f.values[base]!.median)} ${f.unit} | ${best}: ${fmt(v.median)} | ${ratio.toFixed(2)}×${flag} | ${ceiling === undefined ? "?" : `${fmt(ceiling)} (${cratio!.toFixed(2)}×)`} | ${pct(v.proxyCpuShare)} | ${pct(v.genCpuShare)} | ${pct(v.loadCpuBusyMax)} |`
    })
  return [
    "| figure | no-proxy baseline | best single-core proxy | baseline ÷ best proxy | generator ceiling: baseline ÷ generator's CPU share (÷ best proxy) | best proxy's CPU (share of cpu 0) | generator's own CPU (share of cpu 1) | cpu 1 busy, all processes (max) |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ...rows
  ].join("\n")
}

/** Issue 10's targets for Sleeve, each with its measured figure and whether it is met. */
/** `cap`: the most proxied connections the open-file limit allows (the suite's 10 000 step is capped there). */
export const targets = (summary: ReadonlyArray<FigureSummary>, cap: number, sleeve = "Sleeve"): string => {
  const byId = new Map(summary.map((f) => [f.id, f]))
  const rows: Array<string> = []
  const row = (target: string, figure: string, measured: string, peer: string, ratio: string, verdict: string) =>
    rows.push(`| ${target} | ${figure} | ${measured} | ${peer} | ${ratio} | ${verdict} |`)
  const absolute = (id: string, target: string, limit: number) => {
    const f = byId.get(id)
    const v = f?.values[sleeve]
    if (!f || !v) return
    const over = v.median - limit
    row(
      target,
      f.label,
      `**${fmt(v.median)}** ${f.unit}`,
      "—",
      "—",
      over <= 0 ? "met" : `not met: ${fmt(over)} ${f.unit} (${((over / limit) * 100).toFixed(0)} %) over`
    )
  }
  const relative = (match: (id: string) => boolean, target: string) => {
    for (const f of summary.filter((x) => match(x.id))) {
      const v = f.values[sleeve]
      if (!v || !f.bestC || v.ratioToBestC === undefined) continue
      const r = v.ratioToBestC
      const met = f.better === "higher" ? r >= 1 : r <= 1
      const by =
        f.better === "higher" ? `${((1 - r) * 100).toFixed(0)} % below` : `${((r - 1) * 100).toFixed(0)} % above`
      row(
        target,
        f.label,
        `**${fmt(v.median)}** ${f.unit}`,
        `${f.bestC}: ${fmt(f.values[f.bestC]!.median)}`,
        `${r.toFixed(2)}×`,
        met ? "met" : `not met: ${by}`
      )
    }
  }
  absolute("rss-idle", "idle RSS ≤ 60 MiB", 60)
  absolute("start-ready", "start to /readyz ≤ 300 ms", 300)
  const conn = summary.filter((f) => f.id.startsWith("conn-")).pop()
  if (conn) absolute(conn.id, "≤ 20 KiB per idle TLS connection", 20)
  const held = summary.filter((f) => f.id.startsWith("held-")).pop()
  const h = held?.values[sleeve]
  if (held && h) {
    const opened = Number(held.id.slice("held-".length))
    row(
      "10 000 concurrent connections held",
      held.label,
      `**${fmt(h.median)}** conns`,
      "—",
      "—",
      opened >= 10_000
        ? h.median >= 10_000
          ? "met"
          : `not met: ${fmt(10_000 - h.median)} short`
        : `not measurable in this run: ${opened.toLocaleString("en-US")} opened (${opened >= cap ? `the open-file limit allows ${cap.toLocaleString("en-US")}` : "a --quick run"}), ${h.median >= opened ? "all held" : `${fmt(opened - h.median)} not held`}`
    )
  }
  relative((id) => id.startsWith("tput-"), "throughput ≥ 1.0× best C peer")
  relative((id) => id.startsWith("cpu-"), "CPU-s/GiB ≤ best C peer")
  relative((id) => ["hs-ec", "hs-rsa", "hs-mtls"].includes(id), "handshakes/s ≥ 1.0× best C peer")
  relative((id) => id.startsWith("rr99-"), "p99 ≤ best C peer")
  // Multi-core: Sleeve with workers against Sleeve with one, where that contestant ran.
  const multi = Object.keys(summary[0]?.values ?? {}).find((n) => n.startsWith(`${sleeve} workers:`))
  if (multi)
    // One connection lives on one worker: only the 8-connection and handshake figures can scale.
    for (const f of summary.filter((x) => /^tput-.*-8$/.test(x.id) || ["hs-ec", "hs-rsa", "hs-mtls"].includes(x.id))) {
      const one = f.values[sleeve]
      const n = f.values[multi]
      if (!one || !n) continue
      const r = n.median / one.median
      row(
        "workers scale near-linearly to 2 cores (≥ 1.8×)",
        f.label,
        `**${fmt(n.median)}** ${f.unit}`,
        `${sleeve} (1 worker): ${fmt(one.median)}`,
        `${r.toFixed(2)}×`,
        r >= 1.8
          ? "met"
          : `not met: ${((1 - r / 2) * 100).toFixed(0)} % below linear (the generator shares the second core)`
      )
    }
  return [
    "| target | figure | Sleeve | compared with | ratio | met? |",
    "| --- | --- | --- | --- | --- | --- |",
    ...rows
  ].join("\n")
}

/** The markers around the generated block of docs/performance.md (`bench/suite.ts --write-doc`). */
export const BEGIN =
  "<!-- bench:table:begin — written by `npx -y pnpm@12.4.2 bench --write-doc`; do not edit by hand -->"
export const END = "<!-- bench:table:end -->"

/** Replaces the text from BEGIN to END (both included) in `file` by `block`; refuses a file without them. */
export const replaceBlock = (file: string, block: string): void => {
  const text = Fs.readFileSync(file, "utf8")
  const begin = text.indexOf("<!-- bench:table:begin")
  const end = text.indexOf(END)
  if (begin < 0 || end < begin) throw new Error(`${file}: no ${BEGIN.slice(0, 22)}… ${END} block to replace`)
  Fs.writeFileSync(file, `${text.slice(0, begin)}${block}${text.slice(end + END.length)}`)
}
