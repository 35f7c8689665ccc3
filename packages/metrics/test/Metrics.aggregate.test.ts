import { assert, describe, it } from "@effect/vitest"
import * as Exposition from "@sleeve/testing/Exposition"
import * as Metrics from "../src/Metrics.ts"

const N = Metrics.MetricName
/** A series as prom-client writes it: labels in the order they were declared. */
const key = (name: string, labels: Readonly<Record<string, string>> = {}): string => {
  const pairs = Object.entries(labels).map(([k, v]) => `${k}="${v}"`)
  return pairs.length === 0 ? name : `${name}{${pairs.join(",")}}`
}

describe("Metrics.aggregateText (workers > 1)", () => {
  it("sums the data-path series of every worker, keeps the minimum peer notAfter and takes the primary's own series", async () => {
    const now = Date.parse("2026-12-01T00:00:00Z")
    const primary = Metrics.make({ now: () => now })
    const workers = Metrics.makeWorkerRecorder(primary)
    const a = Metrics.make({ now: () => now })
    const b = Metrics.make({ now: () => now })
    primary.configLoaded()
    primary.configReload("failed")
    primary.setReady(true)
    primary.replaceCertificates([{ tlsConfig: "S", kind: "own", notAfter: new Date("2027-01-01T00:00:00Z") }])
    workers.setActive(2)
    workers.restarted()
    for (const w of [a, b]) {
      w.registerListener("in", ["server"])
      // A worker's own view of process-wide series must not leak into the total.
      w.configLoaded()
      w.setReady(true)
    }
    for (let i = 0; i < 3; i++) a.handshake("in", "server", "ok", 0.002)
    for (let i = 0; i < 2; i++) b.handshake("in", "server", "ok", 0.02)
    b.handshakeFailed("in", "server", "unknown_ca")
    a.connectionOpened("in")
    b.connectionOpened("in")
    b.connectionOpened("in")
    a.bytes("in", "client_to_target", 100)
    b.bytes("in", "client_to_target", 23)
    a.peerCertificateNotAfter("in", new Date("2027-06-01T00:00:00Z"))
    b.peerCertificateNotAfter("in", new Date("2027-03-01T00:00:00Z"))

    const text = await Metrics.aggregateText(primary.registry, [
      await a.registry.getMetricsAsJSON(),
      await b.registry.getMetricsAsJSON()
    ])
    const m = Exposition.parse(text)
    assert.strictEqual(m.get(key(N.handshakesTotal, { listener: "in", role: "server", result: "ok" })), 5)
    assert.strictEqual(m.get(key(N.handshakesTotal, { listener: "in", role: "server", result: "failed" })), 1)
    assert.strictEqual(
      m.get(key(N.handshakeFailuresTotal, { listener: "in", role: "server", reason: "unknown_ca" })),
      1
    )
    assert.strictEqual(m.get(key(`${N.handshakeDurationSeconds}_count`, { listener: "in", role: "server" })), 5)
    assert.strictEqual(
      m.get(key(`${N.handshakeDurationSeconds}_bucket`, { le: "0.005", listener: "in", role: "server" })),
      3
    )
    assert.strictEqual(m.get(key(N.connectionsActive, { listener: "in" })), 3)
    assert.strictEqual(m.get(key(N.connectionsTotal, { listener: "in" })), 3)
    assert.strictEqual(m.get(key(N.bytesTotal, { listener: "in", direction: "client_to_target" })), 123)
    assert.strictEqual(
      m.get(key(N.peerCertificateNotAfterMinTimestampSeconds, { listener: "in" })),
      Date.parse("2027-03-01T00:00:00Z") / 1000
    )
    // The primary's: one failed reload counted once, ready 1 (not 3), its certificate.
    assert.strictEqual(m.get(key(N.configReloadsTotal, { result: "failed" })), 1)
    assert.strictEqual(m.get(N.configLastReloadSuccessful), 0)
    assert.strictEqual(m.get(N.ready), 1)
    assert.strictEqual(
      m.get(key(N.certificateNotAfterTimestampSeconds, { tls_config: "S", kind: "own" })),
      Date.parse("2027-01-01T00:00:00Z") / 1000
    )
    assert.strictEqual(m.get(Metrics.WorkerMetricName.workersActive), 2)
    assert.strictEqual(m.get(Metrics.WorkerMetricName.workerRestartsTotal), 1)
    // Process metrics are totals over the three processes; the start time is the primary's.
    const rss = await Promise.all(
      [primary, a, b].map(
        async (r) => (await r.registry.getSingleMetric("process_resident_memory_bytes")?.get())?.values[0]?.value ?? 0
      )
    )
    assert.isAbove(m.get("process_resident_memory_bytes") ?? 0, Math.max(...rss))
    assert.strictEqual(m.has("process_start_time_seconds"), true)
    assert.match(text, /^# TYPE sleeve_tls_handshakes_total counter$/m)
  })
})
