/**
 * Sleeve's Prometheus metrics: prom-client 15 behind an Effect service.
 *
 * `Metrics.layer` builds a fresh prom-client `Registry` per layer build (never prom-client's
 * global default registry), registers every `sleeve_*` metric on it plus prom-client's default
 * process metrics, and hands out a recorder whose methods are plain synchronous functions: they
 * are called from the bytes path and from Node socket callbacks, outside any fiber, so they must
 * not allocate an Effect per call. `Metrics.layerNoop` has the same interface and records
 * nothing, for library users who do not want metrics. Nothing here is a module singleton: two
 * layer builds give two independent registries, which is what lets tests run side by side.
 *
 * Label values are a public contract and must stay bounded: the closed sets (role, result,
 * reason, direction, ...) are TypeScript literal unions and are checked again at run time (a
 * value outside its set is a bug in the caller and throws a `TypeError`); the open labels
 * (`listener`, `tls_config`, `protocol`) are names taken from the configuration file. Nothing
 * here ever takes a DN, an IP address or a port.
 *
 * `classifyTlsError` maps the errors Node 24 / OpenSSL 3 raise during a handshake to the bounded
 * `FailureReason` set. Its table was built by provoking each failure with real `tls` sockets
 * and `openssl s_client`/`s_server` peers (see test/Metrics.tls.integration.test.ts).
 *
 * Deliberately not here: the HTTP endpoint that serves `metricsText` (apps/sidecar), deciding
 * what a handshake failure was caused by beyond the error Node reports (the proxy knows about
 * timeouts and DN rejections; this module only counts them), and Effect's own `Metric` API.
 */
import { Clock, Context, Effect, Layer } from "effect"
import * as Prom from "prom-client"

// ---------------------------------------------------------------------------------------------
// Metric names (public contract; docs/metrics.md has the table)
// ---------------------------------------------------------------------------------------------

/**
 * Every metric name this module registers, besides prom-client's default process metrics (all
 * of them but `droppedDefaultMetrics`).
 */
export const MetricName = {
  handshakesTotal: "sleeve_tls_handshakes_total",
  handshakeFailuresTotal: "sleeve_tls_handshake_failures_total",
  dnRejectionsTotal: "sleeve_tls_dn_rejections_total",
  handshakeDurationSeconds: "sleeve_tls_handshake_duration_seconds",
  connectionsActive: "sleeve_connections_active",
  connectionsTotal: "sleeve_connections_total",
  connectionsRefusedTotal: "sleeve_connections_refused_total",
  bytesTotal: "sleeve_bytes_total",
  starttlsUpgradesTotal: "sleeve_starttls_upgrades_total",
  starttlsDiscardedBytesTotal: "sleeve_starttls_discarded_bytes_total",
  certificateNotAfterTimestampSeconds: "sleeve_certificate_not_after_timestamp_seconds",
  peerCertificateNotAfterMinTimestampSeconds: "sleeve_peer_certificate_not_after_min_timestamp_seconds",
  configReloadsTotal: "sleeve_config_reloads_total",
  configLastReloadSuccessTimestampSeconds: "sleeve_config_last_reload_success_timestamp_seconds",
  configLastReloadSuccessful: "sleeve_config_last_reload_successful",
  ready: "sleeve_ready",
  // revocation (issue 13 §2)
  crlNextUpdateTimestampSeconds: "sleeve_tls_crl_next_update_timestamp_seconds",
  proxyProtocolHeadersTotal: "sleeve_proxy_protocol_headers_total",
  proxyProtocolRefusedTotal: "sleeve_proxy_protocol_refused_total",
  acceptErrorsTotal: "sleeve_accept_errors_total"
} as const

/** One of the `sleeve_*` metric names. */
export type MetricName = (typeof MetricName)[keyof typeof MetricName]

/**
 * prom-client default metrics that are not registered: gauges whose names end in `_total`,
 * which Prometheus reserves for counters (`promtool check metrics` rejects them). Each is the
 * sum of a per-`type` gauge that is kept: `nodejs_active_handles_total` is
 * `sum(nodejs_active_handles)`, and so on.
 */
export const droppedDefaultMetrics: ReadonlyArray<string> = [
  "nodejs_active_handles_total",
  "nodejs_active_requests_total",
  "nodejs_active_resources_total"
]

/** Upper bounds (seconds) of the handshake duration histogram buckets. */
export const handshakeDurationBuckets: ReadonlyArray<number> = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10
]

/**
 * How long an observed peer certificate counts towards
 * `sleeve_peer_certificate_not_after_min_timestamp_seconds`: one hour. Observations are kept in
 * one-minute slots, so one counts for at least the window and at most one minute longer.
 */
export const peerCertificateWindowMillis = 60 * 60 * 1000

// ---------------------------------------------------------------------------------------------
// Bounded label values
// ---------------------------------------------------------------------------------------------

/** `role`: which side of the TLS handshake Sleeve was on. */
export const roles = ["server", "client"] as const
/** `role` label value. */
export type Role = (typeof roles)[number]

/** `result` of `sleeve_tls_handshakes_total`. */
export const handshakeResults = ["ok", "failed", "timeout", "rejected"] as const
/** `result` label value of a handshake. */
export type HandshakeResult = (typeof handshakeResults)[number]

/** `reason` of `sleeve_tls_handshake_failures_total`. */
export const failureReasons = [
  "unknown_ca",
  "bad_certificate",
  "expired",
  "not_yet_valid",
  "protocol_version",
  "no_shared_cipher",
  "no_certificate",
  "dual_use",
  "dn_rejected",
  "timeout",
  // revocation (issue 13 §2): a certificate of the peer's chain is listed in a CRL; no usable CRL
  // covers a certificate of the chain (missing, past nextUpdate, not yet valid, bad signature)
  "revoked",
  "crl_unavailable",
  "other"
] as const
/** `reason` label value of a handshake failure. */
export type FailureReason = (typeof failureReasons)[number]

