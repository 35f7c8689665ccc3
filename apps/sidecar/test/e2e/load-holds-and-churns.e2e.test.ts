/**
 * Load (issue 12): `sleeve run` as a real process holds many concurrent TLS connections through
 * a terminate listener, then serves a churn of short connections for a bounded time; afterwards
 * its descriptors return to the baseline (/proc/PID/fd) and its RSS comes back near it
 * (/proc/PID/status VmRSS), and every connection completed a real echo round trip. The p99
 * handshake latency (measured at the client: connect → secureConnect) is printed and written to
 * the figures file.
 *
 * The default size fits the README test command on a loaded 2-core machine (1 000 held, 15 s of
 * churn). The soak — 5 000 held, 90 s of churn — runs with `SLEEVE_SOAK=1` (see docs/security.md).
 * The sidecar is started under `ulimit -n` raised to the hard limit; the test fails with a clear
 * message when the hard limit cannot hold the run.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { freePort } from "@sleeve/testing/Net"
import * as Process from "@sleeve/testing/Process"
import * as TestPki from "@sleeve/testing/TestPki"
import { eventually, sleep } from "@sleeve/testing/Wait"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Tls from "node:tls"
import { childEnv, main, node } from "../support/Sleeve.ts"

const soak = process.env.SLEEVE_SOAK === "1"
const HELD = Number(process.env.SLEEVE_LOAD_HELD ?? (soak ? 5000 : 1000))
const CHURN_MS = Number(process.env.SLEEVE_LOAD_CHURN_MS ?? (soak ? 90_000 : 15_000))
/** Handshakes in flight at once while opening the held connections. */
const OPENING = 100
/** Concurrent connections during the churn. */
const CHURNERS = 50
const FIGURES = process.env.SLEEVE_FIGURES_FILE ?? "/work/notes/hostile-figures.md"

let pki: TestPki.TestPki
let ca: TestPki.Identity
let daemon: Process.Daemon
let target: Net.Server
const targetSockets = new Set<Net.Socket>()
let port: number

const MiB = 1024 * 1024
const rssOf = (pid: number): number => {
  const m = /VmRSS:\s+(\d+) kB/.exec(Fs.readFileSync(`/proc/${pid}/status`, "utf8"))
  return Number(m?.[1] ?? 0) * 1024
}
const fdsOf = (pid: number): number => Fs.readdirSync(`/proc/${pid}/fd`).length
const hardNofile = (): number => {
  const line = Fs.readFileSync("/proc/self/limits", "utf8")
    .split("\n")
    .find((l) => l.startsWith("Max open files"))!
  const hard = line.trim().split(/\s+/)[4]!
  return hard === "unlimited" ? Number.POSITIVE_INFINITY : Number(hard)
}

beforeAll(async () => {
  pki = await TestPki.make()
  ca = await pki.ca({ name: "root", subject: [{ CN: "Load CA" }] })
  await pki.leaf(ca, { name: "server", subject: [{ CN: "localhost" }], san: { dns: ["localhost"], ip: ["127.0.0.1"] } })
  // The application: an echo server in this process.
  target = Net.createServer((s) => {
    targetSockets.add(s)
    s.on("close", () => targetSockets.delete(s))
    s.on("error", () => {})
    s.pipe(s)
  })
  await new Promise<void>((r) => target.listen(0, "127.0.0.1", () => r()))
  const targetPort = (target.address() as Net.AddressInfo).port
  port = await freePort()
  await pki.write(
    "sleeve.yaml",
    `
tls:
  Server:
    type: server
    certificateFile: server.crt
    privateKeyFile: server.key
listeners:
  - name: in
    mode: terminate
    listen: "127.0.0.1:${port}"
    target: "127.0.0.1:${targetPort}"
    tls: Server
    maxConnections: ${HELD + CHURNERS + 100}
    handshakeTimeout: 60s
`
  )
  daemon = Process.startDaemon(
    "bash",
    ["-c", 'ulimit -n "$(ulimit -Hn)" && exec "$0" "$@"', node, main, "run", "--config", "sleeve.yaml"],
    { cwd: pki.dir, env: childEnv() }
  )
  await daemon.waitForOutput('"event":"ready"', { timeoutMs: 30_000 })
}, 60_000)

