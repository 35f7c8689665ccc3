/**
 * Start-up time and idle footprint of `sleeve run`, for comparing builds and Node flags:
 *
 *   node_modules/.bin/node apps/sidecar/scripts/startup.ts [--runs N] [--heap] [--idle-ms MS] VARIANT…
 *
 * A VARIANT is `label=ARGV`: the Node arguments, space-separated, of one way to start Sleeve, e.g.
 * `src=apps/sidecar/src/main.ts`, `dist=apps/sidecar/dist/main.js`,
 * `semi1=--max-semi-space-size=1 apps/sidecar/dist/main.js`, and `env:NAME=VALUE` words set an
 * environment variable for that variant only (`cache=env:NODE_COMPILE_CACHE=/tmp/ncc
 * apps/sidecar/dist/main.js`); the label `bare` (no ARGV) is a Node
 * process that does nothing, the floor. Each is started with `run -c sleeve.yaml` on a
 * configuration written by `sleeve certs` (two listeners, terminate and originate, on port 0, and
 * the admin endpoint on a free port), and no connection is made. Measured per run:
 * - `listen`: spawn to the `"event":"ready"` log line (every listener and the admin endpoint bound);
 * - `readyz`: spawn to the first `200` from `GET /readyz` (polled every 2 ms);
 * - `RSS`/`HWM`: VmRSS and VmHWM from /proc/PID/status after `--idle-ms` (default 2000) idle, and
 *   VmRSS split into anonymous memory (heaps) and file pages (mostly the node binary's own code,
 *   shared with every other Node process on the host);
 * - with `--heap`: V8 heap used/total and external memory at the same moment, read by a
 *   preloaded probe (`--import`) on SIGUSR2 — a separate run, so the probe never inflates `rss`.
 * Variants are interleaved (run 1 of each, run 2 of each, …); medians with min–max are printed.
 * The machine's load average is printed too: figures from a loaded machine are not comparable.
 */
import { freePort } from "@sleeve/testing/Net"
import { spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

const appDir = fileURLToPath(new URL("../", import.meta.url))
const node = process.execPath

interface Variant {
  readonly label: string
  readonly argv: ReadonlyArray<string>
  readonly env: Readonly<Record<string, string>>
}

interface Sample {
  readonly listenMs: number
  readonly readyzMs: number
  readonly rssKiB: number
  readonly hwmKiB: number
  readonly anonKiB: number
  readonly fileKiB: number
  readonly heap?: { readonly used: number; readonly total: number; readonly external: number }
}

const args = process.argv.slice(2)
let runs = 5
let heap = false
let idleMs = 2000
const variants: Array<Variant> = []
for (let i = 0; i < args.length; i++) {
  const a = args[i] as string
  if (a === "--runs") runs = Number(args[++i])
  else if (a === "--heap") heap = true
  else if (a === "--idle-ms") idleMs = Number(args[++i])
  else {
    const eq = a.indexOf("=")
    const label = eq === -1 ? a : a.slice(0, eq)
    const words = eq === -1 ? [] : a.slice(eq + 1).split(" ")
    const env: Record<string, string> = {}
    const argv: Array<string> = []
    for (const w of words) {
      if (w.startsWith("env:")) env[w.slice(4, w.indexOf("="))] = w.slice(w.indexOf("=") + 1)
      else if (w !== "") argv.push(w.endsWith(".js") || w.endsWith(".ts") ? Path.resolve(w) : w)
    }
    variants.push({ label, argv, env })
  }
}
if (variants.length === 0) {
  console.error(
    "usage: startup.ts [--runs N] [--heap] [--idle-ms MS] label=NODE_ARGV… (e.g. dist=apps/sidecar/dist/main.js)"
  )
  process.exit(2)
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const readyz = (port: number): Promise<number> =>
  new Promise((resolve) => {
    const req = Http.get({ host: "127.0.0.1", port, path: "/readyz", agent: false }, (res) => {
      res.resume()
      resolve(res.statusCode ?? 0)
    })
    req.on("error", () => resolve(0))
  })

const procStatus = (pid: number): { rssKiB: number; hwmKiB: number; anonKiB: number; fileKiB: number } => {
  const status = Fs.readFileSync(`/proc/${pid}/status`, "utf8")
  const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, "m").exec(status)?.[1] ?? Number.NaN)
  return { rssKiB: kib("VmRSS"), hwmKiB: kib("VmHWM"), anonKiB: kib("RssAnon"), fileKiB: kib("RssFile") }
}

// The configuration: what `sleeve certs` writes, with port-0 listeners and a free admin port.
const work = Fs.mkdtempSync(Path.join(Os.tmpdir(), "sleeve-startup-"))
const pki = Path.join(work, "pki")
const probe = Path.join(work, "probe.mjs")
Fs.writeFileSync(
  probe,
  `import v8 from "node:v8"
process.on("SIGUSR2", () => {
  const m = process.memoryUsage()
  process.stderr.write("HEAP " + JSON.stringify({ used: m.heapUsed, total: m.heapTotal, external: m.external }) + "\\n")
})
`
)
const made = await new Promise<number | null>((resolve) =>
  spawn(node, [Path.join(appDir, "src/main.ts"), "certs", "--out", pki], { stdio: "ignore" }).on("exit", resolve)
)
if (made !== 0) throw new Error(`sleeve certs failed (${made})`)
const adminPort = await freePort()
const configFile = Path.join(pki, "sleeve.yaml")
Fs.writeFileSync(
  configFile,
  Fs.readFileSync(configFile, "utf8")
    .replace(/listen: "127\.0\.0\.1:(2188|12188)"/g, 'listen: "127.0.0.1:0"')
    .replace(/127\.0\.0\.1:9464/, `127.0.0.1:${adminPort}`)
)