/** `reason` of `sleeve_connections_refused_total`. */
export const refusedReasons = [
  "max_connections",
  "target_unreachable",
  "target_timeout",
  "draining",
  "cleartext_limit",
  "starttls_required",
  "protocol_error",
  "proxy_protocol",
  // The process had no file descriptor left to connect to the target (EMFILE/ENFILE).
  "fd_limit",
  "other"
] as const
/** `reason` label value of a refused connection. */
export type RefusedReason = (typeof refusedReasons)[number]

/**
 * `direction` of `sleeve_bytes_total`: `client_to_target` counts bytes Sleeve read from the
 * connecting client and forwarded to the target, `target_to_client` the way back.
 */
export const directions = ["client_to_target", "target_to_client"] as const
/** `direction` label value. */
export type Direction = (typeof directions)[number]

/** `result` of `sleeve_starttls_upgrades_total`. */
export const starttlsResults = ["ok", "failed", "refused"] as const
/** `result` label value of a STARTTLS upgrade. */
export type StarttlsResult = (typeof starttlsResults)[number]

/** `direction` of `sleeve_proxy_protocol_headers_total`: accepted from a load balancer, or written to the target. */
export const proxyProtocolDirections = ["received", "sent"] as const
/** `direction` label value of a PROXY protocol header. */
export type ProxyProtocolDirection = (typeof proxyProtocolDirections)[number]

/** `version` of `sleeve_proxy_protocol_headers_total`. */
export const proxyProtocolVersions = ["v1", "v2"] as const
/** `version` label value of a PROXY protocol header. */
export type ProxyProtocolVersion = (typeof proxyProtocolVersions)[number]

/**
 * `reason` of `sleeve_proxy_protocol_refused_total`: `untrusted_source` (the connection does not
 * come from `acceptProxyProtocol.trustedSources`), `malformed` (not a valid header), `timeout`
 * (no whole header within `acceptProxyProtocol.timeout`), `closed` (the source hung up first).
 */
export const proxyProtocolRefusedReasons = ["untrusted_source", "malformed", "timeout", "closed"] as const
/** `reason` label value of a refused PROXY protocol header. */
export type ProxyProtocolRefusedReason = (typeof proxyProtocolRefusedReasons)[number]

/**
 * `reason` of `sleeve_accept_errors_total`: `fd_limit` (Sleeve closed a connection it had just
 * accepted because the process is within its descriptor reserve of its open-file limit), or the
 * error `accept()` reported (`emfile`, `enfile`, `enobufs`, `enomem`; anything else is `other`).
 */
export const acceptErrorReasons = ["fd_limit", "emfile", "enfile", "enobufs", "enomem", "other"] as const
/** `reason` label value of an accept error. */
export type AcceptErrorReason = (typeof acceptErrorReasons)[number]

/** The `sleeve_accept_errors_total` reason of an `accept()` error code (`EMFILE` → `emfile`). */
export const acceptErrorReason = (code: unknown): AcceptErrorReason => {
  const lower = typeof code === "string" ? code.toLowerCase() : ""
  return lower !== "fd_limit" && (acceptErrorReasons as ReadonlyArray<string>).includes(lower)
    ? (lower as AcceptErrorReason)
    : "other"
}

/** `kind` of `sleeve_certificate_not_after_timestamp_seconds`. */
export const certificateKinds = ["own", "ca"] as const
/**
 * `kind` label value: `own` is the chain Sleeve presents (leaf and intermediates), `ca` the CA
 * certificates it trusts to verify peers.
 */
export type CertificateKind = (typeof certificateKinds)[number]

/** `result` of `sleeve_config_reloads_total`. */
export const reloadResults = ["ok", "failed"] as const
/** `result` label value of a configuration reload. */
export type ReloadResult = (typeof reloadResults)[number]

/**
 * The handshake result implied by a failure reason: a timeout is `timeout`, a DN rejection is
 * `rejected` (the handshake completed but authorization refused the peer), the rest `failed`.
 */
export const resultForReason = (reason: FailureReason): HandshakeResult =>
  reason === "timeout" ? "timeout" : reason === "dn_rejected" ? "rejected" : "failed"

// ---------------------------------------------------------------------------------------------
// Service
// ---------------------------------------------------------------------------------------------

/** Expiry of one certificate of a named TLS configuration. */
export interface CertificateExpiry {
  readonly tlsConfig: string
  readonly kind: CertificateKind
  readonly notAfter: Date
}

/** Optional series to pre-create for a listener (see `Recorder.registerListener`). */
export interface ListenerOptions {
  /** The listener's STARTTLS protocol name from the configuration, if it upgrades in-band. */
  readonly starttls?: string | undefined
  /** Whether the listener sends (`proxyProtocol`) and/or accepts (`acceptProxyProtocol`) PROXY headers. */
  readonly proxyProtocol?: { readonly send: boolean; readonly accept: boolean } | undefined
}

/**
 * What the `Metrics` service offers. Every recording method is synchronous, returns nothing and
 * throws a `TypeError` only when called with a value outside its bounded set (a caller bug).
 */
