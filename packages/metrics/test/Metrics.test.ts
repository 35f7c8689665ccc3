import { assert, describe, it } from "@effect/vitest"
import * as Exposition from "@sleeve/testing/Exposition"
import { Effect, Layer } from "effect"
import { TestClock } from "effect/testing"
import * as Prom from "prom-client"
import * as Metrics from "../src/Metrics.ts"

// ---------------------------------------------------------------------------------------------
// Reading the exposition back
// ---------------------------------------------------------------------------------------------

/** `name{a="1",b="2"}` with labels sorted by name, so keys do not depend on emission order. */
const key = Exposition.seriesKey

/** Every `sleeve_*` sample of a text exposition, by `key`. */
const parse = (text: string): Map<string, number> => {
  const samples = new Map<string, number>()
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue
    const sample = Exposition.decodeLine(line)
    assert.isDefined(sample, `unparsable exposition line: ${line}`)
    const { name, labels, value } = sample!
    if (!name.startsWith("sleeve_")) continue
    const k = key(name, labels)
    assert.isFalse(samples.has(k), `duplicate sample ${k}`)
    samples.set(k, value)
  }
  return samples
}

const snapshot = (m: Metrics.Recorder) => Effect.map(m.metricsText, parse)

/** The samples that changed between two snapshots (new series count from 0), with the delta. */
const diff = (before: Map<string, number>, after: Map<string, number>): Record<string, number> => {
  const changes: Record<string, number> = {}
  for (const k of new Set([...before.keys(), ...after.keys()])) {
    const d = (after.get(k) ?? 0) - (before.get(k) ?? 0)
    if (d !== 0 || before.has(k) !== after.has(k)) changes[k] = Math.round(d * 1e9) / 1e9
  }
  return changes
}

/** Runs `record` and returns exactly the series it moved and by how much. */
const changesOf = (m: Metrics.Recorder, record: () => void) =>
  Effect.gen(function* () {
    const before = yield* snapshot(m)
    record()
    return diff(before, yield* snapshot(m))
  })

/** The `Metrics` service of the current context. */
const service = Effect.gen(function* () {
  return yield* Metrics.Metrics
})

/** Runs the test body against a fresh real recorder built by `Metrics.layer`. */
const withMetrics = <A, E>(body: (m: Metrics.Recorder) => Effect.Effect<A, E>) =>
  Effect.flatMap(service, body).pipe(Effect.provide(Metrics.Metrics.layer))

const histogram = (listener: string, role: Metrics.Role, observed: number, count: number) => {
  const changes: Record<string, number> = {}
  const name = Metrics.MetricName.handshakeDurationSeconds
  for (const le of [...Metrics.handshakeDurationBuckets, Number.POSITIVE_INFINITY]) {
    const bucket = key(`${name}_bucket`, { le: le === Number.POSITIVE_INFINITY ? "+Inf" : String(le), listener, role })
    changes[bucket] = observed <= le ? count : 0
  }
  changes[key(`${name}_sum`, { listener, role })] = observed * count
  changes[key(`${name}_count`, { listener, role })] = count
  return changes
}

const N = Metrics.MetricName

