/**
 * Securing one connection with a named TLS configuration, in either role, at any point of its
 * life: at the first byte (terminate / originate) or partway through (STARTTLS, IRIS
 * `USE dev:(::/TLS="cfg")`). This is the library primitive every listener mode is built on.
 *
 * Server role: the raw socket is handed to a `tls.Server` that never listens itself (an
 * "engine", `engine.emit("connection", raw)`), so Node applies the configuration's verification
 * mode, handshake timeout and renegotiation policy exactly as for a listening TLS server, and
 * reports the verdict through its public `authorized` / `authorizationError`.
 * Client role: `tls.connect({ socket })` on an already-connected socket, as undici does.
 *
 * Either way, once OpenSSL is done the peer is judged by `PeerPolicy.authorize` (verified chain,
 * depth, dual use, structured DN list); a peer that fails is dropped before a single application
 * byte is exchanged. Every outcome is counted and logged once.
 *
 * Known Node pitfalls handled here: `handshakeTimeout` only emits `tlsClientError`, it does not
 * close the socket (we destroy it); client-initiated renegotiation is refused (the material sets
 * `SSL_OP_NO_RENEGOTIATION`, and client sockets call `disableRenegotiation()`).
 */
import { Certificate, Crl, DistinguishedName, type PeerPolicy, type TlsMaterial } from "@sleeve/core"
import * as CorePolicy from "@sleeve/core/PeerPolicy"
import { Metrics } from "@sleeve/metrics"
import { Data, Result } from "effect"
import * as Net from "node:net"
import * as Tls from "node:tls"
import type { EventSink } from "./EventLog.ts"

/** Why securing a connection failed; `reason` is a bounded metric label. */
export class TlsSessionError extends Data.TaggedError("TlsSessionError")<{
  readonly reason: Metrics.FailureReason
  readonly message: string
  readonly cause?: unknown
}> {}

/** Who is securing what: for metrics labels and log fields. */
export interface SessionContext {
  readonly listener: string
  readonly connectionId: string
  /**
   * The client's `address:port` for the log: the socket's peer, or the real client a trusted
   * load balancer named in a PROXY protocol header (`acceptProxyProtocol`).
   */
  readonly remote?: string | undefined
  readonly metrics: Metrics.Recorder
  readonly log: EventSink
}

/** A secured connection and the peer it was authorized as. */
export interface Secured {
  readonly socket: Tls.TLSSocket
  readonly peer: Certificate.Certificate | undefined
}

const denyReason = (d: Extract<PeerPolicy.Decision, { _tag: "Deny" }>): Metrics.FailureReason => {
  switch (d.reason) {
    case "no_certificate":
      return "no_certificate"
    case "unverified":
      return d.verifyError === undefined ? "unknown_ca" : Metrics.classifyTlsErrorCode(d.verifyError)
    case "depth":
      return "bad_certificate"
    case "dual_use":
      return "dual_use"
    case "dn_not_authorized":
      return "dn_rejected"
  }
}

/**
 * What the handshake showed of the peer: the chain as Node reports it, leaf first, identified by
 * the fingerprints OpenSSL computed, and parsed by @sleeve/core only when the decision cache
 * has not judged this chain before.
 */
const presented = (socket: Tls.TLSSocket): CorePolicy.Presented => {
  const raws: Array<Buffer> = []
  const fingerprints: Array<string> = []
  // null (not {}) once the socket has lost its handle, e.g. in a late error handler.
  let c: Tls.DetailedPeerCertificate | undefined =
    (socket.getPeerCertificate(true) as Tls.DetailedPeerCertificate | null) ?? undefined
  while (c !== undefined && c.raw !== undefined && !fingerprints.includes(c.fingerprint256)) {
    fingerprints.push(c.fingerprint256)
    raws.push(c.raw)
    c = c.issuerCertificate === c ? undefined : c.issuerCertificate
  }
  let chain: ReadonlyArray<Certificate.Certificate> | undefined
  return {
    verified: socket.authorized,
    verifyError: socket.authorizationError === null ? undefined : String(socket.authorizationError),
    fingerprints,
    chain: () => {
      if (chain !== undefined) return chain
      const parsed: Array<Certificate.Certificate> = []
      for (const raw of raws) {
        const r = Certificate.fromDer(raw)
        if (Result.isFailure(r)) break
        parsed.push(r.success)
      }
      chain = parsed
      return parsed
    }
  }
}