export interface Recorder {
  /** The registry holding every series; empty for the no-op recorder. */
  readonly registry: Prom.Registry
  /** The `Content-Type` to serve `metricsText` with. */
  readonly contentType: string
  /** The Prometheus text exposition of the registry (collects default metrics each time). */
  readonly metricsText: Effect.Effect<string>
  /**
   * Pre-creates the zero series of a listener for each role it handshakes in (every handshake
   * result and failure reason, DN rejections, the duration histogram), its connection, refusal
   * and byte series, and with `options.starttls` its STARTTLS series, so `rate()` works from
   * the first scrape. Idempotent: existing values are kept (safe to call again on reload).
   */
  readonly registerListener: (listener: string, roles: ReadonlyArray<Role>, options?: ListenerOptions) => void
  /**
   * Counts one handshake with its result. `durationSeconds` is observed only for `ok`, so the
   * histogram describes successful handshakes (failures are counted by reason instead).
   */
  readonly handshake: (listener: string, role: Role, result: HandshakeResult, durationSeconds?: number) => void
  /** Counts one handshake failure by reason (only `sleeve_tls_handshake_failures_total`). */
  readonly handshakeFailure: (listener: string, role: Role, reason: FailureReason) => void
  /** Counts one DN authorization rejection (only `sleeve_tls_dn_rejections_total`). */
  readonly dnRejected: (listener: string, role: Role) => void
  /**
   * Records a failed handshake completely, in one call: `handshakes_total` with
   * `resultForReason(reason)`, `handshake_failures_total` with the reason and, for
   * `dn_rejected`, `dn_rejections_total`. Prefer it to calling the three primitives.
   */
  readonly handshakeFailed: (listener: string, role: Role, reason: FailureReason) => void
  /** An accepted client connection: `connections_total` +1 and `connections_active` +1. */
  readonly connectionOpened: (listener: string) => void
  /** A connection counted by `connectionOpened` has closed: `connections_active` -1. */
  readonly connectionClosed: (listener: string) => void
  /** A connection Sleeve refused to serve (independent of opened/closed). */
  readonly connectionRefused: (listener: string, reason: RefusedReason) => void
  /** Adds `n` (a non-negative safe integer) bytes forwarded in `direction`. */
  readonly bytes: (listener: string, direction: Direction, n: number) => void
  /** Counts one STARTTLS upgrade attempt with its result. */
  readonly starttlsUpgrade: (listener: string, protocol: string, result: StarttlsResult) => void
  /** Adds `n` plaintext bytes discarded after a STARTTLS command (injection defence). */
  readonly starttlsDiscarded: (listener: string, protocol: string, n: number) => void
  /**
   * Records the notAfter of one certificate; the series keeps the soonest of all certificates
   * recorded for the same `tlsConfig` and `kind`.
   */
  readonly certificateNotAfter: (tlsConfig: string, kind: CertificateKind, notAfter: Date) => void
  /**
   * Replaces the whole certificate set at once (on reload; an empty list clears it). Series of
   * TLS configurations that are no longer listed disappear.
   */
  readonly replaceCertificates: (certificates: Iterable<CertificateExpiry>) => void
  /**
   * Records the notAfter of a peer certificate that was accepted on `listener`; the series is
   * the soonest one seen within `peerCertificateWindowMillis`, and absent when none was.
   */
  readonly peerCertificateNotAfter: (listener: string, notAfter: Date) => void
  /** The initial configuration load succeeded: sets the success timestamp, counts no reload. */
  readonly configLoaded: () => void
  /** Counts one reload; `ok` also sets the success timestamp. Sets the last-result gauge. */
  readonly configReload: (result: ReloadResult) => void
  /** Sets `sleeve_ready` (1 when every listener is up and the sidecar is not draining). */
  readonly setReady: (ready: boolean) => void
  /**
   * Replaces the CRL nextUpdate set (on start and reload): per TLS configuration, the soonest
   * nextUpdate of its CRLs. Configurations no longer listed disappear.
   */
  readonly replaceCrls: (crls: Iterable<CrlNextUpdate>) => void
  /** Counts one PROXY protocol header accepted from a load balancer or written to a target. */
  readonly proxyProtocolHeader: (
    listener: string,
    direction: ProxyProtocolDirection,
    version: ProxyProtocolVersion
  ) => void
  /**
   * Counts one connection refused over its PROXY protocol header (the caller also counts it in
   * `connections_refused_total` with reason `proxy_protocol`).
   */
  readonly proxyProtocolRefused: (listener: string, reason: ProxyProtocolRefusedReason) => void
  /**
   * Counts one connection lost at accept: refused by Sleeve's descriptor reserve (`fd_limit`), or
   * an error `accept()` reported. Such a connection is not in `connections_total`.
   */
  readonly acceptError: (listener: string, reason: AcceptErrorReason) => void
}

/** The nextUpdate of one CRL of a named TLS configuration. */
export interface CrlNextUpdate {
  readonly tlsConfig: string
  readonly nextUpdate: Date
}

/**
 * The metrics service. `layer` records into a fresh registry per build (time from `Clock`);
 * `layerNoop` records nothing.
 */
export class Metrics extends Context.Service<Metrics, Recorder>()("@sleeve/metrics/Metrics") {
  /** Real metrics: a fresh registry with every `sleeve_*` metric and default process metrics. */
  static readonly layer: Layer.Layer<Metrics> = Layer.effect(Metrics)(
    Effect.gen(function* () {
      const clock = yield* Clock.Clock
      return make({ now: () => clock.currentTimeMillisUnsafe() })
    })
  )
  /** No metrics: the same interface, every method does nothing, the exposition is empty. */
  static readonly layerNoop: Layer.Layer<Metrics> = Layer.sync(Metrics)(() => makeNoop())
}

// ---------------------------------------------------------------------------------------------
// Constructors
// ---------------------------------------------------------------------------------------------

/** Options of `make`. */
export interface MakeOptions {
  /** Wall-clock time in milliseconds since the epoch; defaults to `Date.now`. */
  readonly now?: (() => number) | undefined
  /** Register prom-client's default process metrics (default `true`). */
  readonly defaultMetrics?: boolean | undefined
}

const failure = (what: string, value: unknown, allowed?: ReadonlyArray<string>): TypeError =>
  new TypeError(
    `@sleeve/metrics: invalid ${what} ${JSON.stringify(value) ?? String(value)}` +
      (allowed === undefined ? "" : ` (expected one of ${allowed.join(", ")})`)
  )

