/**
 * Runs a `Starttls` negotiator on two connected Node sockets: the plaintext phase, the cut-over
 * to TLS on the peer leg, and the work owed right after it (the replayed greeting, held bytes).
 *
 * `runServerSide`: the peer is a remote client, the app a connected legacy plaintext server.
 * `runClientSide`: the app is a local legacy plaintext client, the peer a connection to a remote
 * server that requires STARTTLS. Both resolve once TLS is up on the peer leg, with the two ends
 * paused and ready for the caller to relay (`pipeline(peer, app)` and `pipeline(app, appToPeer?,
 * peer)`); the caller also owns timeouts (destroy the sockets, or abort `signal`). Whether the
 * app connection is opened eagerly or lazily is the caller's choice: SMTP, IMAP and POP3 servers
 * speak first, LDAP and PostgreSQL servers stay silent until the client's first request.
 *
 * The cut-over is where STARTTLS implementations get injection bugs, so it is done in one
 * synchronous step: stop listening to both sockets, pause them, read and discard whatever the
 * peer socket has already buffered (Node's TLSSocket would otherwise feed those plaintext bytes
 * to the TLS layer), then call `upgrade(raw)`. `upgrade` must wrap the raw socket synchronously,
 * before its first `await` (`new tls.TLSSocket(raw, { isServer: true, ... })` or
 * `tls.connect({ socket: raw, ... })`), so no byte can arrive in between.
 *
 * Writes in the plaintext phase do not wait for backpressure: they are bounded by the
 * negotiator's `maxCleartextBytes`, which counts Sleeve's own answers too.
 *
 * On any refusal or failure the promise rejects with a `StarttlsSessionError` and the runner has
 * already closed both sockets (after flushing the protocol's error message); a failed upgrade is
 * never followed by plaintext. The byte path uses plain Node streams and Promises; Effect wraps
 * the lifecycle around it.
 */
import { Data } from "effect"
import type * as net from "node:net"
import { Transform } from "node:stream"
import type * as tls from "node:tls"
import type * as Starttls from "./Starttls.ts"

/** Why a session did not reach TLS; used as a metric label. */
export type FailureReason = Starttls.RefuseReason | "closed" | "handshake_failed" | "aborted"

/** A STARTTLS session that did not reach TLS. Both sockets are closed when it is raised. */
export class StarttlsSessionError extends Data.TaggedError("StarttlsSessionError")<{
  readonly reason: FailureReason
  readonly detail: string
  readonly cause?: unknown
}> {
  override get message(): string {
    return `STARTTLS ${this.reason}: ${this.detail}`
  }
}

/** Options of {@link runServerSide} and {@link runClientSide}. */
export interface RunOptions {
  /** The remote leg: a remote client (server side) or a connection to the remote server (client side). */
  readonly peer: net.Socket
  /** The local legacy plaintext app, already connected. */
  readonly app: net.Socket
  /** A fresh negotiator for this connection, of the matching side. */
  readonly negotiator: Starttls.Negotiator
  /**
   * Wrap the raw peer socket in TLS synchronously (before any await) and resolve when the
   * handshake is done; it must reject on a handshake error or when the socket closes.
   */
  readonly upgrade: (raw: net.Socket) => Promise<tls.TLSSocket>
  /** Called once with the number of peer bytes discarded at the upgrade point, when there were any. */
  readonly onDiscarded?: ((bytes: number) => void) | undefined
  /** Abort the plaintext phase (e.g. a negotiation timeout). */
  readonly signal?: AbortSignal | undefined
  /**
   * Bytes the app must receive first once TLS is up, before anything else is written to it (a
   * PROXY protocol header carrying what the handshake established); called with the secured
   * peer socket right after the handshake.
   */
  readonly appPreamble?: ((secure: tls.TLSSocket) => Uint8Array | undefined) | undefined
}

/** Both ends after the upgrade, paused, for the caller to relay. */
export interface Upgraded {
  /** The peer leg, now TLS. */
  readonly peer: tls.TLSSocket
  /** The app leg, still plaintext. */
  readonly app: net.Socket
  /**
   * A rewrite to put in the app→peer direction, when the protocol needs one (SMTP server side:
   * STARTTLS is removed from EHLO replies): `pipeline(app, appToPeer, peer)`. Undefined: relay
   * the app verbatim.
   */
  readonly appToPeer: Transform | undefined
  /** Peer bytes discarded at the upgrade point (the STARTTLS injection metric). */
  readonly discarded: number
  /** The negotiator's counters at the upgrade. */
  readonly stats: Starttls.Stats
}

/** Wrap a `Starttls.StreamFilter` as a Transform stream. */
export const makeFilterStream = (filter: Starttls.StreamFilter): Transform =>
  new Transform({
    transform(chunk: Uint8Array, _encoding, callback) {
      const out = filter.push(chunk)
      callback(null, out.length > 0 ? out : undefined)
    },
    flush(callback) {
      const out = filter.flush()
      callback(null, out.length > 0 ? out : undefined)
    }
  })

/** How long a refused connection may take to flush its last words before it is destroyed. */
const closeGraceMs = 5000

const noop = () => {}

/** End after flushing what was written, then destroy; never wait on the peer for long. */
const closeGracefully = (socket: net.Socket): void => {
  if (socket.destroyed) return
  socket.on("error", noop)
  socket.end(() => socket.destroy())
  setTimeout(() => socket.destroy(), closeGraceMs).unref()
}