/**
 * `make(material)`, built once per activated material and kept while it is: a reload activates
 * new material, so it gets a new one.
 */
const perMaterial = <A>(make: (material: TlsMaterial.Material) => A): ((material: TlsMaterial.Material) => A) => {
  const built = new WeakMap<TlsMaterial.Material, A>()
  return (material) => {
    let a = built.get(material)
    if (a === undefined) {
      a = make(material)
      built.set(material, a)
    }
    return a
  }
}

/** The peer decision cache of a material (PeerPolicy.makeCache: only verified chains are remembered). */
const cacheOf = perMaterial((material) => CorePolicy.makeCache(material.config))

/**
 * The client role's SecureContext, one per activated material. The server role's lives in its
 * engine's `tls.Server`, also one per material.
 */
const secureContextOf = perMaterial((material) => Tls.createSecureContext(material.secureContextOptions))

// ---------------------------------------------------------------------------------------------
// Revocation (issue 13 §2)
// ---------------------------------------------------------------------------------------------

/**
 * Log fields naming the certificate of the peer's chain that a CRL lists (serial, subject,
 * issuer): OpenSSL says only `CERT_REVOKED`, not which certificate, so the chain is looked up in
 * the configuration's CRLs. Falls back to the leaf when the chain is not available.
 */
const revokedFields = (
  chain: ReadonlyArray<Certificate.Certificate>,
  material: TlsMaterial.Material
): Record<string, string> => {
  for (const cert of chain) {
    const r = Crl.findRevocation(material.crls, cert)
    if (r !== undefined && r !== "no_crl") {
      return {
        revokedSerial: r.serialNumber,
        revokedSubject: cert.subjectString,
        revokedIssuer: r.issuerString,
        revokedAt: r.revocationDate.toISOString()
      }
    }
  }
  const leaf = chain[0]
  return leaf === undefined ? {} : { revokedSerial: leaf.serialNumber, revokedIssuer: leaf.issuerString }
}

/**
 * `crlStale: warn` with a stale CRL: OpenSSL was not given the CRLs (it would refuse every
 * peer), so Sleeve applies them to the verified chain as OpenSSL would have: every certificate,
 * trust anchor included, must be covered by a CRL of its issuer and not listed in it.
 */
const staleCrlVerdict = (
  chain: ReadonlyArray<Certificate.Certificate>,
  material: TlsMaterial.Material
): { readonly reason: "revoked" | "crl_unavailable"; readonly detail: string } | undefined => {
  for (const cert of chain) {
    const r = Crl.findRevocation(material.crls, cert)
    if (r === "no_crl") {
      return { reason: "crl_unavailable", detail: `no CRL of "${cert.issuerString}" in crlFile (UNABLE_TO_GET_CRL)` }
    }
    if (r !== undefined) {
      return {
        reason: "revoked",
        detail: `certificate "${cert.subjectString}" (serial ${r.serialNumber}) is revoked by "${r.issuerString}" (stale CRL)`
      }
    }
  }
  return undefined
}

/**
 * Judges the peer of a finished handshake; on denial counts, logs, destroys and fails.
 * Shared by both roles.
 */