const checker = <A extends string>(what: string, values: ReadonlyArray<A>) => {
  const set: ReadonlySet<string> = new Set(values)
  return (value: A): A => {
    if (typeof value !== "string" || !set.has(value)) throw failure(what, value, values)
    return value
  }
}
const checkRole = checker("role", roles)
const checkResult = checker("handshake result", handshakeResults)
const checkReason = checker("failure reason", failureReasons)
const checkRefused = checker("refused reason", refusedReasons)
const checkDirection = checker("direction", directions)
const checkStarttls = checker("STARTTLS result", starttlsResults)
const checkKind = checker("certificate kind", certificateKinds)
const checkReload = checker("reload result", reloadResults)
const checkPpDirection = checker("PROXY protocol direction", proxyProtocolDirections)
const checkPpVersion = checker("PROXY protocol version", proxyProtocolVersions)
const checkPpRefused = checker("PROXY protocol refused reason", proxyProtocolRefusedReasons)
const checkAcceptError = checker("accept error reason", acceptErrorReasons)

const checkName = (what: string, value: string): string => {
  if (typeof value !== "string" || value.length === 0) throw failure(what, value)
  return value
}
const checkCount = (n: number): number => {
  if (!Number.isSafeInteger(n) || n < 0) throw failure("byte count", n)
  return n
}
const checkDate = (what: string, date: Date): number => {
  const t = date instanceof Date ? date.getTime() : Number.NaN
  if (!Number.isFinite(t)) throw failure(what, date)
  return t
}

const minuteMillis = 60 * 1000