afterAll(async () => {
  await daemon?.stop("SIGTERM")
  for (const s of targetSockets) s.destroy()
  target?.close()
  await pki?.cleanup()
})

/** One TLS connection with one echo round trip; resolves with the socket and its handshake time. */
const open = (): Promise<{ readonly socket: Tls.TLSSocket; readonly handshakeMs: number }> =>
  new Promise((resolve, reject) => {
    const t0 = performance.now()
    const s = Tls.connect({ host: "127.0.0.1", port, ca: ca.certPem, servername: "localhost" })
    s.once("error", reject)
    s.once("secureConnect", () => {
      const handshakeMs = performance.now() - t0
      s.write("ping\n")
      s.once("data", (d: Buffer) => {
        if (d.toString() !== "ping\n") return reject(new Error(`echo: ${JSON.stringify(d.toString())}`))
        s.off("error", reject)
        s.on("error", () => {})
        resolve({ socket: s, handshakeMs })
      })
    })
  })

const closeAll = (sockets: ReadonlyArray<Net.Socket>): Promise<void> =>
  Promise.all(
    sockets.map(
      (s) =>
        new Promise<void>((r) => {
          s.once("close", () => r())
          s.end()
          setTimeout(() => s.destroy(), 5000).unref()
        })
    )
  ).then(() => undefined)

const percentile = (xs: ReadonlyArray<number>, p: number): number => {
  const sorted = [...xs].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? Number.NaN
}