describe("Metrics.layer", () => {
  it.effect("registers every contract metric with its type, plus default process metrics", () =>
    withMetrics((m) =>
      Effect.gen(function* () {
        const text = yield* m.metricsText
        const types = new Map<string, string>()
        for (const [, name, type] of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) types.set(name!, type!)
        const expected: Record<Metrics.MetricName, string> = {
          sleeve_tls_handshakes_total: "counter",
          sleeve_tls_handshake_failures_total: "counter",
          sleeve_tls_dn_rejections_total: "counter",
          sleeve_tls_handshake_duration_seconds: "histogram",
          sleeve_connections_active: "gauge",
          sleeve_connections_total: "counter",
          sleeve_connections_refused_total: "counter",
          sleeve_bytes_total: "counter",
          sleeve_starttls_upgrades_total: "counter",
          sleeve_starttls_discarded_bytes_total: "counter",
          sleeve_certificate_not_after_timestamp_seconds: "gauge",
          sleeve_peer_certificate_not_after_min_timestamp_seconds: "gauge",
          sleeve_config_reloads_total: "counter",
          sleeve_config_last_reload_success_timestamp_seconds: "gauge",
          sleeve_config_last_reload_successful: "gauge",
          sleeve_ready: "gauge",
          sleeve_tls_crl_next_update_timestamp_seconds: "gauge",
          sleeve_proxy_protocol_headers_total: "counter",
          sleeve_proxy_protocol_refused_total: "counter",
          sleeve_accept_errors_total: "counter"
        }
        for (const [name, type] of Object.entries(expected)) assert.strictEqual(types.get(name), type, name)
        assert.deepStrictEqual(
          [...types.keys()].filter((n) => n.startsWith("sleeve_")).sort(),
          Object.keys(expected).sort()
        )
        // prom-client's default metrics, unprefixed
        assert.strictEqual(types.get("process_cpu_user_seconds_total"), "counter")
        assert.strictEqual(types.get("nodejs_heap_size_total_bytes"), "gauge")
        // ... minus the gauges named like counters; their per-type breakdowns stay.
        for (const name of Metrics.droppedDefaultMetrics) {
          assert.isFalse(types.has(name), name)
          assert.strictEqual(types.get(name.replace(/_total$/, "")), "gauge", name)
        }
        assert.match(m.contentType, /^text\/plain; version=0\.0\.4/)
      })
    )
  )

  it.effect("a fresh registry holds only the process-wide series, at zero", () =>
    withMetrics((m) =>
      Effect.gen(function* () {
        assert.deepStrictEqual(
          Object.fromEntries(yield* snapshot(m)),
          Object.fromEntries([
            [key(N.configReloadsTotal, { result: "ok" }), 0],
            [key(N.configReloadsTotal, { result: "failed" }), 0],
            [N.configLastReloadSuccessTimestampSeconds, 0],
            [N.configLastReloadSuccessful, 0],
            [N.ready, 0]
          ])
        )
      })
    )
  )

  it.effect("registerListener pre-creates exactly the zero series of a listener, once", () =>
    withMetrics((m) =>
      Effect.gen(function* () {
        const created = yield* changesOf(m, () =>
          m.registerListener("pg", ["server", "client"], { starttls: "postgres" })
        )
        const expected: Record<string, number> = {}
        const zero = (name: string, labels: Record<string, string>) => {
          expected[key(name, labels)] = 0
        }
        for (const role of Metrics.roles) {
          for (const result of Metrics.handshakeResults) zero(N.handshakesTotal, { listener: "pg", role, result })
          for (const reason of Metrics.failureReasons) zero(N.handshakeFailuresTotal, { listener: "pg", role, reason })
          zero(N.dnRejectionsTotal, { listener: "pg", role })
          Object.assign(expected, histogram("pg", role, 0, 0))
        }
        zero(N.connectionsActive, { listener: "pg" })
        zero(N.connectionsTotal, { listener: "pg" })
        for (const reason of Metrics.refusedReasons) zero(N.connectionsRefusedTotal, { listener: "pg", reason })
        for (const reason of Metrics.acceptErrorReasons) zero(N.acceptErrorsTotal, { listener: "pg", reason })
        for (const direction of Metrics.directions) zero(N.bytesTotal, { listener: "pg", direction })
        for (const result of Metrics.starttlsResults) {
          zero(N.starttlsUpgradesTotal, { listener: "pg", protocol: "postgres", result })
        }
        zero(N.starttlsDiscardedBytesTotal, { listener: "pg", protocol: "postgres" })
        assert.deepStrictEqual(created, expected)
        assert.strictEqual(Object.keys(created).length, 2 * (4 + 13 + 1 + 16) + 1 + 1 + 10 + 6 + 2 + 3 + 1)

        // Registering again (a reload) keeps the values recorded so far.
        m.handshake("pg", "server", "ok", 0.02)
        m.connectionOpened("pg")
        m.bytes("pg", "client_to_target", 10)
        const again = yield* changesOf(m, () =>
          m.registerListener("pg", ["server", "client"], { starttls: "postgres" })
        )
        assert.deepStrictEqual(again, {})
        const after = yield* snapshot(m)
        assert.strictEqual(after.get(key(N.handshakesTotal, { listener: "pg", role: "server", result: "ok" })), 1)
        assert.strictEqual(after.get(key(`${N.handshakeDurationSeconds}_count`, { listener: "pg", role: "server" })), 1)
        assert.strictEqual(after.get(key(N.connectionsActive, { listener: "pg" })), 1)
      })
    )
  )

  it.effect("PROXY protocol series: pre-created per what the listener does, counted by bounded labels", () =>
    withMetrics((m) =>
      Effect.gen(function* () {
        const sends = yield* changesOf(m, () =>
          m.registerListener("app", ["server"], { proxyProtocol: { send: true, accept: false } })
        )
        assert.deepStrictEqual(
          Object.keys(sends)
            .filter((k) => k.startsWith("sleeve_proxy_protocol_"))
            .sort(),
          [
            key(N.proxyProtocolHeadersTotal, { listener: "app", direction: "sent", version: "v1" }),
            key(N.proxyProtocolHeadersTotal, { listener: "app", direction: "sent", version: "v2" })
          ].sort()
        )
        const accepts = yield* changesOf(m, () =>
          m.registerListener("lb", ["server"], { proxyProtocol: { send: false, accept: true } })
        )
        assert.strictEqual(
          Object.keys(accepts).filter((k) => k.startsWith("sleeve_proxy_protocol_")).length,
          2 + Metrics.proxyProtocolRefusedReasons.length
        )
        const plain = yield* changesOf(m, () => m.registerListener("plain", ["server"]))
        assert.isFalse(Object.keys(plain).some((k) => k.startsWith("sleeve_proxy_protocol_")))
        m.proxyProtocolHeader("app", "sent", "v2")
        m.proxyProtocolRefused("lb", "untrusted_source")
        const after = yield* snapshot(m)
        assert.strictEqual(
          after.get(key(N.proxyProtocolHeadersTotal, { listener: "app", direction: "sent", version: "v2" })),
          1
        )
        assert.strictEqual(
          after.get(key(N.proxyProtocolRefusedTotal, { listener: "lb", reason: "untrusted_source" })),
          1
        )
        assert.throws(() => m.proxyProtocolRefused("lb", "because" as never), TypeError)
        assert.throws(() => m.proxyProtocolHeader("lb", "sent", "v3" as never), TypeError)
      })
    )
  )

  it.effect("a listener without STARTTLS gets no STARTTLS series", () =>
    withMetrics((m) =>
      Effect.gen(function* () {
        const created = yield* changesOf(m, () => m.registerListener("web", ["server"]))
        assert.isFalse(Object.keys(created).some((k) => k.startsWith("sleeve_starttls_")))
        assert.isFalse(Object.keys(created).some((k) => k.includes('role="client"')))
      })
    )
  )

  it.effect("handshake ok counts the result and observes the duration", () =>
    withMetrics((m) =>
      Effect.gen(function* () {
        const changes = yield* changesOf(m, () => m.handshake("pg", "server", "ok", 0.02))
        assert.deepStrictEqual(changes, {
          [key(N.handshakesTotal, { listener: "pg", role: "server", result: "ok" })]: 1,
          ...histogram("pg", "server", 0.02, 1)
        })
        // 0.02 s lands in le=0.025 and above, not in le=0.01.
        const after = yield* snapshot(m)
        const bucket = (le: string) =>
          after.get(key(`${N.handshakeDurationSeconds}_bucket`, { le, listener: "pg", role: "server" }))
        assert.strictEqual(bucket("0.01"), 0)
        assert.strictEqual(bucket("0.025"), 1)
        assert.strictEqual(bucket("+Inf"), 1)
      })
    )
  )

  it.effect("handshake without ok result or duration moves only the counter", () =>
    withMetrics((m) =>
      Effect.gen(function* () {
        for (const result of ["failed", "timeout", "rejected"] as const) {
          const changes = yield* changesOf(m, () => m.handshake("pg", "client", result, 3))
          assert.deepStrictEqual(changes, { [key(N.handshakesTotal, { listener: "pg", role: "client", result })]: 1 })
        }
        const ok = yield* changesOf(m, () => m.handshake("pg", "client", "ok"))
        assert.deepStrictEqual(ok, { [key(N.handshakesTotal, { listener: "pg", role: "client", result: "ok" })]: 1 })
      })
    )
  )

  it.effect("handshakeFailure and dnRejected each move only their own counter", () =>
    withMetrics((m) =>
      Effect.gen(function* () {
        for (const reason of Metrics.failureReasons) {
          const changes = yield* changesOf(m, () => m.handshakeFailure("pg", "server", reason))
          assert.deepStrictEqual(changes, {
            [key(N.handshakeFailuresTotal, { listener: "pg", role: "server", reason })]: 1
          })
        }
        const dn = yield* changesOf(m, () => m.dnRejected("mirror", "client"))
        assert.deepStrictEqual(dn, { [key(N.dnRejectionsTotal, { listener: "mirror", role: "client" })]: 1 })
      })
    )
  )

  it.effect("handshakeFailed records a whole failure: result, reason and DN rejection", () =>
    withMetrics((m) =>
      Effect.gen(function* () {
        for (const reason of Metrics.failureReasons) {
          const changes = yield* changesOf(m, () => m.handshakeFailed("mirror", "server", reason))
          const result = reason === "timeout" ? "timeout" : reason === "dn_rejected" ? "rejected" : "failed"
          assert.strictEqual(Metrics.resultForReason(reason), result)
          assert.deepStrictEqual(changes, {
            [key(N.handshakesTotal, { listener: "mirror", role: "server", result })]: 1,
            [key(N.handshakeFailuresTotal, { listener: "mirror", role: "server", reason })]: 1,
            ...(reason === "dn_rejected"
              ? { [key(N.dnRejectionsTotal, { listener: "mirror", role: "server" })]: 1 }
              : {})
          })
        }
      })
    )
  )

  it.effect("connections: opened, closed and refused", () =>
    withMetrics((m) =>
      Effect.gen(function* () {
        const opened = yield* changesOf(m, () => {
          m.connectionOpened("pg")
          m.connectionOpened("pg")
        })
        assert.deepStrictEqual(opened, {
          [key(N.connectionsTotal, { listener: "pg" })]: 2,
          [key(N.connectionsActive, { listener: "pg" })]: 2
        })
        const closed = yield* changesOf(m, () => m.connectionClosed("pg"))
        assert.deepStrictEqual(closed, { [key(N.connectionsActive, { listener: "pg" })]: -1 })
        assert.strictEqual((yield* snapshot(m)).get(key(N.connectionsActive, { listener: "pg" })), 1)
        for (const reason of Metrics.refusedReasons) {
          const refused = yield* changesOf(m, () => m.connectionRefused("pg", reason))
          assert.deepStrictEqual(refused, { [key(N.connectionsRefusedTotal, { listener: "pg", reason })]: 1 })
        }
      })
    )
  )

  it.effect("accept errors: counted by bounded reason, not as connections; errno codes map to reasons", () =>
    withMetrics((m) =>
      Effect.gen(function* () {
        for (const reason of Metrics.acceptErrorReasons) {
          const changes = yield* changesOf(m, () => m.acceptError("pg", reason))
          assert.deepStrictEqual(changes, { [key(N.acceptErrorsTotal, { listener: "pg", reason })]: 1 })
        }
        assert.throws(() => m.acceptError("pg", "EMFILE" as never), TypeError)
        assert.throws(() => m.acceptError("", "emfile"), TypeError)
        assert.strictEqual(Metrics.acceptErrorReason("EMFILE"), "emfile")
        assert.strictEqual(Metrics.acceptErrorReason("ENFILE"), "enfile")
        assert.strictEqual(Metrics.acceptErrorReason("ENOBUFS"), "enobufs")
        assert.strictEqual(Metrics.acceptErrorReason("ENOMEM"), "enomem")
        assert.strictEqual(Metrics.acceptErrorReason("EPROTO"), "other")
        // Only Sleeve's own reserve check is fd_limit, never an error code that spells it.
        assert.strictEqual(Metrics.acceptErrorReason("FD_LIMIT"), "other")
        assert.strictEqual(Metrics.acceptErrorReason(undefined), "other")
      })
    )
  )

  it.effect("bytes adds exactly n in its direction and rejects bad counts without recording", () =>
    withMetrics((m) =>
      Effect.gen(function* () {
        const changes = yield* changesOf(m, () => {
          m.bytes("pg", "client_to_target", 1000)
          m.bytes("pg", "client_to_target", 24)
          m.bytes("pg", "target_to_client", 65536)
          m.bytes("pg", "target_to_client", 0)
        })
        assert.deepStrictEqual(changes, {
          [key(N.bytesTotal, { listener: "pg", direction: "client_to_target" })]: 1024,
          [key(N.bytesTotal, { listener: "pg", direction: "target_to_client" })]: 65536
        })
        for (const bad of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
          const none = yield* changesOf(m, () =>
            assert.throws(() => m.bytes("pg", "client_to_target", bad), TypeError, /invalid byte count/)
          )
          assert.deepStrictEqual(none, {})
        }
      })
    )
  )

  it.effect("STARTTLS upgrades and discarded bytes", () =>
    withMetrics((m) =>
      Effect.gen(function* () {
        for (const result of Metrics.starttlsResults) {
          const changes = yield* changesOf(m, () => m.starttlsUpgrade("mail", "smtp", result))
          assert.deepStrictEqual(changes, {
            [key(N.starttlsUpgradesTotal, { listener: "mail", protocol: "smtp", result })]: 1
          })
        }
        const discarded = yield* changesOf(m, () => m.starttlsDiscarded("mail", "smtp", 17))
        assert.deepStrictEqual(discarded, {
          [key(N.starttlsDiscardedBytesTotal, { listener: "mail", protocol: "smtp" })]: 17
        })
      })
    )
  )

  it.effect("replaceCrls keeps the soonest nextUpdate per TLS config and swaps the set (issue 13 §2)", () =>
    withMetrics((m) =>
      Effect.gen(function* () {
        const at = (iso: string) => new Date(iso)
        const secs = (iso: string) => Date.parse(iso) / 1000
        const series = (s: Map<string, number>) =>
          Object.fromEntries([...s].filter(([k]) => k.startsWith(N.crlNextUpdateTimestampSeconds)))
        assert.deepStrictEqual(series(yield* snapshot(m)), {})
        m.replaceCrls([
          { tlsConfig: "mirror", nextUpdate: at("2027-01-08T00:00:00Z") },
          { tlsConfig: "mirror", nextUpdate: at("2027-01-02T00:00:00Z") },
          { tlsConfig: "web", nextUpdate: at("2027-02-01T00:00:00Z") }
        ])
        const first = series(yield* snapshot(m))
        assert.deepStrictEqual(first, {
          [key(N.crlNextUpdateTimestampSeconds, { tls_config: "mirror" })]: secs("2027-01-02T00:00:00Z"),
          [key(N.crlNextUpdateTimestampSeconds, { tls_config: "web" })]: secs("2027-02-01T00:00:00Z")
        })
        assert.throws(
          () => m.replaceCrls([{ tlsConfig: "x", nextUpdate: new Date(Number.NaN) }]),
          TypeError,
          /invalid CRL nextUpdate/
        )
        assert.deepStrictEqual(series(yield* snapshot(m)), first)
        m.replaceCrls([{ tlsConfig: "mirror", nextUpdate: at("2027-01-09T00:00:00Z") }])
        assert.deepStrictEqual(series(yield* snapshot(m)), {
          [key(N.crlNextUpdateTimestampSeconds, { tls_config: "mirror" })]: secs("2027-01-09T00:00:00Z")
        })
      })
    )
  )

  it.effect("certificateNotAfter keeps the soonest per TLS config and kind; replaceCertificates swaps the set", () =>
    withMetrics((m) =>
      Effect.gen(function* () {
        const at = (iso: string) => new Date(iso)
        const secs = (iso: string) => Date.parse(iso) / 1000
        m.certificateNotAfter("mirror", "ca", at("2031-01-01T00:00:00Z"))
        m.certificateNotAfter("mirror", "ca", at("2029-06-01T00:00:00Z"))
        m.certificateNotAfter("mirror", "ca", at("2030-01-01T00:00:00Z"))
        m.certificateNotAfter("mirror", "own", at("2027-03-01T12:00:00Z"))
        m.certificateNotAfter("web", "own", at("2028-01-01T00:00:00Z"))
        const series = (s: Map<string, number>) =>
          Object.fromEntries([...s].filter(([k]) => k.startsWith(N.certificateNotAfterTimestampSeconds)))
        assert.deepStrictEqual(series(yield* snapshot(m)), {
          [key(N.certificateNotAfterTimestampSeconds, { kind: "ca", tls_config: "mirror" })]:
            secs("2029-06-01T00:00:00Z"),
          [key(N.certificateNotAfterTimestampSeconds, { kind: "own", tls_config: "mirror" })]:
            secs("2027-03-01T12:00:00Z"),
          [key(N.certificateNotAfterTimestampSeconds, { kind: "own", tls_config: "web" })]: secs("2028-01-01T00:00:00Z")
        })

        // A reload: "web" is gone, mirror's CA renewed to a later date than the old minimum.
        m.replaceCertificates([
          { tlsConfig: "mirror", kind: "ca", notAfter: at("2035-01-01T00:00:00Z") },
          { tlsConfig: "mirror", kind: "own", notAfter: at("2027-03-01T12:00:00Z") }
        ])
        const replaced = series(yield* snapshot(m))
        assert.deepStrictEqual(replaced, {
          [key(N.certificateNotAfterTimestampSeconds, { kind: "ca", tls_config: "mirror" })]:
            secs("2035-01-01T00:00:00Z"),
          [key(N.certificateNotAfterTimestampSeconds, { kind: "own", tls_config: "mirror" })]:
            secs("2027-03-01T12:00:00Z")
        })

        // A bad entry leaves the current set untouched.
        assert.throws(
          () =>
            m.replaceCertificates([
              { tlsConfig: "x", kind: "own", notAfter: at("2040-01-01T00:00:00Z") },
              { tlsConfig: "y", kind: "own", notAfter: new Date(Number.NaN) }
            ]),
          TypeError,
          /invalid certificate notAfter/
        )
        assert.deepStrictEqual(series(yield* snapshot(m)), replaced)

        m.replaceCertificates([])
        assert.deepStrictEqual(series(yield* snapshot(m)), {})
      })
    )
  )

  it.effect("peerCertificateNotAfter is the soonest peer certificate of the last hour", () =>
    withMetrics((m) =>
      Effect.gen(function* () {
        const peer = (s: Map<string, number>) =>
          s.get(key(N.peerCertificateNotAfterMinTimestampSeconds, { listener: "mirror" }))
        assert.isUndefined(peer(yield* snapshot(m)), "absent before any peer was seen")
        const soon = new Date("2027-01-01T00:00:00Z")
        const later = new Date("2028-01-01T00:00:00Z")
        m.peerCertificateNotAfter("mirror", later)
        m.peerCertificateNotAfter("mirror", soon)
        assert.strictEqual(peer(yield* snapshot(m)), soon.getTime() / 1000)
        yield* TestClock.adjust("30 minutes")
        m.peerCertificateNotAfter("mirror", later)
        yield* TestClock.adjust("30 minutes")
        assert.strictEqual(peer(yield* snapshot(m)), soon.getTime() / 1000, "still within the hour")
        yield* TestClock.adjust("1 minute")
        assert.strictEqual(peer(yield* snapshot(m)), later.getTime() / 1000, "the first observations aged out")
        yield* TestClock.adjust("31 minutes")
        assert.isUndefined(peer(yield* snapshot(m)), "absent again when no peer was seen for an hour")
      })
    )
  )

  it.effect("configLoaded and configReload: counter, success timestamp and last result", () =>
    withMetrics((m) =>
      Effect.gen(function* () {
        yield* TestClock.adjust("1000 seconds")
        const loaded = yield* changesOf(m, () => m.configLoaded())
        assert.deepStrictEqual(loaded, {
          [N.configLastReloadSuccessTimestampSeconds]: 1000,
          [N.configLastReloadSuccessful]: 1
        })
        yield* TestClock.adjust("500 seconds")
        const failed = yield* changesOf(m, () => m.configReload("failed"))
        assert.deepStrictEqual(failed, {
          [key(N.configReloadsTotal, { result: "failed" })]: 1,
          [N.configLastReloadSuccessful]: -1
        })
        yield* TestClock.adjust("500 seconds")
        const ok = yield* changesOf(m, () => m.configReload("ok"))
        assert.deepStrictEqual(ok, {
          [key(N.configReloadsTotal, { result: "ok" })]: 1,
          [N.configLastReloadSuccessTimestampSeconds]: 1000,
          [N.configLastReloadSuccessful]: 1
        })
        assert.strictEqual((yield* snapshot(m)).get(N.configLastReloadSuccessTimestampSeconds), 2000)
      })
    )
  )

  it.effect("setReady sets sleeve_ready to 1 or 0", () =>
    withMetrics((m) =>
      Effect.gen(function* () {
        assert.deepStrictEqual(yield* changesOf(m, () => m.setReady(true)), { [N.ready]: 1 })
        assert.deepStrictEqual(yield* changesOf(m, () => m.setReady(true)), {})
        assert.deepStrictEqual(yield* changesOf(m, () => m.setReady(false)), { [N.ready]: -1 })
      })
    )
  )

  it.effect("values outside a bounded label set throw a clear TypeError and record nothing", () =>
    withMetrics((m) =>
      Effect.gen(function* () {
        const bad = (f: () => void, message: RegExp) =>
          Effect.gen(function* () {
            const changes = yield* changesOf(m, () => assert.throws(f, TypeError, message))
            assert.deepStrictEqual(changes, {})
          })
        yield* bad(
          () => m.handshake("pg", "peer" as never, "ok"),
          /invalid role "peer" \(expected one of server, client\)/
        )
        yield* bad(() => m.handshake("pg", "server", "success" as never), /invalid handshake result "success"/)
        yield* bad(() => m.handshake("pg", "server", "ok", -1), /invalid handshake duration -1/)
        yield* bad(() => m.handshakeFailure("pg", "server", "CN=evil" as never), /invalid failure reason "CN=evil"/)
        yield* bad(() => m.handshakeFailed("pg", "server", "10.0.0.1" as never), /invalid failure reason/)
        yield* bad(() => m.connectionRefused("pg", "busy" as never), /invalid refused reason "busy"/)
        yield* bad(() => m.bytes("pg", "in" as never, 1), /invalid direction "in"/)
        yield* bad(() => m.bytes("", "client_to_target", 1), /invalid listener name ""/)
        yield* bad(() => m.starttlsUpgrade("mail", "smtp", "maybe" as never), /invalid STARTTLS result "maybe"/)
        yield* bad(() => m.certificateNotAfter("c", "leaf" as never, new Date()), /invalid certificate kind "leaf"/)
        yield* bad(() => m.peerCertificateNotAfter("pg", "2030" as never), /invalid peer certificate notAfter/)
        yield* bad(() => m.configReload("partial" as never), /invalid reload result "partial"/)
        yield* bad(() => m.setReady(1 as never), /invalid readiness 1/)
        yield* bad(() => m.registerListener("pg", ["server", "both" as never]), /invalid role "both"/)
        yield* bad(() => m.registerListener("pg", ["server"], { starttls: "" }), /invalid STARTTLS protocol ""/)
      })
    )
  )

  it.effect("series can be read back through registry.getSingleMetricAsString", () =>
    withMetrics((m) =>
      Effect.gen(function* () {
        m.connectionRefused("pg", "max_connections")
        m.connectionRefused("pg", "max_connections")
        const text = yield* Effect.promise(() => m.registry.getSingleMetricAsString(N.connectionsRefusedTotal))
        assert.include(text, 'sleeve_connections_refused_total{listener="pg",reason="max_connections"} 2')
      })
    )
  )

  it.effect("two layer builds have independent registries, and prom-client's global registry stays empty", () =>
    Effect.gen(function* () {
      const a = yield* Effect.provide(service, Metrics.Metrics.layer)
      const b = yield* Effect.provide(service, Layer.fresh(Metrics.Metrics.layer))
      assert.notStrictEqual(a.registry, b.registry)
      const bBefore = yield* snapshot(b)
      const aChanges = yield* changesOf(a, () => {
        a.connectionOpened("pg")
        a.handshake("pg", "server", "ok", 0.1)
      })
      assert.strictEqual(aChanges[key(N.connectionsTotal, { listener: "pg" })], 1)
      assert.deepStrictEqual(diff(bBefore, yield* snapshot(b)), {})
      assert.isUndefined(Prom.register.getSingleMetric(N.connectionsTotal))
      assert.isUndefined(Prom.register.getSingleMetric("process_cpu_user_seconds_total"))
    })
  )
})