/** Builds a recorder on a fresh registry. `Metrics.layer` uses it with the Effect `Clock`. */
export const make = (options: MakeOptions = {}): Recorder => {
  const now = options.now ?? Date.now
  const registry = new Prom.Registry()
  if (options.defaultMetrics !== false) {
    Prom.collectDefaultMetrics({ register: registry })
    for (const name of droppedDefaultMetrics) registry.removeSingleMetric(name)
  }
  const registers = [registry]

  const handshakes = new Prom.Counter({
    name: MetricName.handshakesTotal,
    help: "TLS handshakes by listener, Sleeve's role in the handshake and result.",
    labelNames: ["listener", "role", "result"] as const,
    registers
  })
  const failures = new Prom.Counter({
    name: MetricName.handshakeFailuresTotal,
    help: "Failed TLS handshakes by bounded failure reason.",
    labelNames: ["listener", "role", "reason"] as const,
    registers
  })
  const dnRejections = new Prom.Counter({
    name: MetricName.dnRejectionsTotal,
    help: "Peers whose certificate DN was not authorized for the listener.",
    labelNames: ["listener", "role"] as const,
    registers
  })
  const duration = new Prom.Histogram({
    name: MetricName.handshakeDurationSeconds,
    help: "Duration of successful TLS handshakes in seconds.",
    labelNames: ["listener", "role"] as const,
    buckets: [...handshakeDurationBuckets],
    registers
  })
  const active = new Prom.Gauge({
    name: MetricName.connectionsActive,
    help: "Client connections currently open.",
    labelNames: ["listener"] as const,
    registers
  })
  const connections = new Prom.Counter({
    name: MetricName.connectionsTotal,
    help: "Client connections accepted.",
    labelNames: ["listener"] as const,
    registers
  })
  const refused = new Prom.Counter({
    name: MetricName.connectionsRefusedTotal,
    help: "Client connections refused, by reason.",
    labelNames: ["listener", "reason"] as const,
    registers
  })
  const bytesTotal = new Prom.Counter({
    name: MetricName.bytesTotal,
    help: "Application bytes forwarded, by direction.",
    labelNames: ["listener", "direction"] as const,
    registers
  })
  const upgrades = new Prom.Counter({
    name: MetricName.starttlsUpgradesTotal,
    help: "STARTTLS upgrade attempts by protocol and result.",
    labelNames: ["listener", "protocol", "result"] as const,
    registers
  })
  const discarded = new Prom.Counter({
    name: MetricName.starttlsDiscardedBytesTotal,
    help: "Plaintext bytes discarded after a STARTTLS command (pipelined before the upgrade).",
    labelNames: ["listener", "protocol"] as const,
    registers
  })
  const certificates = new Prom.Gauge({
    name: MetricName.certificateNotAfterTimestampSeconds,
    help: "Soonest notAfter (Unix seconds) of the certificates of a TLS configuration, by kind.",
    labelNames: ["tls_config", "kind"] as const,
    registers
  })
  // Peer certificates: per listener, the soonest notAfter per one-minute slot of observation
  // time. The gauge is recomputed at scrape time so that old observations age out on their own.
  const peerSlots = new Map<string, Map<number, number>>()
  const peerWindowSlots = Math.ceil(peerCertificateWindowMillis / minuteMillis)
  const peers: Prom.Gauge<"listener"> = new Prom.Gauge({
    name: MetricName.peerCertificateNotAfterMinTimestampSeconds,
    help: "Soonest notAfter (Unix seconds) of the peer certificates accepted in the last hour.",
    labelNames: ["listener"] as const,
    registers,
    collect: () => {
      const oldest = Math.floor(now() / minuteMillis) - peerWindowSlots
      peers.reset()
      for (const [listener, slots] of peerSlots) {
        let min = Number.POSITIVE_INFINITY
        for (const [slot, notAfter] of slots) {
          if (slot < oldest) slots.delete(slot)
          else if (notAfter < min) min = notAfter
        }
        if (slots.size === 0) peerSlots.delete(listener)
        else peers.set({ listener }, min / 1000)
      }
    }
  })
  const reloads = new Prom.Counter({
    name: MetricName.configReloadsTotal,
    help: "Configuration reloads by result.",
    labelNames: ["result"] as const,
    registers
  })
  const lastSuccess = new Prom.Gauge({
    name: MetricName.configLastReloadSuccessTimestampSeconds,
    help: "Unix time of the last successful configuration load or reload (0 before the first).",
    registers
  })
  const lastSuccessful = new Prom.Gauge({
    name: MetricName.configLastReloadSuccessful,
    help: "1 if the last configuration load or reload succeeded, 0 if it failed or none happened yet.",
    registers
  })
  const ready = new Prom.Gauge({
    name: MetricName.ready,
    help: "1 when the sidecar is ready to serve (every listener bound, not draining), else 0.",
    registers
  })
  for (const result of reloadResults) reloads.inc({ result }, 0)
  // revocation (issue 13 §2)
  const crlNextUpdate = new Prom.Gauge({
    name: MetricName.crlNextUpdateTimestampSeconds,
    help: "Soonest nextUpdate (Unix seconds) of the CRLs of a TLS configuration; a CRL is stale after it.",
    labelNames: ["tls_config"] as const,
    registers
  })
  const ppHeaders = new Prom.Counter({
    name: MetricName.proxyProtocolHeadersTotal,
    help: "PROXY protocol headers accepted from load balancers (received) or written to targets (sent), by version.",
    labelNames: ["listener", "direction", "version"] as const,
    registers
  })
  const ppRefused = new Prom.Counter({
    name: MetricName.proxyProtocolRefusedTotal,
    help: "Connections refused over their PROXY protocol header, by reason.",
    labelNames: ["listener", "reason"] as const,
    registers
  })

  const acceptErrors = new Prom.Counter({
    name: MetricName.acceptErrorsTotal,
    help: "Connections lost at accept: refused for the descriptor reserve (fd_limit) or failed in accept(), by reason.",
    labelNames: ["listener", "reason"] as const,
    registers
  })

  // The histogram has no "create if absent": `zero` resets a series, so remember which exist.
  const durationSeries = new Set<string>()
  // The byte counter children are cached: `bytes` runs once per chunk on the data path.
  const byteChildren = new Map<string, Prom.Counter.Internal>()
  // The soonest notAfter per (tls_config, kind), to keep the minimum over several certificates.
  const certificateMins = new Map<string, { tlsConfig: string; kind: CertificateKind; notAfter: number }>()

  const recordCertificate = (tlsConfig: string, kind: CertificateKind, notAfter: Date): void => {
    checkName("tls config name", tlsConfig)
    checkKind(kind)
    const t = checkDate("certificate notAfter", notAfter)
    const key = `${tlsConfig}\u0000${kind}`
    const previous = certificateMins.get(key)
    if (previous !== undefined && previous.notAfter <= t) return
    certificateMins.set(key, { tlsConfig, kind, notAfter: t })
    certificates.set({ tls_config: tlsConfig, kind }, t / 1000)
  }

  const recordSuccess = (): void => {
    lastSuccess.set(now() / 1000)
    lastSuccessful.set(1)
  }

  return {
    registry,
    contentType: registry.contentType,
    metricsText: Effect.promise(() => registry.metrics()),
    registerListener: (listener, listenerRoles, listenerOptions = {}) => {
      // Validate everything first: a bad argument must not leave half a listener registered.
      checkName("listener name", listener)
      for (const role of listenerRoles) checkRole(role)
      const protocol =
        listenerOptions.starttls === undefined ? undefined : checkName("STARTTLS protocol", listenerOptions.starttls)
      for (const role of listenerRoles) {
        for (const result of handshakeResults) handshakes.inc({ listener, role, result }, 0)
        for (const reason of failureReasons) failures.inc({ listener, role, reason }, 0)
        dnRejections.inc({ listener, role }, 0)
        const key = `${listener}\u0000${role}`
        if (!durationSeries.has(key)) {
          durationSeries.add(key)
          duration.zero({ listener, role })
        }
      }
      active.inc({ listener }, 0)
      connections.inc({ listener }, 0)
      for (const reason of refusedReasons) refused.inc({ listener, reason }, 0)
      for (const reason of acceptErrorReasons) acceptErrors.inc({ listener, reason }, 0)
      for (const direction of directions) bytesTotal.inc({ listener, direction }, 0)
      if (protocol !== undefined) {
        for (const result of starttlsResults) upgrades.inc({ listener, protocol, result }, 0)
        discarded.inc({ listener, protocol }, 0)
      }
      const pp = listenerOptions.proxyProtocol
      if (pp?.send === true)
        for (const version of proxyProtocolVersions) ppHeaders.inc({ listener, direction: "sent", version }, 0)
      if (pp?.accept === true) {
        for (const version of proxyProtocolVersions) ppHeaders.inc({ listener, direction: "received", version }, 0)
        for (const reason of proxyProtocolRefusedReasons) ppRefused.inc({ listener, reason }, 0)
      }
    },
    handshake: (listener, role, result, durationSeconds) => {
      checkName("listener name", listener)
      checkRole(role)
      checkResult(result)
      if (durationSeconds !== undefined && !(Number.isFinite(durationSeconds) && durationSeconds >= 0)) {
        throw failure("handshake duration", durationSeconds)
      }
      handshakes.inc({ listener, role, result })
      if (result === "ok" && durationSeconds !== undefined) {
        durationSeries.add(`${listener}\u0000${role}`)
        duration.observe({ listener, role }, durationSeconds)
      }
    },
    handshakeFailure: (listener, role, reason) => {
      checkName("listener name", listener)
      failures.inc({ listener, role: checkRole(role), reason: checkReason(reason) })
    },
    dnRejected: (listener, role) => {
      checkName("listener name", listener)
      dnRejections.inc({ listener, role: checkRole(role) })
    },
    handshakeFailed: (listener, role, reason) => {
      checkName("listener name", listener)
      checkRole(role)
      checkReason(reason)
      handshakes.inc({ listener, role, result: resultForReason(reason) })
      failures.inc({ listener, role, reason })
      if (reason === "dn_rejected") dnRejections.inc({ listener, role })
    },
    connectionOpened: (listener) => {
      checkName("listener name", listener)
      connections.inc({ listener })
      active.inc({ listener })
    },
    connectionClosed: (listener) => {
      active.dec({ listener: checkName("listener name", listener) })
    },
    connectionRefused: (listener, reason) => {
      checkName("listener name", listener)
      refused.inc({ listener, reason: checkRefused(reason) })
    },
    bytes: (listener, direction, n) => {
      const key = `${listener}\u0000${direction}`
      let child = byteChildren.get(key)
      if (child === undefined) {
        checkName("listener name", listener)
        checkDirection(direction)
        child = bytesTotal.labels({ listener, direction })
        byteChildren.set(key, child)
      }
      child.inc(checkCount(n))
    },
    starttlsUpgrade: (listener, protocol, result) => {
      checkName("listener name", listener)
      checkName("STARTTLS protocol", protocol)
      upgrades.inc({ listener, protocol, result: checkStarttls(result) })
    },
    starttlsDiscarded: (listener, protocol, n) => {
      checkName("listener name", listener)
      checkName("STARTTLS protocol", protocol)
      discarded.inc({ listener, protocol }, checkCount(n))
    },
    certificateNotAfter: recordCertificate,
    replaceCertificates: (list) => {
      // Validate everything before touching the gauge, so a bad entry leaves the old set intact.
      const entries = [...list]
      for (const { tlsConfig, kind, notAfter } of entries) {
        checkName("tls config name", tlsConfig)
        checkKind(kind)
        checkDate("certificate notAfter", notAfter)
      }
      certificateMins.clear()
      certificates.reset()
      for (const { tlsConfig, kind, notAfter } of entries) recordCertificate(tlsConfig, kind, notAfter)
    },
    peerCertificateNotAfter: (listener, notAfter) => {
      checkName("listener name", listener)
      const t = checkDate("peer certificate notAfter", notAfter)
      const slot = Math.floor(now() / minuteMillis)
      let slots = peerSlots.get(listener)
      if (slots === undefined) {
        slots = new Map()
        peerSlots.set(listener, slots)
      }
      const previous = slots.get(slot)
      if (previous === undefined) {
        // A new slot at most once a minute: drop the expired ones here too, so memory stays
        // bounded (61 slots per listener) even when nobody scrapes.
        for (const old of slots.keys()) if (old < slot - peerWindowSlots) slots.delete(old)
        slots.set(slot, t)
      } else if (t < previous) slots.set(slot, t)
    },
    configLoaded: recordSuccess,
    configReload: (result) => {
      reloads.inc({ result: checkReload(result) })
      if (result === "ok") recordSuccess()
      else lastSuccessful.set(0)
    },
    setReady: (isReady) => {
      if (typeof isReady !== "boolean") throw failure("readiness", isReady)
      ready.set(isReady ? 1 : 0)
    },
    replaceCrls: (list) => {
      // Validate first: a bad entry leaves the old set intact.
      const soonest = new Map<string, number>()
      for (const { tlsConfig, nextUpdate } of list) {
        checkName("tls config name", tlsConfig)
        const t = checkDate("CRL nextUpdate", nextUpdate)
        const previous = soonest.get(tlsConfig)
        if (previous === undefined || t < previous) soonest.set(tlsConfig, t)
      }
      crlNextUpdate.reset()
      for (const [tlsConfig, t] of soonest) crlNextUpdate.set({ tls_config: tlsConfig }, t / 1000)
    },
    proxyProtocolHeader: (listener, direction, version) => {
      checkName("listener name", listener)
      ppHeaders.inc({ listener, direction: checkPpDirection(direction), version: checkPpVersion(version) })
    },
    proxyProtocolRefused: (listener, reason) => {
      checkName("listener name", listener)
      ppRefused.inc({ listener, reason: checkPpRefused(reason) })
    },
    acceptError: (listener, reason) => {
      checkName("listener name", listener)
      acceptErrors.inc({ listener, reason: checkAcceptError(reason) })
    }
  }
}