const run = (options: RunOptions, side: Starttls.Side): Promise<Upgraded> => {
  const { peer, app, negotiator } = options
  if (negotiator.side !== side) {
    return Promise.reject(
      new TypeError(`run${side === "server" ? "Server" : "Client"}Side needs a ${side}-side negotiator`)
    )
  }
  return new Promise<Upgraded>((resolve, reject) => {
    let settled = false

    const onPeerData = (chunk: Buffer) => apply(negotiator.onPeer(chunk))
    const onAppData = (chunk: Buffer) => apply(negotiator.onApp(chunk))
    const onPeerEnd = () => fail("closed", "the peer closed the connection before the TLS upgrade")
    const onAppEnd = () => fail("closed", "the app closed the connection before the TLS upgrade")
    const onPeerError = (cause: unknown) => fail("closed", "peer connection error before the TLS upgrade", cause)
    const onAppError = (cause: unknown) => fail("closed", "app connection error before the TLS upgrade", cause)
    const onAbort = () => fail("aborted", "STARTTLS negotiation aborted", options.signal?.reason)

    const detach = () => {
      peer.off("data", onPeerData).off("end", onPeerEnd).off("close", onPeerEnd).off("error", onPeerError)
      app.off("data", onAppData).off("end", onAppEnd).off("close", onAppEnd).off("error", onAppError)
      options.signal?.removeEventListener("abort", onAbort)
      // Removing a 'data' listener does not stop a flowing stream: pause explicitly.
      peer.pause()
      app.pause()
    }

    const fail = (reason: FailureReason, detail: string, cause?: unknown) => {
      if (settled) return
      settled = true
      detach()
      closeGracefully(peer)
      closeGracefully(app)
      reject(new StarttlsSessionError({ reason, detail, cause }))
    }

    const upgrade = (pending: number) => {
      settled = true
      detach()
      // Whatever the peer socket has buffered was sent before it saw our go-ahead: discard it,
      // or Node's TLSSocket would hand it to the TLS layer (CVE-2011-0411 class).
      let drained = 0
      for (let chunk: Buffer | null = peer.read(); chunk !== null; chunk = peer.read()) drained += chunk.length
      const discarded = pending + drained
      if (discarded > 0) options.onDiscarded?.(discarded)
      // The app is paused but may still fail during the handshake; an 'error' without a
      // listener would crash the process.
      let appError: unknown
      const sink = (cause: unknown) => {
        appError ??= cause
      }
      app.on("error", sink)
      let handshake: Promise<tls.TLSSocket>
      try {
        handshake = options.upgrade(peer)
      } catch (cause) {
        handshake = Promise.reject(cause)
      }
      handshake.then(
        (secure) => {
          app.off("error", sink)
          if (appError !== undefined || app.destroyed) {
            secure.destroy()
            app.destroy()
            reject(
              new StarttlsSessionError({
                reason: "closed",
                detail: "the app went away during the TLS handshake",
                cause: appError
              })
            )
            return
          }
          const preamble = options.appPreamble?.(secure)
          if (preamble !== undefined && preamble.length > 0) app.write(preamble)
          const post = negotiator.onUpgraded()
          for (const action of post.actions) {
            if (action._tag === "ToPeer") secure.write(action.bytes)
            else app.write(action.bytes)
          }
          resolve({
            peer: secure,
            app,
            appToPeer: post.appToPeer === undefined ? undefined : makeFilterStream(post.appToPeer),
            discarded,
            stats: negotiator.stats
          })
        },
        (cause: unknown) => {
          app.off("error", sink)
          // Never fall back to plaintext: tell the app (client side) and close both legs.
          for (const action of negotiator.onUpgradeFailed()) {
            if (action._tag === "ToApp" && !app.destroyed) app.write(action.bytes)
          }
          peer.destroy()
          closeGracefully(app)
          const detail = cause instanceof Error ? cause.message : String(cause)
          reject(
            new StarttlsSessionError({ reason: "handshake_failed", detail: `TLS handshake failed: ${detail}`, cause })
          )
        }
      )
    }

    const apply = (actions: ReadonlyArray<Starttls.Action>) => {
      for (const action of actions) {
        if (settled) return
        switch (action._tag) {
          case "ToPeer":
            peer.write(action.bytes)
            break
          case "ToApp":
            app.write(action.bytes)
            break
          case "Refuse":
            return fail(action.reason, action.detail)
          case "Upgrade":
            return upgrade(action.discarded)
        }
      }
    }

    if (options.signal?.aborted) return fail("aborted", "STARTTLS negotiation aborted", options.signal.reason)
    options.signal?.addEventListener("abort", onAbort, { once: true })
    peer.on("end", onPeerEnd).on("close", onPeerEnd).on("error", onPeerError)
    app.on("end", onAppEnd).on("close", onAppEnd).on("error", onAppError)
    apply(negotiator.start())
    if (settled) return
    peer.on("data", onPeerData).resume()
    app.on("data", onAppData).resume()
  })
}

/**
 * Server side: relay a remote client (`peer`) to a legacy plaintext server (`app`) until the
 * client asks for STARTTLS, answer it, and upgrade the peer leg as TLS server.
 */
export const runServerSide = (options: RunOptions): Promise<Upgraded> => run(options, "server")

/**
 * Client side: negotiate STARTTLS with the remote server (`peer`) on behalf of a legacy plaintext
 * client (`app`), upgrade the peer leg as TLS client, and replay the greeting the app expects.
 */
export const runClientSide = (options: RunOptions): Promise<Upgraded> => run(options, "client")