const judge = (
  socket: Tls.TLSSocket,
  material: TlsMaterial.Material,
  role: Metrics.Role,
  ctx: SessionContext,
  startedAt: number
): Result.Result<Secured, TlsSessionError> => {
  const seen = presented(socket)
  // crlStale: warn with a stale CRL: Sleeve applies the CRLs itself, on the verified chain only,
  // at every handshake (before and apart from the decision cache).
  if (material.revocation === "sleeve" && socket.authorized) {
    const chain = seen.chain()
    const peer = chain[0]
    const verdict = staleCrlVerdict(chain, material)
    if (verdict !== undefined) {
      ctx.metrics.handshakeFailed(ctx.listener, role, verdict.reason)
      ctx.log("warn", "peer_rejected", {
        listener: ctx.listener,
        conn: ctx.connectionId,
        role,
        tls: material.config.name,
        reason: verdict.reason,
        detail: verdict.detail,
        ...(verdict.reason === "revoked" ? revokedFields(chain, material) : {}),
        ...(peer === undefined ? {} : { peerSubject: peer.subjectString, peerIssuer: peer.issuerString })
      })
      socket.destroy()
      return Result.fail(new TlsSessionError({ reason: verdict.reason, message: verdict.detail }))
    }
  }
  const decision = cacheOf(material).authorize(seen)
  const peer = decision.peer
  if (decision._tag === "Deny") {
    const reason = denyReason(decision)
    ctx.metrics.handshakeFailed(ctx.listener, role, reason)
    ctx.log("warn", "peer_rejected", {
      listener: ctx.listener,
      conn: ctx.connectionId,
      ...(ctx.remote === undefined ? {} : { remote: ctx.remote }),
      role,
      tls: material.config.name,
      reason,
      detail: decision.detail,
      ...(decision.reason === "unverified" && decision.verifyError !== undefined ? { code: decision.verifyError } : {}),
      ...(reason === "revoked" ? revokedFields(seen.chain(), material) : {}),
      ...(peer === undefined ? {} : { peerSubject: peer.subjectString, peerIssuer: peer.issuerString }),
      ...(decision.nearest === undefined ? {} : { nearestAuthorized: formatNearest(decision.nearest) })
    })
    socket.destroy()
    return Result.fail(new TlsSessionError({ reason, message: decision.detail }))
  }
  const seconds = (performance.now() - startedAt) / 1000
  ctx.metrics.handshake(ctx.listener, role, "ok", seconds)
  if (peer !== undefined) ctx.metrics.peerCertificateNotAfter(ctx.listener, peer.notAfter)
  ctx.log("info", "handshake_ok", {
    listener: ctx.listener,
    conn: ctx.connectionId,
    ...(ctx.remote === undefined ? {} : { remote: ctx.remote }),
    role,
    tls: material.config.name,
    protocol: socket.getProtocol(),
    cipher: socket.getCipher()?.standardName,
    durationMs: Math.round(seconds * 1000),
    ...(peer === undefined ? {} : { peerSubject: peer.subjectString, peerIssuer: peer.issuerString })
  })
  return Result.succeed({ socket, peer })
}

const formatNearest = (n: NonNullable<Extract<PeerPolicy.Decision, { _tag: "Deny" }>["nearest"]>): string =>
  DistinguishedName.format(n.candidate)

const failed = (
  role: Metrics.Role,
  material: TlsMaterial.Material,
  ctx: SessionContext,
  reason: Metrics.FailureReason,
  error: unknown,
  fields: Readonly<Record<string, string>> = {}
): TlsSessionError => {
  ctx.metrics.handshakeFailed(ctx.listener, role, reason)
  const code = (error as { code?: unknown } | undefined)?.code
  const message = error instanceof Error ? error.message : String(error)
  ctx.log("warn", "handshake_failed", {
    listener: ctx.listener,
    conn: ctx.connectionId,
    ...(ctx.remote === undefined ? {} : { remote: ctx.remote }),
    role,
    tls: material.config.name,
    reason,
    ...(typeof code === "string" ? { code } : {}),
    ...fields,
    error: message
  })
  return new TlsSessionError({ reason, message, cause: error })
}

// ---------------------------------------------------------------------------------------------
// Server role
// ---------------------------------------------------------------------------------------------

interface Pending {
  readonly resolve: (r: Result.Result<Secured, TlsSessionError>) => void
  readonly ctx: SessionContext
  readonly startedAt: number
}

/** Node sets `_parent` to the socket a TLSSocket wraps; the engine's events give only the TLSSocket. */
const parentOf = (t: Tls.TLSSocket): Net.Socket | undefined => (t as unknown as { _parent?: Net.Socket })._parent

/**
 * A server-role TLS engine for one configuration: accepts raw sockets at any point of their life
 * and resolves once the peer is secured and authorized. Build a new one to activate new material;
 * handshakes already under way finish with the engine they started on.
 */
export interface ServerEngine {
  readonly material: TlsMaterial.Material
  /** Secures `raw` as TLS server. Never rejects: failures are a `Result` (already counted and logged). */
  readonly accept: (raw: Net.Socket, ctx: SessionContext) => Promise<Result.Result<Secured, TlsSessionError>>
}