/** Builds a recorder that records nothing (an empty registry, an empty exposition). */
export const makeNoop = (): Recorder => {
  const registry = new Prom.Registry()
  const nothing = (): void => {}
  return {
    registry,
    contentType: registry.contentType,
    metricsText: Effect.succeed(""),
    registerListener: nothing,
    handshake: nothing,
    handshakeFailure: nothing,
    dnRejected: nothing,
    handshakeFailed: nothing,
    connectionOpened: nothing,
    connectionClosed: nothing,
    connectionRefused: nothing,
    bytes: nothing,
    starttlsUpgrade: nothing,
    starttlsDiscarded: nothing,
    certificateNotAfter: nothing,
    replaceCertificates: nothing,
    peerCertificateNotAfter: nothing,
    configLoaded: nothing,
    configReload: nothing,
    setReady: nothing,
    replaceCrls: nothing,
    proxyProtocolHeader: nothing,
    proxyProtocolRefused: nothing,
    acceptError: nothing
  }
}

// ---------------------------------------------------------------------------------------------
// Several workers (`workers: N`): the primary's own series and the aggregated exposition
// ---------------------------------------------------------------------------------------------

/** The names of the series only a primary supervising several workers registers (docs/metrics.md). */
export const WorkerMetricName = {
  workersActive: "sleeve_workers_active",
  workerRestartsTotal: "sleeve_worker_restarts_total"
} as const

/** The supervising process's series when `sleeve run` runs several worker processes. */
export interface WorkerRecorder {
  /** Sets `sleeve_workers_active`: worker processes running and serving now. */
  readonly setActive: (n: number) => void
  /** Counts one worker restarted after it exited unexpectedly. */
  readonly restarted: () => void
}

/**
 * Registers `sleeve_workers_active` and `sleeve_worker_restarts_total` on the primary's
 * registry (only a process that supervises workers has them).
 */
