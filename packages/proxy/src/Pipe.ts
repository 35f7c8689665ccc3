/**
 * The bytes path: relays a secured socket and a plaintext socket both ways with Node's own
 * `pipe()` (backpressure: a fast side is paused while the slow side's buffer is full, so memory
 * per connection stays bounded by the sockets' high-water marks whatever the speed difference).
 *
 * Half-close is honoured in both directions: when one side ends its output (FIN, or TLS
 * close_notify + FIN), the other side's output is ended and the reverse direction keeps flowing
 * until it ends too. Both sockets must be created with `allowHalfOpen: true`.
 *
 * Deliberately no Effect here: EFFECT4.md §3 measured that moving bytes through Effect's socket
 * reader doubles CPU. Effect composes the lifecycle around this.
 */
import type { ConfigFile } from "@sleeve/core"
import * as Net from "node:net"
import type { Transform } from "node:stream"

/**
 * Opens a socket to `address` as a relay needs it: half-open allowed and, over TCP, Nagle off
 * (TCP_NODELAY, as HAProxy, nginx and stunnel set it: a proxy forwards what it has at once).
 */
export const dial = (address: ConfigFile.Address): Net.Socket =>
  address._tag === "Unix"
    ? Net.connect({ path: address.path, allowHalfOpen: true })
    : Net.connect({ host: address.host, port: address.port, allowHalfOpen: true, noDelay: true })

/** Why a relay ended. */
export type EndReason = "closed" | "idle_timeout" | "error" | "aborted"

/** Outcome of a relay. */
export interface Ended {
  readonly reason: EndReason
  readonly error: Error | undefined
}

/** A running relay. */
export interface Relay {
  /** Resolves once both sockets are closed. */
  readonly done: Promise<Ended>
  /** Closes both sockets now (drain deadline reached, shutdown). */
  readonly abort: () => void
}

/**
 * Relays `a` ⇄ `b`. `idleTimeoutMs` (0 = none) closes both when neither direction moved a byte
 * for that long; it is armed on `b`, through which every byte of both directions passes.
 */
export const relay = (
  a: Net.Socket,
  b: Net.Socket,
  options: {
    readonly idleTimeoutMs: number
    /** A rewrite of the b→a direction (STARTTLS: SMTP EHLO replies after the upgrade). */
    readonly bToA?: Transform | undefined
  }
): Relay => {
  let reason: EndReason = "closed"
  let error: Error | undefined
  const destroyBoth = (why: EndReason, err?: Error) => {
    if (reason === "closed") reason = why
    if (err !== undefined && error === undefined) error = err
    a.destroy()
    b.destroy()
  }
  a.pipe(b)
  if (options.bToA === undefined) b.pipe(a)
  else {
    b.pipe(options.bToA).pipe(a)
    options.bToA.on("error", (e) => destroyBoth("error", e))
  }
  a.on("error", (e) => destroyBoth("error", e))
  b.on("error", (e) => destroyBoth("error", e))
  // One side gone without an error: let the other flush what it has, then close it.
  const closeOther = (other: Net.Socket) => (hadError: boolean) => {
    if (other.destroyed) return
    if (hadError) other.destroy()
    else if (!other.writableEnded) other.end()
  }
  a.once("close", closeOther(b))
  b.once("close", closeOther(a))
  if (options.idleTimeoutMs > 0) {
    b.setTimeout(options.idleTimeoutMs, () => destroyBoth("idle_timeout"))
  }
  const closed = (s: Net.Socket) =>
    new Promise<void>((r) => (s.destroyed && s.closed ? r() : s.once("close", () => r())))
  return {
    done: Promise.all([closed(a), closed(b)]).then(() => ({ reason, error })),
    abort: () => destroyBoth("aborted")
  }
}