/** Builds a server engine; `handshakeTimeoutMs` bounds each handshake. */
export const makeServerEngine = (material: TlsMaterial.Material, handshakeTimeoutMs: number): ServerEngine => {
  const config = material.config
  const pending = new WeakMap<Net.Socket, Pending>()
  const engine = Tls.createServer({
    ...material.secureContextOptions,
    // verifyPeer: request asks for a certificate, require also makes OpenSSL fail the
    // handshake (with a proper alert) when none is sent or the chain does not verify.
    requestCert: config.verifyPeer !== "none",
    // With a crlFile, OpenSSL's verdict is judged after the handshake (`judge`, which denies an
    // unverified or missing certificate just the same): Node checks the verify result in JS after
    // the handshake either way, but with `rejectUnauthorized` it destroys the socket first and
    // the peer's chain, which names the revoked certificate in the log, is gone.
    rejectUnauthorized: config.verifyPeer === "require" && material.revocation === "none",
    handshakeTimeout: handshakeTimeoutMs,
    allowHalfOpen: true
  })
  const settle = (t: Tls.TLSSocket, r: (p: Pending) => Result.Result<Secured, TlsSessionError>) => {
    const raw = parentOf(t)
    const p = raw === undefined ? undefined : pending.get(raw)
    if (raw === undefined || p === undefined) {
      t.destroy()
      return
    }
    pending.delete(raw)
    p.resolve(r(p))
  }
  engine.on("secureConnection", (t: Tls.TLSSocket) => {
    // Half-close is back on for the data phase (see `accept`).
    t.allowHalfOpen = parentOf(t)?.allowHalfOpen ?? true
    settle(t, (p) => judge(t, material, "server", p.ctx, p.startedAt))
  })
  engine.on("tlsClientError", (err: Error & { code?: string }, t: Tls.TLSSocket) =>
    settle(t, (p) => {
      // The peer's chain, read before the socket goes: it names a revoked certificate in the log.
      const chain = String(t.authorizationError) === "CERT_REVOKED" ? presented(t).chain() : []
      // Node does not close the socket on a handshake timeout; we do, for every failure.
      t.destroy()
      // When OpenSSL rejected the peer's chain, the verify code says why better than the reset.
      const verifyError = t.authorizationError
      const reason: Metrics.FailureReason =
        err.code === "ERR_TLS_HANDSHAKE_TIMEOUT"
          ? "timeout"
          : verifyError !== null && verifyError !== undefined
            ? Metrics.classifyTlsErrorCode(String(verifyError))
            : Metrics.classifyTlsError(err)
      const error = verifyError
        ? Object.assign(new Error(`peer certificate rejected: ${verifyError}`), { code: String(verifyError) })
        : err
      return Result.fail(
        failed("server", material, p.ctx, reason, error, reason === "revoked" ? revokedFields(chain, material) : {})
      )
    })
  )
  return {
    material,
    accept: (raw, ctx) =>
      new Promise((resolve) => {
        // A raw socket that dies before OpenSSL says anything (a port scanner, a reset). Deferred
        // one turn: when Node itself rejects a peer whose chain did not verify (`rejectUnauthorized`),
        // it destroys the TLS socket, the raw socket closes first, and the TLS socket's
        // `tlsClientError` (which carries the verify code: expired, unknown CA, ...) follows; that
        // verdict must win over this generic one.
        const onClose = () =>
          setImmediate(() => {
            const p = pending.get(raw)
            if (p === undefined) return
            pending.delete(raw)
            resolve(
              Result.fail(failed("server", material, ctx, "other", new Error("connection closed during handshake")))
            )
          })
        raw.once("close", onClose)
        // Once settled, the listener goes: it holds `resolve`, hence the settled promise and the
        // peer's parsed certificate, for the whole life of the connection otherwise
        // (test/Retention.integration.test.ts, bench/figures/per-connection.md).
        const settled = (r: Result.Result<Secured, TlsSessionError>) => {
          raw.off("close", onClose)
          resolve(r)
        }
        pending.set(raw, { resolve: settled, ctx, startedAt: performance.now() })
        // The TLS socket takes `allowHalfOpen` from `raw`. Off during the handshake: a peer that
        // half-closes before it is done can never finish it, so Node closes at its FIN (counted
        // `other` above) instead of holding the socket until the handshake timeout.
        const halfOpen = raw.allowHalfOpen
        raw.allowHalfOpen = false
        engine.emit("connection", raw)
        raw.allowHalfOpen = halfOpen
      })
  }
}