export const makeWorkerRecorder = (recorder: Recorder): WorkerRecorder => {
  const registers = [recorder.registry]
  const active = new Prom.Gauge({
    name: WorkerMetricName.workersActive,
    help: "Worker processes running and serving (workers > 1 only).",
    registers
  })
  const restarts = new Prom.Counter({
    name: WorkerMetricName.workerRestartsTotal,
    help: "Worker processes restarted after exiting unexpectedly (workers > 1 only).",
    registers
  })
  restarts.inc(0)
  return {
    setActive: (n) => {
      if (!Number.isSafeInteger(n) || n < 0) throw failure("worker count", n)
      active.set(n)
    },
    restarted: () => restarts.inc()
  }
}

/**
 * Series that describe the whole sidecar rather than one data path: with several workers they
 * come from the primary only (it loads and reloads the configuration and answers `/readyz`).
 */
export const primaryOwned: ReadonlySet<string> = new Set<string>([
  MetricName.certificateNotAfterTimestampSeconds,
  MetricName.crlNextUpdateTimestampSeconds,
  MetricName.configReloadsTotal,
  MetricName.configLastReloadSuccessTimestampSeconds,
  MetricName.configLastReloadSuccessful,
  MetricName.ready,
  WorkerMetricName.workersActive,
  WorkerMetricName.workerRestartsTotal,
  "process_start_time_seconds"
])

// How series that are not sums combine across processes (the rest are summed, or use the
// aggregator prom-client gave its default metric, e.g. `average` for event-loop lag).
const aggregatorOverrides: Readonly<Record<string, Prom.Aggregator>> = {
  [MetricName.peerCertificateNotAfterMinTimestampSeconds]: "min"
}

/** One registry's metrics, as `Registry.getMetricsAsJSON()` returns them (sent over IPC). */
export type MetricsJson = ReadonlyArray<Prom.MetricObjectWithValues<Prom.MetricValue<string>>>

/**
 * One exposition for the whole sidecar: the primary's own registry plus every worker's metrics
 * (as JSON), combined with prom-client's `AggregatorRegistry.aggregate`: counters, histograms and
 * gauges such as `sleeve_connections_active` are summed (so are process metrics: resident
 * memory and CPU seconds are totals over all processes), the peer-certificate minimum is the
 * minimum, and the series of {@link primaryOwned} are the primary's.
 */
export const aggregateText = async (primary: Prom.Registry, workers: ReadonlyArray<MetricsJson>): Promise<string> => {
  const adjust = (metrics: MetricsJson, fromPrimary: boolean) =>
    metrics
      .filter((m) => fromPrimary || !primaryOwned.has(m.name))
      .map((m) => {
        const aggregator = m.name === "process_start_time_seconds" ? "first" : aggregatorOverrides[m.name]
        return aggregator === undefined ? m : { ...m, aggregator }
      })
  const own = adjust(await primary.getMetricsAsJSON(), true)
  return Prom.AggregatorRegistry.aggregate([own, ...workers.map((w) => adjust(w, false))]).metrics()
}

/**
 * The counters and histograms of `exited` (the last metrics a worker that is gone sent) added to
 * `retired` (those of the workers gone before it): the primary keeps summing them into `/metrics`,
 * so that the sidecar's counters never go down when a worker exits (Prometheus would read that as
 * a counter reset and count everything since as new). Gauges are dropped: they describe a process.
 */
export const retire = async (retired: MetricsJson | undefined, exited: MetricsJson): Promise<MetricsJson> => {
  const monotonic = (ms: MetricsJson) =>
    ms.filter((m) => String(m.type) === "counter" || String(m.type) === "histogram")
  return Prom.AggregatorRegistry.aggregate(
    [...(retired === undefined ? [] : [retired]), monotonic(exited)].map((ms) => [...ms])
  ).getMetricsAsJSON()
}

// ---------------------------------------------------------------------------------------------
// TLS error classification
// ---------------------------------------------------------------------------------------------

/**
 * The parts of an error `classifyTlsError` reads: Node's `code` (an `ERR_SSL_*` or `ERR_TLS_*`
 * code, or an X.509 verify code such as `CERT_HAS_EXPIRED`), OpenSSL's `reason` text, and
 * `cause` (followed a few levels, for errors that wrap the Node error).
 */
export interface TlsErrorLike {
  readonly code?: unknown
  readonly reason?: unknown
  readonly name?: unknown
  readonly cause?: unknown
}

// X.509 verification codes: `tlsSocket.authorizationError`, and the `code` of the error a Node
// TLS client raises when it rejects the server's certificate.
const verifyCodes: Readonly<Record<string, FailureReason>> = {
  UNABLE_TO_GET_ISSUER_CERT: "unknown_ca",
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "unknown_ca",
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: "unknown_ca",
  SELF_SIGNED_CERT_IN_CHAIN: "unknown_ca",
  DEPTH_ZERO_SELF_SIGNED_CERT: "unknown_ca",
  CERT_UNTRUSTED: "unknown_ca",
  CERT_HAS_EXPIRED: "expired",
  CERT_NOT_YET_VALID: "not_yet_valid",
  INVALID_PURPOSE: "dual_use",
  CERT_SIGNATURE_FAILURE: "bad_certificate",
  UNABLE_TO_DECRYPT_CERT_SIGNATURE: "bad_certificate",
  UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY: "bad_certificate",
  ERROR_IN_CERT_NOT_BEFORE_FIELD: "bad_certificate",
  ERROR_IN_CERT_NOT_AFTER_FIELD: "bad_certificate",
  CERT_CHAIN_TOO_LONG: "bad_certificate",
  CERT_REVOKED: "revoked",
  // A certificate of the chain has no usable CRL (Node checks the whole chain once a CRL is set).
  UNABLE_TO_GET_CRL: "crl_unavailable",
  CRL_HAS_EXPIRED: "crl_unavailable",
  CRL_NOT_YET_VALID: "crl_unavailable",
  CRL_SIGNATURE_FAILURE: "crl_unavailable",
  UNABLE_TO_DECRYPT_CRL_SIGNATURE: "crl_unavailable",
  ERROR_IN_CRL_LAST_UPDATE_FIELD: "crl_unavailable",
  ERROR_IN_CRL_NEXT_UPDATE_FIELD: "crl_unavailable",
  UNABLE_TO_GET_CRL_ISSUER: "crl_unavailable",
  KEYUSAGE_NO_CRL_SIGN: "crl_unavailable",
  DIFFERENT_CRL_SCOPE: "crl_unavailable",
  UNHANDLED_CRITICAL_CRL_EXTENSION: "crl_unavailable",
  CRL_PATH_VALIDATION_ERROR: "crl_unavailable",
  CERT_REJECTED: "bad_certificate",
  INVALID_CA: "bad_certificate",
  PATH_LENGTH_EXCEEDED: "bad_certificate",
  HOSTNAME_MISMATCH: "bad_certificate",
  EE_KEY_TOO_SMALL: "bad_certificate",
  CA_KEY_TOO_SMALL: "bad_certificate",
  CA_MD_TOO_WEAK: "bad_certificate",
  // Node's own host name check (tls.checkServerIdentity).
  ERR_TLS_CERT_ALTNAME_INVALID: "bad_certificate",
  ERR_TLS_HANDSHAKE_TIMEOUT: "timeout",
  ETIMEDOUT: "timeout"
}

