/**
 * The peer benchmark suite (issue 10 §1). From the repository root, with the repository's Node 24:
 *
 *   node_modules/.bin/node bench/suite.ts            # full run, < 20 min on 2 cores
 *   node_modules/.bin/node bench/suite.ts --quick    # a few minutes, for development
 *   … --only Sleeve,HAProxy   (contestant names, comma-separated; the baseline is always kept)
 *
 * Contestants: Sleeve (the production artefact apps/sidecar/dist/main.js), a raw node:tls +
 * pipe() proxy, stunnel, HAProxy, nginx's stream module, and no proxy at all. Proxies run on
 * cpu 0; the C load generator (bench/loadgen.c), the backends and this script on cpu 1. See
 * bench/README.md and docs/performance.md. Never part of `test`.
 */
import * as TestPki from "@sleeve/testing/TestPki"
import { execFileSync, spawnSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Artefact from "./artefact.ts"
import * as Contestants from "./contestants.ts"
import * as Gen from "./generators.ts"
import * as M from "./measurements.ts"
import * as Noise from "./noise.ts"
import { cpusAllowed, LOAD_CPU, NOFILE, type Proc, stop, stopAll, tree, waitHttp200, waitListening } from "./procs.ts"
import * as Report from "./report.ts"

const root = Path.resolve(import.meta.dirname, "..")
const args = process.argv.slice(2)
const quick = args.includes("--quick")
const only = args.includes("--only") ? args[args.indexOf("--only") + 1]!.split(",") : undefined
/** Also replace the table block of docs/performance.md (between its bench:table markers). */
const writeDoc = args.includes("--write-doc")
const known = new Set(["--quick", "--only", "--write-doc", ...(only ? [args[args.indexOf("--only") + 1]!] : [])])
const unknown = args.filter((a) => !known.has(a))
if (unknown.length > 0) {
  console.error(`bench/suite.ts: unknown argument ${unknown.join(" ")} (see bench/README.md)`)
  process.exit(2)
}
const began = Date.now()
const log = (s: string) => console.error(`[${((Date.now() - began) / 1000).toFixed(0).padStart(4)} s] ${s}`)

const params: M.Params = quick
  ? {
      reps: 1,
      startReps: 1,
      memReps: 1,
      bytes: 64 * 2 ** 20,
      seconds: 1,
      hsConns: 16,
      holdSteps: [500, 1000],
      idleSettleMs: 1000
    }
  : {
      reps: 3,
      startReps: 5,
      memReps: 1,
      bytes: 256 * 2 ** 20,
      seconds: 2,
      hsConns: 16,
      holdSteps: [5000, Math.min(10_000, Contestants.MAX_PROXIED)],
      idleSettleMs: 2000
    }

// --- Peers: install what is missing (Debian) -------------------------------------------------
const has = (cmd: string) => spawnSync("sh", ["-c", `command -v ${cmd}`]).status === 0
const missing = [
  has("stunnel4") ? undefined : "stunnel4",
  has("haproxy") ? undefined : "haproxy",
  has("nginx") ? undefined : "nginx",
  Fs.existsSync(Contestants.NGINX_STREAM_MODULE) ? undefined : "libnginx-mod-stream",
  has("gcc") ? undefined : "gcc",
  Fs.existsSync("/usr/include/openssl/ssl.h") ? undefined : "libssl-dev",
  has("openssl") ? undefined : "openssl",
  has("taskset") && has("prlimit") ? undefined : "util-linux"
].filter((x): x is string => x !== undefined)
if (missing.length > 0) {
  log(`installing ${missing.join(" ")} with apt-get`)
  const sudo = process.getuid?.() === 0 ? [] : ["sudo"]
  execFileSync(sudo[0] ?? "apt-get", [...sudo.slice(1), ...(sudo.length ? ["apt-get"] : []), "update"], {
    stdio: "inherit"
  })
  execFileSync(sudo[0] ?? "apt-get", [...(sudo.length ? ["apt-get"] : []), "install", "-y", ...missing], {
    stdio: "inherit",
    env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" }
  })
}
const sleeve = Artefact.prepare(root, process.execPath, log)
log(
  `Sleeve: ${Path.relative(root, sleeve.main)} executed directly (${sleeve.shebang}; Node flags: ${sleeve.nodeFlags === undefined ? "not parsed" : sleeve.nodeFlags.join(" ") || "none"})`
)

// This script works on the generator's core too; the proxies get the other one to themselves.
execFileSync("taskset", ["-pc", String(LOAD_CPU), String(process.pid)], { stdio: "ignore" })

const first = (cmd: string, a: ReadonlyArray<string>) => {
  const r = spawnSync(cmd, a, { encoding: "utf8" })
  return (
    `${r.stdout}${r.stderr}`
      .split("\n")
      .find((l) => l.trim() !== "" && !/^Initializing/.test(l))
      ?.trim() ?? "?"
  )
}
const machine = {
  date: new Date().toISOString(),
  nproc: Os.cpus().length,
  cpu: /model name\s*:\s*(.*)/.exec(Fs.readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? "?",
  kernel: Os.release(),
  memoryGiB: Math.round(Os.totalmem() / 2 ** 30),
  node: `${process.version} (OpenSSL ${process.versions.openssl})`,
  openssl: first("openssl", ["version"]),
  stunnel: first("stunnel4", ["-version"]),
  haproxy: first("haproxy", ["-v"]),
  nginx: first("nginx", ["-v"]),
  loadAverageAtStart: Os.loadavg()
    .map((x) => x.toFixed(2))
    .join(" ")
}

if (only) {
  const names = new Set(Contestants.all.map((c) => c.name))
  const bad = only.filter((n) => !names.has(n))
  if (bad.length > 0) {
    console.error(`--only: no contestant named ${bad.join(", ")} (names: ${[...names].join(", ")})`)
    process.exit(2)
  }
}
const chosen = Contestants.all.filter((c) => !only || c.kind === "baseline" || only.includes(c.name))
const contestants: Array<Contestants.Contestant> = []
const results = new M.Results()
const noise = Noise.start()
/** Runs one phase; a failure becomes a note in the report instead of losing the other phases. */
const phase = async (name: string, f: () => Promise<void>) => {
  log(name)
  try {
    await f()
  } catch (e) {
    log(`${name} failed: ${e instanceof Error ? e.message : String(e)}`)
    results.notes.push(`${name} failed: ${e instanceof Error ? e.message : String(e)}`)
  }
}
const pki = await TestPki.make()
let exitCode = 0
try {
  const ca = await pki.ca({ name: "ca", subject: "CN=bench CA" })
  const ec = await pki.leaf(ca, { name: "server-ec", subject: "CN=localhost" })
  const rsa = await pki.leaf(ca, { name: "server-rsa", subject: "CN=localhost", keyType: "RSA" })
  const client = await pki.leaf(ca, { name: "client", subject: "CN=client" })
  const stranger = await pki.leaf(ca, { name: "stranger", subject: "CN=stranger" })
  const paths: Contestants.Pki = {
    dir: pki.dir,
    ca: pki.caFile,
    ecCert: ec.certFile,
    ecKey: ec.keyFile,
    ecPem: await pki.write("server-ec.pem", ec.certPem + ec.keyPem),
    rsaCert: rsa.certFile,
    rsaKey: rsa.keyFile,
    rsaPem: await pki.write("server-rsa.pem", rsa.certPem + rsa.keyPem),
    clientCert: client.certFile,
    clientKey: client.keyFile,
    clientSubject: client.subject,
    strangerCert: stranger.certFile,
    strangerKey: stranger.keyFile
  }
  const loadgen = Gen.compile(pki.dir)
  const backends = await Gen.startBackends(loadgen, paths)
  const env: Contestants.Env = {
    pki: paths,
    node: process.execPath,
    sleeve,
    loadgen,
    floorScript: Path.join(import.meta.dirname, "floor.ts"),
    backend: backends.ports
  }
  for (const c of chosen) {
    const why = c.unavailable?.(env)
    if (why === undefined) contestants.push(c)
    else {
      log(`skipping ${c.name}: ${why}`)
      results.notes.push(`${c.name} not measured: ${why}`)
    }
  }
  for (const [b, port] of backends.procs.map((p, i) => [p, Object.values(backends.ports)[i]!] as const))
    await waitListening(b, [port], performance.now())
  log(`${quick ? "quick" : "full"} run: ${JSON.stringify(params)}`)

  log("start time and idle memory")
  await M.startAndIdle(env, contestants, params, results)

  log("starting every contestant for the steady-state measurements")
  const live: Array<M.Live> = []
  for (const c of contestants) {
    const running = await c.start(env, "steady")
    const ports = Object.values(running.ports).filter((x): x is number => x !== undefined)
    if (c.kind === "baseline")
      await Promise.all(running.procs.map((p, i) => waitListening(p, [ports[i]!], performance.now())))
    else await waitListening(running.procs[0]!, ports, performance.now())
    if (running.readyUrl) await waitHttp200(running.procs[0]!, running.readyUrl, performance.now())
    live.push({ contestant: c, running })
  }
  // The mTLS figures are only worth something if authorization is really on: check it.
  for (const { contestant, running } of live) {
    const ok = await Gen.completedHandshakes(env, running.ports.termMtls, { tls: true, clientCert: true })
    const stranger = await Gen.completedHandshakes(env, running.ports.termMtls, { tls: true, clientCert: "stranger" })
    const none = await Gen.completedHandshakes(env, running.ports.termMtls, { tls: true })
    if (ok === 0 || none > 0 || (contestant.dnAuthorization && stranger > 0))
      throw new Error(
        `${contestant.name}: mTLS listener: authorized ${ok}, stranger DN ${stranger}, no certificate ${none}`
      )
    log(
      `${contestant.name}: mTLS checked: authorized client passes, no certificate refused, other DN ${stranger > 0 ? "passes (chain verification only)" : "refused"}`
    )
  }
  const pinned = (p: Proc) => {
    const all = tree(p.pid)
    return `${p.name} pid ${all.join("+")} cpus ${[...new Set(all.map(cpusAllowed))].join("/")}`
  }
  const pinning = [
    `suite pid ${process.pid} cpus ${cpusAllowed(process.pid)}`,
    ...backends.procs.map(pinned),
    ...live.flatMap(({ running }) => running.procs.map(pinned)),
    `loadgen clients taskset -c ${LOAD_CPU}`
  ]
  log(`pinning:\n  ${pinning.join("\n  ")}`)

  await phase("throughput", () => M.throughput(env, live, params, results))
  await phase("handshakes (ECDSA, RSA, mTLS, STARTTLS)", () => M.handshakes(env, live, params, results))
  await phase("1 KiB request/response latency", () => M.latency(env, live, params, results))
  for (const { running } of live) for (const p of running.procs) await stop(p)

  await phase(`memory with ${params.holdSteps.join(" and ")} idle connections`, () =>
    M.memory(env, contestants, params, results, log)
  )

  const summary = Report.summarize(results, contestants)
  const seconds = Math.round((Date.now() - began) / 1000)
  const quiet = noise.finish()
  const info = {
    ...machine,
    seconds,
    quick,
    params,
    noise: quiet,
    sleeve: { shebang: sleeve.shebang, built: sleeve.built }
  }
  const lim = Contestants.MAX_PROXIED
  const mmss = `${Math.floor(seconds / 60)} min ${seconds % 60} s`
  const la = quiet.loadAverage1m
  const status = `**${quick ? "Quick" : "Full"} run of ${machine.date.slice(0, 16).replace("T", " ")} UTC, ${mmss}: ${
    quiet.noisy
      ? `noisy (other processes took ${(quiet.foreignShare * 100).toFixed(0)} % of the machine): rates and latencies are low and scattered; the CPU-per-work rows hold up better`
      : "quiet"
  }.**`
  const body = `${status}

- Run: ${machine.date}, ${quick ? "**--quick** (1 repetition, small sizes: indicative only)" : "full"}${only ? `, only ${only.join(", ")}` : ""}; took ${mmss}.
- ${quiet.noisy ? "**Noisy run:** " : "Quiet run: "}other processes on the machine used ${quiet.foreignCpuSeconds.toFixed(0)} CPU-s during the run (${(quiet.foreignShare * 100).toFixed(1)} % of the ${machine.nproc} cores; over 5 % counts as noisy). 1-min load average (the suite itself keeps about 2 busy, and the thread-per-connection stunnel and backends add thousands of threads in the memory step): ${la.start.toFixed(2)} at the start, median ${la.median.toFixed(2)}, max ${la.max.toFixed(2)}, ${la.end.toFixed(2)} at the end.
- Machine: ${machine.nproc} cores (${machine.cpu}), ${machine.memoryGiB} GiB, kernel ${machine.kernel}; Node ${machine.node}; ${machine.openssl} (the C peers and the generator); ${machine.stunnel}; ${machine.haproxy}; ${machine.nginx}.
- Sleeve: \`apps/sidecar/dist/main.js run -c …\` executed directly through its \`${sleeve.shebang}\` line (Node flags: ${sleeve.nodeFlags === undefined ? "not parsed" : sleeve.nodeFlags.length ? `\`${sleeve.nodeFlags.join(" ")}\`` : "none"})${sleeve.built ? `; the suite rebuilt the artefact (it was ${sleeve.built})` : ""}.
- Pinning (the kernel's Cpus_allowed_list, read during the run): ${pinning.join("; ")}.
- Open files: soft limit raised to the hard limit, ${NOFILE}, for every process (the sandbox cannot raise the hard one). A proxy needs two descriptors per proxied connection, so the "10 000 connections" step holds at most ${lim.toLocaleString("en-US")}.
- Parameters: ${JSON.stringify(params)}.

Cells: **median** (min–max) over interleaved repetitions; ×C = ratio to the best C peer's median
(stunnel, HAProxy, nginx; "best" = highest for ↑, lowest for ↓ figures), ×B = ratio to the
no-proxy baseline. ↑ higher is better, ↓ lower is better.

${Report.markdown(summary, contestants)}

${results.notes.length ? `Notes:\n\n${results.notes.map((n) => `- ${n}`).join("\n")}\n\n` : ""}Issue-10 targets (Sleeve against the best C peer, same run):

${Report.targets(summary, lim)}

Generator headroom (the baseline must be far above every proxy):

${Report.headroom(summary, contestants)}
`
  const md = `# Peer benchmark ${machine.date}${quick ? " (--quick)" : ""}${quiet.noisy ? " (noisy)" : ""}\n\n${body}`
  console.log(md)
  const dir = Path.join(import.meta.dirname, "results")
  Fs.mkdirSync(dir, { recursive: true })
  const stem = quick ? "quick-latest" : machine.date.replace(/[:.]/g, "-")
  const jsonFile = Path.join(dir, `${stem}.json`)
  Fs.writeFileSync(
    jsonFile,
    `${JSON.stringify({ machine: info, pinning, notes: results.notes, figures: summary }, null, 2)}\n`
  )
  // In the repository's format, so that `biome ci .` stays clean when a full run's result is committed.
  spawnSync(Path.join(root, "node_modules/.bin/biome"), ["format", "--write", jsonFile], { stdio: "ignore" })
  Fs.writeFileSync(Path.join(dir, `${stem}.md`), md)
  log(`done in ${seconds} s; wrote bench/results/${stem}.json and .md`)
  if (writeDoc) {
    const doc = Path.join(root, "docs/performance.md")
    Report.replaceBlock(doc, `${Report.BEGIN}\n${body}${Report.END}`)
    log(`replaced the table block of docs/performance.md (results: bench/results/${stem}.md)`)
  }
} catch (e) {
  console.error(e)
  exitCode = 1
} finally {
  await stopAll()
  await pki.cleanup()
}
process.exit(exitCode)