describe(`load: ${HELD} held TLS connections, then ${CHURN_MS / 1000} s of churn`, () => {
  it("every connection is served; descriptors return to the baseline, RSS does not grow across churn rounds; p99 reported", async () => {
    // Client sockets and the target's sockets live in this process; the sidecar holds two per
    // connection, plus its descriptor reserve (at most 256, docs/metrics.md), inside which it
    // refuses connections.
    const needed = 2 * HELD + 2 * CHURNERS + 200 + 256
    expect(
      hardNofile(),
      `hard RLIMIT_NOFILE must allow ${needed} descriptors (raise it: prlimit/ulimit -Hn)`
    ).toBeGreaterThanOrEqual(needed)
    const pid = daemon.child.pid!

    // Warm up (code paths, TLS contexts, allocator), then take the baseline.
    await closeAll((await Promise.all(Array.from({ length: 50 }, open))).map((c) => c.socket))
    await eventually("warm-up closed", () => targetSockets.size === 0, 10_000)
    await sleep(500)
    const baseline = { rss: rssOf(pid), fds: fdsOf(pid) }

    // Hold.
    const held: Array<Tls.TLSSocket> = []
    const heldMs: Array<number> = []
    const t0 = performance.now()
    let next = 0
    await Promise.all(
      Array.from({ length: OPENING }, async () => {
        while (next < HELD) {
          next++
          const c = await open()
          held.push(c.socket)
          heldMs.push(c.handshakeMs)
        }
      })
    )
    const openedIn = performance.now() - t0
    expect(held.length).toBe(HELD)
    await eventually("every held connection reached the target", () => targetSockets.size === HELD, 30_000)
    const peak = { rss: rssOf(pid), fds: fdsOf(pid) }
    expect(peak.fds - baseline.fds).toBeGreaterThanOrEqual(2 * HELD)

    // Every held connection still works.
    const echoes = await Promise.all(
      held.map(
        (s, i) =>
          new Promise<boolean>((r) => {
            s.once("data", (d: Buffer) => r(d.toString() === `held ${i}\n`))
            s.write(`held ${i}\n`)
          })
      )
    )
    expect(echoes.every(Boolean)).toBe(true)
    await closeAll(held)

    // Churn, in three equal rounds: a leak grows with the number of connections served, so the
    // later rounds must not keep adding to what the first left behind.
    const churnMs: Array<number> = []
    let failures = 0
    const churn = async (ms: number) => {
      const deadline = performance.now() + ms
      await Promise.all(
        Array.from({ length: CHURNERS }, async () => {
          while (performance.now() < deadline) {
            try {
              const c = await open()
              churnMs.push(c.handshakeMs)
              await closeAll([c.socket])
            } catch {
              failures++
            }
          }
        })
      )
      await eventually("the target's sockets closed", () => targetSockets.size === 0, 30_000)
      await eventually(
        "the sidecar's descriptors back to the baseline",
        () => fdsOf(pid) <= baseline.fds,
        30_000,
        () => `${fdsOf(pid)} > ${baseline.fds}`
      )
      await sleep(3000)
      return rssOf(pid)
    }
    const afterRound1 = await churn(CHURN_MS / 3)
    const round1 = churnMs.length
    const afterRound2 = await churn(CHURN_MS / 3)
    const round2 = churnMs.length - round1
    const afterRound3 = await churn(CHURN_MS / 3)
    expect(failures).toBe(0)
    expect(round1).toBeGreaterThan(CHURNERS)
    expect(round2).toBeGreaterThan(CHURNERS)
    expect(churnMs.length - round1 - round2).toBeGreaterThan(CHURNERS)
    const after = { rss: afterRound3, fds: fdsOf(pid) }
    expect(after.fds).toBeLessThanOrEqual(baseline.fds)
    // No leak: a leak grows RSS in every round by what it keeps per connection; retention (V8
    // keeping the heap it grew to, glibc keeping freed arenas) is bounded, and settles in some
    // round after the first. So the smaller of the growths of rounds 2 and 3 (each as many
    // connections again as round 1) stays within 32 MiB. (One round alone was seen to add up to
    // 33.5 MiB of retention on a loaded CI machine.)
    const growth = Math.min(afterRound2 - afterRound1, afterRound3 - afterRound2)
    expect(
      growth,
      `RSS after round 1 ${afterRound1 / MiB} MiB, round 2 ${afterRound2 / MiB} MiB, round 3 ${afterRound3 / MiB} MiB (baseline ${baseline.rss / MiB}, peak ${peak.rss / MiB})`
    ).toBeLessThan(32 * MiB)
    expect(daemon.stderr()).not.toMatch(/EMFILE|Error/)

    const f = (x: number) => x.toFixed(1)
    const report = [
      `### Load (${new Date().toISOString()}, ${soak ? "SLEEVE_SOAK=1" : "default size"})`,
      "",
      `- held: ${HELD} concurrent TLS connections (TLS 1.3, echo round trip each), opened ${OPENING} at a time in ${f(openedIn / 1000)} s`,
      `- handshake latency while opening: p50 ${f(percentile(heldMs, 50))} ms, p99 ${f(percentile(heldMs, 99))} ms, max ${f(Math.max(...heldMs))} ms`,
      `- churn: ${CHURN_MS / 1000} s in three rounds, ${CHURNERS} concurrent, ${churnMs.length} connections (${f(churnMs.length / (CHURN_MS / 1000))}/s), ${failures} failures`,
      `- handshake latency under churn: p50 ${f(percentile(churnMs, 50))} ms, p99 ${f(percentile(churnMs, 99))} ms`,
      `- sidecar fds: baseline ${baseline.fds}, held ${peak.fds}, after ${after.fds}`,
      `- sidecar RSS: baseline ${f(baseline.rss / MiB)} MiB, held ${f(peak.rss / MiB)} MiB, after churn round 1 ${f(afterRound1 / MiB)} MiB (${round1} connections), after round 2 ${f(afterRound2 / MiB)} MiB (${round2} more), after round 3 ${f(afterRound3 / MiB)} MiB (${churnMs.length - round1 - round2} more)`,
      ""
    ].join("\n")
    console.log(report)
    try {
      Fs.appendFileSync(FIGURES, `${report}\n`)
    } catch {
      // the figures file is a convenience of the development machine (absent in CI)
    }
  }, 600_000)
})
