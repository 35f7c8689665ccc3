/**
 * The admin endpoint of a real `sleeve run`, read from outside with undici and curl: `/healthz`,
 * `/readyz`, `/metrics` (Prometheus content type, `sleeve_*` series and the default process
 * metrics), `/status` (bound listeners with live connection counts, each TLS configuration's
 * certificates compared with Node's own `X509Certificate` of the files, the last reload).
 *
 * Then the counters, scraped before and after each event and compared series by series: every
 * handshake outcome (accepted, DN rejected, untrusted CA, handshake timeout), a refusal at
 * `maxConnections`, and a reload that succeeds (SIGHUP) or fails (a broken file, noticed by the
 * file watcher) must move exactly the series they should, by exactly one, and nothing else.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Exposition from "@sleeve/testing/Exposition"
import { listen } from "@sleeve/testing/Net"
import * as TestPki from "@sleeve/testing/TestPki"
import { settle, sleep, waitUntil } from "@sleeve/testing/Wait"
import { X509Certificate } from "node:crypto"
import { readFile, rename, writeFile } from "node:fs/promises"
import * as Net from "node:net"
import { join } from "node:path"
import * as Tls from "node:tls"
import { request } from "undici"
import { type SleeveDaemon, startSleeve } from "../support/Prometheus.ts"
import { run } from "../support/Sleeve.ts"
import { exchange as exchangeAs } from "../support/TlsClient.ts"

let pki: TestPki.TestPki
let root: TestPki.Identity
let server: TestPki.Identity
let alice: TestPki.Identity
let mallory: TestPki.Identity
let impostor: TestPki.Identity
let echo: Net.Server
let sleeve: SleeveDaemon | undefined
let configText = ""

/** The counters whose changes are checked exactly. */
const counters = [
  "sleeve_tls_handshakes_total",
  "sleeve_tls_handshake_failures_total",
  "sleeve_tls_dn_rejections_total",
  "sleeve_connections_total",
  "sleeve_connections_refused_total",
  "sleeve_config_reloads_total"
]

const get = async (path: string) => {
  const res = await request(`${sleeve!.admin}${path}`, { headersTimeout: 5000, bodyTimeout: 5000 })
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() }
}

const scrape = async (): Promise<ReadonlyMap<string, number>> => {
  const r = await get("/metrics")
  expect(r.status).toBe(200)
  return Exposition.parse(r.body)
}

/**
 * Waits until the counters moved from `before` by exactly `expected` (Sleeve records a
 * handshake a moment after the client is done), then checks again a little later that nothing
 * else came in: an extra count fails the test.
 */
const expectMoved = async (before: ReadonlyMap<string, number>, expected: Record<string, number>) => {
  const last = await settle(
    async () => Exposition.diff(before, await scrape(), counters),
    (moved) => JSON.stringify(sorted(moved)) === JSON.stringify(sorted(expected)),
    { timeoutMs: 8000, everyMs: 100 }
  )
  expect(last).toEqual(expected)
  await sleep(300)
  expect(Exposition.diff(before, await scrape(), counters)).toEqual(expected)
}

const sorted = (o: Record<string, number>) =>
  Object.fromEntries(Object.entries(o).sort(([a], [b]) => a.localeCompare(b)))

const hs = (listener: string, result: string) =>
  `sleeve_tls_handshakes_total{listener="${listener}",role="server",result="${result}"}`
const failure = (listener: string, reason: string) =>
  `sleeve_tls_handshake_failures_total{listener="${listener}",role="server",reason="${reason}"}`

/** One mutual-TLS exchange with a listener as `who`, trusting the test root. */
const exchange = (port: number, who: TestPki.Identity) => exchangeAs(port, root.certPem, who)

/** Replaces the configuration file in one step (a rename), so the watcher sees one change. */
const replaceConfig = async (text: string) => {
  const tmp = join(pki.dir, "sleeve.yaml.next")
  await writeFile(tmp, text)
  await rename(tmp, join(pki.dir, "sleeve.yaml"))
}