const once = async (v: Variant, withHeap: boolean): Promise<Sample> => {
  const bare = v.label === "bare"
  const argv = bare
    ? ["-e", 'console.log(\'{"event":"ready"}\');setInterval(()=>{},1e9)']
    : [...(withHeap ? ["--import", probe] : []), ...v.argv, "run", "-c", configFile]
  const t0 = performance.now()
  const child = spawn(node, argv, {
    cwd: work,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, NO_COLOR: "1", ...v.env }
  })
  let out = ""
  let err = ""
  let listenMs = Number.NaN
  child.stdout.setEncoding("utf8").on("data", (d: string) => {
    out += d
    if (Number.isNaN(listenMs) && out.includes('"event":"ready"')) listenMs = performance.now() - t0
  })
  child.stderr.setEncoding("utf8").on("data", (d: string) => {
    err += d
  })
  const exited = new Promise<void>((r) => child.on("exit", () => r()))
  try {
    let readyzMs = Number.NaN
    const deadline = t0 + 20_000
    while (performance.now() < deadline && child.exitCode === null) {
      if (bare ? !Number.isNaN(listenMs) : (await readyz(adminPort)) === 200) {
        readyzMs = performance.now() - t0
        break
      }
      await sleep(2)
    }
    if (Number.isNaN(readyzMs)) throw new Error(`${v.label}: never ready\n${out}\n${err}`)
    await sleep(idleMs)
    const mem = procStatus(child.pid as number)
    let sample: Sample = { listenMs, readyzMs, ...mem }
    if (withHeap) {
      child.kill("SIGUSR2")
      for (let i = 0; i < 200 && !err.includes("HEAP "); i++) await sleep(5)
      const line = /HEAP (\{.*\})/.exec(err)?.[1]
      if (line !== undefined) sample = { ...sample, heap: JSON.parse(line) }
    }
    return sample
  } finally {
    child.kill("SIGTERM")
    await Promise.race([exited, sleep(5000)])
    child.kill("SIGKILL")
  }
}

const median = (xs: ReadonlyArray<number>): number => {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2
}
const fmt = (xs: ReadonlyArray<number>, unit: (x: number) => string) =>
  `${unit(median(xs))} (${unit(Math.min(...xs))}–${unit(Math.max(...xs))})`
const ms = (x: number) => `${Math.round(x)}`
const mib = (kib: number) => (kib / 1024).toFixed(1)
const mb = (b: number) => (b / 1024 / 1024).toFixed(1)

const samples = new Map<string, Array<Sample>>(variants.map((v) => [v.label, []]))
const heapSamples = new Map<string, Array<Sample>>(variants.map((v) => [v.label, []]))
const load0 = Os.loadavg()
try {
  for (let r = 0; r < runs; r++) {
    for (const v of variants) samples.get(v.label)?.push(await once(v, false))
    if (heap) for (const v of variants) if (v.label !== "bare") heapSamples.get(v.label)?.push(await once(v, true))
  }
} finally {
  Fs.rmSync(work, { recursive: true, force: true })
}
const load1 = Os.loadavg()

console.log(
  `sleeve run, 2 listeners + admin, no connection; ${runs} interleaved runs, median (min–max); idle ${idleMs} ms; ` +
    `node ${process.version}; ${Os.cpus().length} CPUs; load average ${load0[0]?.toFixed(2)} → ${load1[0]?.toFixed(2)}`
)
for (const v of variants) {
  const s = samples.get(v.label) ?? []
  const h = (heapSamples.get(v.label) ?? []).flatMap((x) => (x.heap === undefined ? [] : [x.heap]))
  console.log(
    `${v.label.padEnd(12)} listen ${fmt(
      s.map((x) => x.listenMs),
      ms
    )} ms  readyz ${fmt(
      s.map((x) => x.readyzMs),
      ms
    )} ms  RSS ${fmt(
      s.map((x) => x.rssKiB),
      mib
    )} MiB (anon ${fmt(
      s.map((x) => x.anonKiB),
      mib
    )}, file ${fmt(
      s.map((x) => x.fileKiB),
      mib
    )})  HWM ${fmt(
      s.map((x) => x.hwmKiB),
      mib
    )} MiB` +
      (h.length === 0
        ? ""
        : `  heap used ${fmt(
            h.map((x) => x.used),
            mb
          )} / total ${fmt(
            h.map((x) => x.total),
            mb
          )} MB, external ${fmt(
            h.map((x) => x.external),
            mb
          )} MB`)
  )
}