// ---------------------------------------------------------------------------------------------
// Client role
// ---------------------------------------------------------------------------------------------

/** Options of {@link connectClient}. */
export interface ClientOptions {
  /** SNI and the name the server certificate must match (a literal IP is matched, not sent as SNI). */
  readonly serverName: string | undefined
  /** Explicit opt-out of hostname verification; chain verification stays on. */
  readonly insecureSkipHostnameVerification: boolean
  readonly handshakeTimeoutMs: number
}

/** After the handshake: an error destroys the socket (as during it), without holding anything. */
function destroyOnError(this: Tls.TLSSocket): void {
  this.destroy()
}

/** Secures an already-connected socket as TLS client. Never rejects; failures are counted and logged. */
export const connectClient = (
  raw: Net.Socket,
  material: TlsMaterial.Material,
  options: ClientOptions,
  ctx: SessionContext
): Promise<Result.Result<Secured, TlsSessionError>> =>
  new Promise((resolve) => {
    const config = material.config
    const startedAt = performance.now()
    let done = false
    const finish = (r: Result.Result<Secured, TlsSessionError>) => {
      if (done) return
      done = true
      clearTimeout(timer)
      // The handshake's listeners go once it is decided: they hold `resolve`, hence the settled
      // promise and the server's parsed certificate, for the whole life of the connection
      // otherwise. An error from now on still destroys the socket (the relay reports it).
      socket.off("secureConnect", onSecure)
      socket.off("close", onClose)
      if (socket.listeners("error").includes(onError)) {
        socket.off("error", onError)
        socket.once("error", destroyOnError)
      }
      resolve(r)
    }
    const name = options.serverName
    const connectOptions: Tls.ConnectionOptions = {
      socket: raw,
      // Built once per material: without it tls.connect builds a SecureContext (parses the CA
      // file, the certificate and the key) for every connection.
      secureContext: secureContextOf(material),
      ...(name !== undefined && Net.isIP(name) === 0 ? { servername: name } : {}),
      ...(name === undefined ? {} : { host: name }),
      // With a crlFile, as on the server side: `judge` refuses an unverified server (chain,
      // revocation or host name, all in `authorizationError`) once the chain can still be read.
      rejectUnauthorized: config.verifyPeer !== "none" && material.revocation === "none",
      ...(options.insecureSkipHostnameVerification ? { checkServerIdentity: () => undefined } : {}),
      // Not in @types/node's ConnectionOptions, but tls.connect passes it to the TLSSocket.
      ...({ allowHalfOpen: true } as object)
    }
    const socket = Tls.connect(connectOptions)
    socket.disableRenegotiation()
    const timer = setTimeout(() => {
      socket.destroy()
      finish(
        Result.fail(
          failed(
            "client",
            material,
            ctx,
            "timeout",
            new Error(`TLS handshake timed out after ${options.handshakeTimeoutMs} ms`)
          )
        )
      )
    }, options.handshakeTimeoutMs)
    const onSecure = () => {
      if (done) return
      finish(judge(socket, material, "client", ctx, startedAt))
    }
    const onError = (err: Error & { code?: string }) => {
      const reason = Metrics.classifyTlsError(err)
      // Node rejects the server's chain after the handshake, so the chain is still readable here.
      const fields = reason === "revoked" && !done ? revokedFields(presented(socket).chain(), material) : {}
      socket.destroy()
      if (done) return
      finish(Result.fail(failed("client", material, ctx, reason, err, fields)))
    }
    const onClose = () => {
      if (done) return
      finish(Result.fail(failed("client", material, ctx, "other", new Error("connection closed during handshake"))))
    }
    socket.once("secureConnect", onSecure)
    socket.once("error", onError)
    socket.once("close", onClose)
  })