// TLS alerts received from the peer, by alert name. OpenSSL 3 spells the code
// ERR_SSL_SSL/TLS_ALERT_<NAME> (1.1 spelled it SSLV3_ALERT_), TLSV1_ALERT_ or TLSV13_ALERT_.
const alerts: Readonly<Record<string, FailureReason>> = {
  UNKNOWN_CA: "unknown_ca",
  BAD_CERTIFICATE: "bad_certificate",
  CERTIFICATE_UNKNOWN: "bad_certificate",
  CERTIFICATE_REVOKED: "revoked",
  CERTIFICATE_EXPIRED: "expired",
  UNSUPPORTED_CERTIFICATE: "dual_use",
  CERTIFICATE_REQUIRED: "no_certificate",
  NO_CERTIFICATE: "no_certificate",
  PROTOCOL_VERSION: "protocol_version",
  INAPPROPRIATE_FALLBACK: "protocol_version",
  // handshake_failure is what a peer sends when negotiation finds nothing in common. A TLS 1.2
  // server that requires a client certificate sends it too when it got none; Sleeve always
  // sends its configured certificate, so on role=client that case is rare.
  HANDSHAKE_FAILURE: "no_shared_cipher",
  INSUFFICIENT_SECURITY: "no_shared_cipher"
}

// Errors OpenSSL raises locally (ERR_SSL_<REASON>).
const sslReasons: Readonly<Record<string, FailureReason>> = {
  PEER_DID_NOT_RETURN_A_CERTIFICATE: "no_certificate",
  UNSUPPORTED_PROTOCOL: "protocol_version",
  WRONG_VERSION_NUMBER: "protocol_version",
  VERSION_TOO_LOW: "protocol_version",
  VERSION_TOO_HIGH: "protocol_version",
  UNSUPPORTED_SSL_VERSION: "protocol_version",
  // A plaintext HTTP request on a TLS port: the peer does not speak TLS at all.
  HTTP_REQUEST: "protocol_version",
  HTTPS_PROXY_REQUEST: "protocol_version",
  NO_SHARED_CIPHER: "no_shared_cipher",
  NO_CIPHERS_AVAILABLE: "no_shared_cipher",
  NO_SHARED_SIGNATURE_ALGORITHMS: "no_shared_cipher",
  NO_SUITABLE_SIGNATURE_ALGORITHM: "no_shared_cipher",
  NO_SHARED_GROUPS: "no_shared_cipher",
  CERTIFICATE_VERIFY_FAILED: "bad_certificate"
}

const alertPattern = /^(?:SSLV3|SSL\/TLS|TLSV1|TLSV13)_ALERT_(.+)$/

/**
 * Maps one Node/OpenSSL error code (or X.509 verify code, as in `authorizationError`) to a
 * failure reason; `other` when the code is not a known handshake failure.
 *
 * Caveat: a Node TLS server with `requestCert` reports a *missing* client certificate as
 * `UNABLE_TO_GET_ISSUER_CERT` (classified `unknown_ca`); check `getPeerCertificate()` for an
 * empty object first and count `no_certificate` yourself.
 */
export const classifyTlsErrorCode = (code: string): FailureReason => {
  const verify = verifyCodes[code]
  if (verify !== undefined) return verify
  const ssl = code.startsWith("ERR_SSL_") ? code.slice("ERR_SSL_".length) : code
  const alert = alertPattern.exec(ssl)
  if (alert !== null) return alerts[alert[1]!] ?? "other"
  return sslReasons[ssl] ?? "other"
}

/**
 * Maps an error raised during a TLS handshake to a bounded failure reason: by `code`, then by
 * OpenSSL's `reason` text (`"tlsv1 alert unknown ca"`), then through `cause` (up to 4 levels);
 * a `TimeoutError` by name is `timeout`; anything else is `other`. Never `dn_rejected`: only
 * Sleeve's own authorization decides that.
 */
export const classifyTlsError = (error: TlsErrorLike): FailureReason => {
  let current: unknown = error
  for (let depth = 0; depth < 5 && typeof current === "object" && current !== null; depth++) {
    const e = current as TlsErrorLike
    if (typeof e.code === "string") {
      const reason = classifyTlsErrorCode(e.code)
      if (reason !== "other") return reason
    }
    if (typeof e.reason === "string") {
      const reason = classifyTlsErrorCode(e.reason.trim().toUpperCase().replace(/ +/g, "_"))
      if (reason !== "other") return reason
    }
    if (e.name === "TimeoutError") return "timeout"
    current = e.cause
  }
  return "other"
}
