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
    primary.replaceCrls([{ tlsConfig: "S", nextUpdate: new Date("2026-12-08T00:00:00Z") }])
    for (const w of [a, b]) {
      w.registerListener("in", ["server"], { proxyProtocol: { send: true, accept: true } })
      // Nor a worker's view of the CRLs (the primary's reload decides what is in force).
      w.replaceCrls([{ tlsConfig: "S", nextUpdate: new Date("2026-12-02T00:00:00Z") }])
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
    a.proxyProtocolHeader("in", "received", "v2")
    b.proxyProtocolHeader("in", "received", "v2")
    b.proxyProtocolHeader("in", "sent", "v1")
    a.proxyProtocolRefused("in", "untrusted_source")
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
    assert.strictEqual(
      m.get(key(N.proxyProtocolHeadersTotal, { listener: "in", direction: "received", version: "v2" })),
      2
    )
    assert.strictEqual(m.get(key(N.proxyProtocolHeadersTotal, { listener: "in", direction: "sent", version: "v1" })), 1)
    assert.strictEqual(m.get(key(N.proxyProtocolRefusedTotal, { listener: "in", reason: "untrusted_source" })), 1)
    assert.strictEqual(m.get(key(N.proxyProtocolRefusedTotal, { listener: "in", reason: "timeout" })), 0)
    assert.strictEqual(
      m.get(key(N.crlNextUpdateTimestampSeconds, { tls_config: "S" })),
      Date.parse("2026-12-08T00:00:00Z") / 1000
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

  it("gives the series set of one process, plus the primary's worker series", async () => {
    const now = Date.parse("2026-12-01T00:00:00Z")
    const record = (r: Metrics.Recorder, serves: boolean, owns: boolean) => {
      if (owns) {
        r.configLoaded()
        r.setReady(true)
        r.replaceCertificates([{ tlsConfig: "S", kind: "own", notAfter: new Date("2027-01-01T00:00:00Z") }])
        r.replaceCrls([{ tlsConfig: "S", nextUpdate: new Date("2026-12-08T00:00:00Z") }])
      }
      if (serves) {
        r.registerListener("in", ["server", "client"], {
          starttls: "postgres",
          proxyProtocol: { send: true, accept: true }
        })
        r.registerListener("out", ["client"])
        r.handshake("in", "server", "ok", 0.01)
        r.peerCertificateNotAfter("in", new Date("2027-03-01T00:00:00Z"))
      }
    }
    const single = Metrics.make({ now: () => now })
    record(single, true, true)
    const primary = Metrics.make({ now: () => now })
    Metrics.makeWorkerRecorder(primary).setActive(2)
    record(primary, false, true)
    const workers = [Metrics.make({ now: () => now }), Metrics.make({ now: () => now })]
    for (const w of workers) record(w, true, false)
    // Keys independent of label order (aggregation may write labels in another order).
    const sleeveSeries = (text: string) =>
      text
        .split("\n")
        .flatMap((line) => {
          const s = line.startsWith("#") ? undefined : Exposition.decodeLine(line)
          return s === undefined || !s.name.startsWith("sleeve_") ? [] : [Exposition.seriesKey(s.name, s.labels)]
        })
        .sort()
    const aggregated = sleeveSeries(
      await Metrics.aggregateText(
        primary.registry,
        await Promise.all(workers.map((w) => w.registry.getMetricsAsJSON()))
      )
    )
    const one = sleeveSeries(await single.registry.metrics())
    assert.deepStrictEqual(
      aggregated,
      [...one, Metrics.WorkerMetricName.workersActive, Metrics.WorkerMetricName.workerRestartsTotal].sort()
    )
  })
})