beforeAll(async () => {
  pki = await TestPki.make()
  root = await pki.ca({ name: "root", subject: [{ CN: "Sleeve Test Root" }, { O: "Sleeve Tests" }] })
  const rogue = await pki.ca({ name: "rogue", subject: [{ CN: "Rogue Root" }] })
  server = await pki.leaf(root, { name: "server", subject: [{ CN: "sleeve-server" }, { O: "Sleeve Tests" }] })
  alice = await pki.leaf(root, { name: "alice", subject: "CN=alice" })
  mallory = await pki.leaf(root, { name: "mallory", subject: "CN=mallory" })
  // The authorized DN, but from a CA Sleeve does not trust: must fail on the chain, not pass on the DN.
  impostor = await pki.leaf(rogue, { name: "impostor", subject: "CN=alice" })
  await pki.write("trust.pem", root.certPem)

  echo = Net.createServer({ allowHalfOpen: true }, (s) => s.pipe(s))
  const echoPort = await listen(echo)

  configText = `
admin: { listen: "127.0.0.1:0" }
drainTimeout: 2s
tls:
  Server:
    type: server
    certificateFile: server.crt
    privateKeyFile: server.key
    caFile: trust.pem
    verifyPeer: require
    authorizedPeers: ["CN=alice"]
listeners:
  - { name: in, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${echoPort}", tls: Server, handshakeTimeout: 1s }
  - { name: capped, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${echoPort}", tls: Server, maxConnections: 1 }
`
  await pki.write("sleeve.yaml", configText)
  sleeve = await startSleeve("sleeve.yaml", { cwd: pki.dir })
}, 30_000)

afterAll(async () => {
  const exit = await sleeve?.stop("SIGTERM", 10_000)
  await new Promise((r) => echo?.close(r))
  await pki?.cleanup()
  // The process stopped cleanly: a requested stop is not a failure.
  if (exit !== undefined) expect(exit, sleeve?.stderr()).toEqual({ code: 0, signal: null })
})