describe("Metrics.layerNoop", () => {
  it.effect("has the same interface and records nothing", () =>
    Effect.gen(function* () {
      const m = yield* service
      m.registerListener("pg", ["server", "client"], { starttls: "postgres" })
      m.handshake("pg", "server", "ok", 0.02)
      m.handshakeFailure("pg", "server", "expired")
      m.handshakeFailed("pg", "server", "dn_rejected")
      m.dnRejected("pg", "server")
      m.connectionOpened("pg")
      m.connectionClosed("pg")
      m.connectionRefused("pg", "draining")
      m.bytes("pg", "client_to_target", 100)
      m.starttlsUpgrade("pg", "postgres", "ok")
      m.starttlsDiscarded("pg", "postgres", 3)
      m.certificateNotAfter("pg", "own", new Date())
      m.replaceCertificates([{ tlsConfig: "pg", kind: "ca", notAfter: new Date() }])
      m.peerCertificateNotAfter("pg", new Date())
      m.configLoaded()
      m.configReload("ok")
      m.setReady(true)
      m.replaceCrls([{ tlsConfig: "pg", nextUpdate: new Date() }])
      m.acceptError("pg", "fd_limit")
      assert.strictEqual(yield* m.metricsText, "")
      assert.deepStrictEqual(m.registry.getMetricsAsArray(), [])
      assert.strictEqual((yield* Effect.promise(() => m.registry.metrics())).trim(), "")
      assert.isString(m.contentType)
    }).pipe(Effect.provide(Metrics.Metrics.layerNoop))
  )

  it("offers every method of the real recorder", () => {
    const real = Metrics.make({ defaultMetrics: false })
    assert.deepStrictEqual(Object.keys(Metrics.makeNoop()).sort(), Object.keys(real).sort())
  })
})

describe("classifyTlsError (table)", () => {
  const cases: ReadonlyArray<readonly [string, Metrics.FailureReason]> = [
    ["UNABLE_TO_VERIFY_LEAF_SIGNATURE", "unknown_ca"],
    ["SELF_SIGNED_CERT_IN_CHAIN", "unknown_ca"],
    ["UNABLE_TO_GET_ISSUER_CERT_LOCALLY", "unknown_ca"],
    ["DEPTH_ZERO_SELF_SIGNED_CERT", "unknown_ca"],
    ["CERT_HAS_EXPIRED", "expired"],
    ["CERT_NOT_YET_VALID", "not_yet_valid"],
    ["INVALID_PURPOSE", "dual_use"],
    ["CERT_REVOKED", "revoked"],
    ["ERR_SSL_SSL/TLS_ALERT_CERTIFICATE_REVOKED", "revoked"],
    ["UNABLE_TO_GET_CRL", "crl_unavailable"],
    ["CRL_HAS_EXPIRED", "crl_unavailable"],
    ["CRL_SIGNATURE_FAILURE", "crl_unavailable"],
    ["ERR_TLS_CERT_ALTNAME_INVALID", "bad_certificate"],
    ["ERR_TLS_HANDSHAKE_TIMEOUT", "timeout"],
    ["ERR_SSL_TLSV1_ALERT_UNKNOWN_CA", "unknown_ca"],
    // OpenSSL 1.1 spelling (Node <= 16) and OpenSSL 3 spelling of the same alerts
    ["ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE", "bad_certificate"],
    ["ERR_SSL_SSL/TLS_ALERT_BAD_CERTIFICATE", "bad_certificate"],
    ["ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED", "expired"],
    ["ERR_SSL_SSL/TLS_ALERT_CERTIFICATE_EXPIRED", "expired"],
    ["ERR_SSL_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "dual_use"],
    ["ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE", "no_shared_cipher"],
    ["ERR_SSL_SSL/TLS_ALERT_HANDSHAKE_FAILURE", "no_shared_cipher"],
    ["ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED", "no_certificate"],
    ["ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE", "no_certificate"],
    ["ERR_SSL_UNSUPPORTED_PROTOCOL", "protocol_version"],
    ["ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION", "protocol_version"],
    ["ERR_SSL_WRONG_VERSION_NUMBER", "protocol_version"],
    ["ERR_SSL_NO_SHARED_CIPHER", "no_shared_cipher"],
    ["ERR_SSL_TLSV1_ALERT_DECODE_ERROR", "other"],
    ["ERR_SSL_UNEXPECTED_MESSAGE", "other"],
    ["ECONNRESET", "other"],
    ["", "other"]
  ]
  for (const [code, reason] of cases) {
    it(`${code || "(empty)"} -> ${reason}`, () => {
      assert.strictEqual(Metrics.classifyTlsErrorCode(code), reason)
      assert.strictEqual(Metrics.classifyTlsError(Object.assign(new Error("x"), { code })), reason)
    })
  }

  it("falls back to OpenSSL's reason text, then to the cause chain", () => {
    assert.strictEqual(Metrics.classifyTlsError({ reason: "tlsv1 alert unknown ca" }), "unknown_ca")
    assert.strictEqual(
      Metrics.classifyTlsError({ code: "ERR_SOMETHING", reason: "no shared cipher" }),
      "no_shared_cipher"
    )
    const wrapped = new Error("socket failed", {
      cause: new Error("outer", { cause: Object.assign(new Error("inner"), { code: "CERT_HAS_EXPIRED" }) })
    })
    assert.strictEqual(Metrics.classifyTlsError(wrapped), "expired")
    const timeout = new Error("timed out")
    timeout.name = "TimeoutError"
    assert.strictEqual(Metrics.classifyTlsError(timeout), "timeout")
    assert.strictEqual(Metrics.classifyTlsError(new Error("boom")), "other")
  })

  it("follows at most five levels of cause (a cycle cannot hang it)", () => {
    const cyclic: { code: string; cause?: unknown } = { code: "X" }
    cyclic.cause = cyclic
    assert.strictEqual(Metrics.classifyTlsError(cyclic), "other")
    let deep: object = { code: "CERT_HAS_EXPIRED" }
    for (let i = 0; i < 5; i++) deep = { cause: deep }
    assert.strictEqual(Metrics.classifyTlsError(deep), "other")
  })

  it("never answers dn_rejected", () => {
    for (const code of ["dn_rejected", "DN_REJECTED", "ERR_SSL_TLSV1_ALERT_ACCESS_DENIED"]) {
      assert.notStrictEqual(Metrics.classifyTlsErrorCode(code), "dn_rejected")
    }
  })
})