describe("sleeve run: admin endpoint", { timeout: 30_000 }, () => {
  it("/healthz and /readyz answer 200; /metrics is Prometheus text with sleeve_* and process metrics", async () => {
    const [health, ready, metrics] = await Promise.all([get("/healthz"), get("/readyz"), get("/metrics")])
    expect([health.status, health.body]).toEqual([200, "ok\n"])
    expect([ready.status, ready.body]).toEqual([200, "ready\n"])
    expect(metrics.status).toBe(200)
    expect(metrics.headers["content-type"]).toBe("text/plain; version=0.0.4; charset=utf-8")

    const samples = Exposition.parse(metrics.body)
    expect(samples.get("sleeve_ready")).toBe(1)
    expect(samples.get("sleeve_config_last_reload_successful")).toBe(1)
    expect(samples.get('sleeve_connections_active{listener="in"}')).toBe(0)
    // Every handshake result and failure reason exists from the start (rate() works at once).
    for (const result of ["ok", "failed", "timeout", "rejected"]) expect(samples.get(hs("in", result))).toBe(0)
    expect(samples.get(failure("capped", "dn_rejected"))).toBe(0)
    // The certificate expiry gauges are the notAfter of the files, in Unix seconds.
    expect(samples.get('sleeve_certificate_not_after_timestamp_seconds{tls_config="Server",kind="own"}')).toBe(
      Date.parse(new X509Certificate(server.certPem).validTo) / 1000
    )
    expect(samples.get('sleeve_certificate_not_after_timestamp_seconds{tls_config="Server",kind="ca"}')).toBe(
      Date.parse(new X509Certificate(root.certPem).validTo) / 1000
    )
    for (const name of [
      "process_cpu_user_seconds_total",
      "process_resident_memory_bytes",
      "nodejs_heap_size_used_bytes"
    ]) {
      expect(
        [...samples.keys()].some((k) => k === name || k.startsWith(`${name}{`)),
        name
      ).toBe(true)
    }
    expect(metrics.body).toContain("# TYPE sleeve_tls_handshake_duration_seconds histogram")

    // A third-party client agrees (curl, not undici).
    const curl = await run("curl", [
      "-sS",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code} %{content_type}",
      `${sleeve!.admin}/metrics`
    ])
    expect(curl.stdout).toBe("200 text/plain; version=0.0.4; charset=utf-8")
  })

  it("/status lists the bound listeners and each certificate as Node reads the file", async () => {
    const r = await get("/status")
    expect(r.status).toBe(200)
    expect(r.headers["content-type"]).toMatch(/^application\/json/)
    const status = JSON.parse(r.body)
    expect(status.ready).toBe(true)
    expect(
      status.listeners.map((l: Record<string, unknown>) => [l.name, l.listen, l.bound, l.activeConnections])
    ).toEqual([
      ["in", `127.0.0.1:${sleeve!.listeners.in!.port}`, true, 0],
      ["capped", `127.0.0.1:${sleeve!.listeners.capped!.port}`, true, 0]
    ])
    const summary = (id: TestPki.Identity) => {
      const x = new X509Certificate(id.certPem)
      return {
        subject: id.subject,
        issuer: id.issuer?.subject ?? id.subject,
        notBefore: new Date(x.validFrom).toISOString(),
        notAfter: new Date(x.validTo).toISOString(),
        fingerprint256: x.fingerprint256
      }
    }
    expect(status.tls).toEqual([
      {
        name: "Server",
        type: "server",
        verifyPeer: "require",
        authorizedPeers: 1,
        certificate: summary(server),
        ca: [summary(root)]
      }
    ])
    expect(status.tls[0].certificate.subject).toBe("CN=sleeve-server,O=Sleeve Tests")
    expect(status.tls[0].certificate.issuer).toBe("CN=Sleeve Test Root,O=Sleeve Tests")
    expect(status.lastReload).toMatchObject({ result: "ok", problems: [] })
  })

  it("an accepted handshake counts ok; a DN rejection, an untrusted CA and a timeout count by reason", async () => {
    const port = sleeve!.listeners.in!.port

    let before = await scrape()
    const ok = await exchange(port, alice)
    expect(ok).toMatchObject({ secured: true, echoed: "ping\n" })
    await expectMoved(before, { [hs("in", "ok")]: 1, 'sleeve_connections_total{listener="in"}': 1 })

    before = await scrape()
    const rejected = await exchange(port, mallory)
    expect(rejected.echoed).toBe("")
    await expectMoved(before, {
      [hs("in", "rejected")]: 1,
      [failure("in", "dn_rejected")]: 1,
      'sleeve_tls_dn_rejections_total{listener="in",role="server"}': 1,
      'sleeve_connections_total{listener="in"}': 1
    })
    expect((await sleeve!.waitForEvent("peer_rejected", (e) => e.peerSubject === "CN=mallory")).nearestAuthorized).toBe(
      "CN=alice"
    )

    before = await scrape()
    const untrusted = await exchange(port, impostor)
    expect(untrusted.echoed).toBe("")
    await expectMoved(before, {
      [hs("in", "failed")]: 1,
      [failure("in", "unknown_ca")]: 1,
      'sleeve_connections_total{listener="in"}': 1
    })

    // A client that connects and never speaks TLS: closed by Sleeve at handshakeTimeout (1 s).
    before = await scrape()
    const started = performance.now()
    const closedAfter = await new Promise<number>((resolve) => {
      const raw = Net.connect({ host: "127.0.0.1", port })
      raw.on("error", () => {})
      raw.on("close", () => resolve(performance.now() - started))
      raw.setTimeout(10_000, () => raw.destroy())
    })
    expect(closedAfter).toBeGreaterThanOrEqual(900)
    expect(closedAfter).toBeLessThan(5000)
    await expectMoved(before, {
      [hs("in", "timeout")]: 1,
      [failure("in", "timeout")]: 1,
      'sleeve_connections_total{listener="in"}': 1
    })
  })

  it("maxConnections: 1 refuses the second connection while the first is open, then accepts again", async () => {
    const port = sleeve!.listeners.capped!.port
    const before = await scrape()
    // The first connection: secured, echoing, held open.
    const first = Tls.connect({ host: "127.0.0.1", port, ca: root.certPem, cert: alice.certPem, key: alice.keyPem })
    first.setEncoding("utf8")
    await new Promise<void>((resolve, reject) => {
      first.once("error", reject)
      first.once("secureConnect", () => first.write("one\n"))
      first.once("data", (d) => (d === "one\n" ? resolve() : reject(new Error(`echo: ${d}`))))
    })
    const status = JSON.parse((await get("/status")).body)
    expect(status.listeners.find((l: { name: string }) => l.name === "capped").activeConnections).toBe(1)

    const second = await exchange(port, alice)
    expect(second.secured).toBe(false)
    expect(second.echoed).toBe("")
    await sleeve!.waitForEvent("connection_refused", (e) => e.listener === "capped" && e.limit === 1)

    await new Promise<void>((resolve) => {
      first.once("close", () => resolve())
      first.end()
    })
    await waitUntil("the capped connection to close", async () =>
      (await scrape()).get('sleeve_connections_active{listener="capped"}') === 0 ? true : undefined
    )
    const third = await exchange(port, alice)
    expect(third).toMatchObject({ secured: true, echoed: "ping\n" })

    await expectMoved(before, {
      [hs("capped", "ok")]: 2,
      'sleeve_connections_total{listener="capped"}': 2,
      'sleeve_connections_refused_total{listener="capped",reason="max_connections"}': 1
    })
  })

  it("a reload that succeeds (SIGHUP) and one that fails (a broken file) are counted, timed and shown", async () => {
    // SIGHUP with nothing changed: a successful reload.
    let before = await scrape()
    const t0 = Date.now() / 1000
    sleeve!.child.kill("SIGHUP")
    await sleeve!.waitForEvent("reloaded", (e) => e.trigger === "SIGHUP")
    const t1 = Date.now() / 1000
    await expectMoved(before, { 'sleeve_config_reloads_total{result="ok"}': 1 })
    let after = await scrape()
    const okAt = after.get("sleeve_config_last_reload_success_timestamp_seconds")!
    expect(okAt).toBeGreaterThanOrEqual(t0 - 0.001)
    expect(okAt).toBeLessThanOrEqual(t1 + 0.001)
    expect(after.get("sleeve_config_last_reload_successful")).toBe(1)
    let status = JSON.parse((await get("/status")).body)
    expect(status.lastReload).toMatchObject({ result: "ok", problems: [] })

    // A broken edit, seen by the file watcher (no signal): rejected, counted, the time kept.
    before = after
    const eventsBefore = sleeve!.events().length
    await replaceConfig(`${configText}\nlisteners: []\n`)
    const failed = await sleeve!.waitForEvent("reload_failed", undefined, { after: eventsBefore })
    expect(failed.trigger).toBe(`file:${join(pki.dir, "sleeve.yaml")}`)
    expect(failed.problems).toEqual([
      expect.stringMatching(/sleeve\.yaml: line \d+, column \d+: invalid YAML: .*unique/)
    ])
    await expectMoved(before, { 'sleeve_config_reloads_total{result="failed"}': 1 })
    after = await scrape()
    expect(after.get("sleeve_config_last_reload_success_timestamp_seconds")).toBe(okAt)
    expect(after.get("sleeve_config_last_reload_successful")).toBe(0)
    expect(after.get("sleeve_ready")).toBe(1)
    status = JSON.parse((await get("/status")).body)
    expect(status.lastReload.result).toBe("failed")
    expect(status.lastReload.problems).toEqual(failed.problems)
    // The configuration in force still serves.
    expect(await exchange(sleeve!.listeners.in!.port, alice)).toMatchObject({ secured: true, echoed: "ping\n" })

    // Putting the file back is a change too: reloaded, successful again.
    const restored = sleeve!.events().length
    await replaceConfig(configText)
    await sleeve!.waitForEvent("reloaded", undefined, { after: restored })
    await waitUntil("the success gauge", async () =>
      (await scrape()).get("sleeve_config_last_reload_successful") === 1 ? true : undefined
    )
    expect(JSON.parse((await get("/status")).body).lastReload).toMatchObject({ result: "ok", problems: [] })
    expect(await readFile(join(pki.dir, "sleeve.yaml"), "utf8")).toBe(configText)
  })
})
