/**
 * A running listener: accepts connections on one address and serves each by its mode —
 * `terminate` (TLS in, plaintext to the target), `originate` (plaintext in, TLS to the target) or
 * `starttls` (a plaintext protocol session upgraded to TLS partway through, on either side).
 *
 * Per connection, in order: limits (draining, `maxConnections`) → with `acceptProxyProtocol`,
 * the trusted source check and its PROXY header (`ProxyProtocolSession`) → TLS and peer
 * authorization (`TlsSession`) → connect to the target (`connectTimeout`) → with
 * `proxyProtocol`, the PROXY header to the target → relay (`Pipe`, with `idleTimeout`) → close.
 * For `terminate`, the target is only dialled once the peer is authorized: a failed handshake or
 * a rejected peer never reaches the application.
 *
 * Live reconfiguration (IRIS "edit a configuration, activate it"): `update` swaps the activation
 * (listener settings + TLS material) used by connections accepted from then on; connections
 * already established keep what they started with.
 *
 * Connections are plain Node callbacks and Promises on purpose (see `Pipe`); the listener's own
 * lifecycle is wrapped in Effect by `Proxy`.
 */
import { ConfigFile, type TlsMaterial } from "@sleeve/core"
import { Metrics } from "@sleeve/metrics"
import { Result } from "effect"
import * as Net from "node:net"
import type * as Tls from "node:tls"
import * as Descriptors from "./Descriptors.ts"
import type { EventSink } from "./EventLog.ts"
import * as LogBurst from "./LogBurst.ts"
import * as Pipe from "./Pipe.ts"
import type * as ProxyProtocol from "./ProxyProtocol.ts"
import * as ProxyProtocolSession from "./ProxyProtocolSession.ts"
import * as Starttls from "./Starttls.ts"
import * as StarttlsSession from "./StarttlsSession.ts"
import * as TlsSession from "./TlsSession.ts"

/** A listener's settings together with the activated TLS material it uses. */
export interface Activation {
  readonly listener: ConfigFile.Listener
  readonly material: TlsMaterial.Material
}

/** What a listener needs from its surroundings. */
export interface Dependencies {
  readonly metrics: Metrics.Recorder
  readonly log: EventSink
  /** The process's descriptor budget; without one, no connection is refused for it. */
  readonly descriptors?: Descriptors.Budget | undefined
  /** Timing of the once-per-burst log lines (tests shorten it). */
  readonly burst?: { readonly quietMs?: number; readonly reportEveryMs?: number } | undefined
}

/** What to do when descriptors run out, for the first log line of a burst. */
const fdAdvice = (limit: number | undefined): string =>
  `the process ran out of file descriptors${limit === undefined ? "" : ` (open-file limit ${limit})`}: ` +
  "raise LimitNOFILE= in the systemd unit, or ulimit -n / docker run --ulimit nofile=N, or lower maxConnections"

const memoryAdvice =
  "the kernel is short of memory for sockets: check the host's memory and net.ipv4.tcp_mem / net.core limits"

/** Errors of a socket call that mean the process or host is out of a resource, not that the peer failed. */
const exhaustionCodes: ReadonlySet<string> = new Set(["EMFILE", "ENFILE", "ENOBUFS", "ENOMEM"])
const errnoOf = (e: unknown): string | undefined => {
  const code = (e as { readonly code?: unknown } | null)?.code
  return typeof code === "string" ? code : undefined
}

/** A snapshot for `/status`. */
export interface Snapshot {
  readonly name: string
  readonly mode: ConfigFile.Listener["mode"]
  readonly listen: string
  readonly target: string
  readonly tls: string
  readonly bound: boolean
  readonly activeConnections: number
  readonly totalConnections: number
  /** `allowPlaintextNetwork` is set: a plaintext side may leave the host (issue 13 §3). */
  readonly allowPlaintextNetwork: boolean
}

interface Live {
  readonly id: string
  readonly raw: Net.Socket
  relay: Pipe.Relay | undefined
  /** Every socket this connection opened, for a hard close at the drain deadline. */
  readonly sockets: Set<Net.Socket>
  /** The client's `address:port` for logs (the real client behind a trusted load balancer). */
  remote: string
  /** The client's connection as a PROXY header sent onward describes it. */
  origin: ProxyProtocol.Addresses | undefined
}

interface Current extends Activation {
  readonly engine: TlsSession.ServerEngine | undefined
  /** `acceptProxyProtocol.trustedSources`, ready for lookups. */
  readonly trusted: Net.BlockList | undefined
}

const activate = (a: Activation): Current => ({
  ...a,
  engine:
    ConfigFile.tlsRole(a.listener) === "server"
      ? TlsSession.makeServerEngine(a.material, a.listener.handshakeTimeoutMs)
      : undefined,
  trusted: trustedSources(a.listener)
})

const trustedSources = (l: ConfigFile.Listener): Net.BlockList | undefined => {
  if (l.acceptProxyProtocol === undefined) return undefined
  const list = new Net.BlockList()
  for (const c of l.acceptProxyProtocol.trustedSources) {
    list.addSubnet(c.address, c.prefix, c.family === "IPv4" ? "ipv4" : "ipv6")
  }
  return list
}

/** Whether `address` is in `list` (an IPv4-mapped IPv6 address matches its IPv4 entry). */
const isTrusted = (list: Net.BlockList, address: string | undefined): boolean =>
  address !== undefined && Net.isIP(address) !== 0 && list.check(address, Net.isIPv4(address) ? "ipv4" : "ipv6")

/** An outcome's client→target count without the PROXY header Sleeve wrote before the relay. */
const withoutHeader = (o: Outcome, headerBytes: number): Outcome =>
  o.bytes === undefined || headerBytes === 0
    ? o
    : { ...o, bytes: { ...o.bytes, clientToTarget: Math.max(0, o.bytes.clientToTarget - headerBytes) } }

const formatAddress = ConfigFile.formatAddress

/** Dials the target; failures are a reason for `sleeve_connections_refused_total`. */
const connectTarget = (
  target: ConfigFile.Address,
  timeoutMs: number
): Promise<Result.Result<Net.Socket, { reason: "target_unreachable" | "target_timeout"; error: Error }>> =>
  new Promise((resolve) => {
    const socket = Pipe.dial(target)
    const timer = setTimeout(() => {
      socket.destroy()
      resolve(Result.fail({ reason: "target_timeout", error: new Error(`connect timed out after ${timeoutMs} ms`) }))
    }, timeoutMs)
    socket.once("connect", () => {
      clearTimeout(timer)
      socket.removeAllListeners("error")
      resolve(Result.succeed(socket))
    })
    socket.once("error", (error) => {
      clearTimeout(timer)
      socket.destroy()
      resolve(Result.fail({ reason: "target_unreachable", error }))
    })
  })

/**
 * Plaintext guardrail (issue 13 §3): a plaintext target named by host name (only `localhost`
 * passes the configuration check) must really be a loopback peer once connected; otherwise the
 * connection is closed before a byte is sent and counted as unreachable.
 */
const checkPlaintextTarget = (
  l: ConfigFile.Listener,
  r: Awaited<ReturnType<typeof connectTarget>>
): Awaited<ReturnType<typeof connectTarget>> => {
  if (Result.isFailure(r) || l.allowPlaintextNetwork || l.target._tag !== "Tcp") return r
  if (!ConfigFile.plaintextSides(l).some((s) => s.field === "target")) return r
  const remote = r.success.remoteAddress ?? ""
  if (ConfigFile.isLoopbackIp(remote)) return r
  r.success.destroy()
  return Result.fail({
    reason: "target_unreachable",
    error: new Error(`plaintext target ${formatAddress(l.target)} resolved to ${remote}, which is not loopback`)
  })
}

/** How long a connection turned away cleanly is given to close from its side before it is destroyed. */
const lingerMs = 1000

/**
 * Ends our side (on TLS: close_notify, then FIN) and discards whatever the peer still sends:
 * destroying a socket with unread bytes makes the kernel answer with a reset, and the peer would
 * lose even the close_notify. Resolves once the peer has closed too, or after `lingerMs`
 * (the caller then destroys the socket).
 */
const closeGently = (socket: Net.Socket): Promise<void> =>
  new Promise((resolve) => {
    if (socket.destroyed) return resolve()
    const done = () => {
      clearTimeout(timer)
      resolve()
    }
    const timer = setTimeout(done, lingerMs)
    socket.once("close", done)
    socket.on("error", () => {})
    socket.on("data", () => {})
    socket.end()
  })

/** Options of `RunningListener.start`. */
export interface StartOptions {
  /** Hold connections unserved until `open()` (default: serve at once). */
  readonly held?: boolean
}

/** A listener accepting connections. */
export class RunningListener {
  readonly name: string
  #current: Current
  readonly #deps: Dependencies
  readonly #server: Net.Server
  readonly #live = new Set<Live>()
  #seq = 0
  #stopping = false
  #bound = false
  /** Accept losses (descriptor reserve, accept() errors): one log line per burst. */
  readonly #acceptBurst: LogBurst.LogBurst
  /** Target dials that failed for want of a descriptor or memory: one log line per burst. */
  readonly #dialBurst: LogBurst.LogBurst
  /** Connections that arrived before `open()` (see `StartOptions.held`); served or dropped then. */
  #held: Array<Net.Socket> | undefined

  private constructor(activation: Activation, deps: Dependencies, held: boolean) {
    this.#held = held ? [] : undefined
    this.name = activation.listener.name
    this.#current = activate(activation)
    this.#deps = deps
    const burst = { log: deps.log, fields: { listener: this.name }, ...deps.burst }
    this.#acceptBurst = LogBurst.make({ ...burst, event: "accept_failed" })
    this.#dialBurst = LogBurst.make({ ...burst, event: "target_failed" })
    // Nagle off on accepted sockets (TCP_NODELAY, as HAProxy, nginx and stunnel set it): with it
    // on, a TLS handshake flight written in pieces waits for the peer's delayed ACK (~40 ms on
    // Linux), which capped full handshakes at ~350/s with the CPU half idle.
    this.#server = Net.createServer({ allowHalfOpen: true, noDelay: true }, (raw) => this.#onConnection(raw))
  }

  /**
   * Binds the listen address and starts accepting. With `held`, connections are held unserved
   * until `open()`: a configuration whose other listeners fail to bind never serves half of
   * itself (each is closed again, and the held connections with it).
   */
  static start(activation: Activation, deps: Dependencies, options: StartOptions = {}): Promise<RunningListener> {
    const l = new RunningListener(activation, deps, options.held === true)
    const roles: ReadonlyArray<Metrics.Role> = [ConfigFile.tlsRole(activation.listener)]
    deps.metrics.registerListener(l.name, roles, {
      ...(activation.listener.starttls === undefined ? {} : { starttls: activation.listener.starttls.protocol }),
      proxyProtocol: {
        send: activation.listener.proxyProtocol !== undefined,
        accept: activation.listener.acceptProxyProtocol !== undefined
      }
    })
    const listen = activation.listener.listen
    return new Promise((resolve, reject) => {
      l.#server.once("error", reject)
      if (listen._tag === "Unix") l.#server.listen(listen.path)
      else l.#server.listen({ host: listen.host, port: listen.port, ipv6Only: false })
      l.#server.once("listening", () => {
        l.#server.off("error", reject)
        l.#server.on("error", (e) => l.#onServerError(e))
        // Plaintext guardrail (issue 13 §3): a plaintext listen side named `localhost` must
        // really have bound a loopback address.
        const plainListen = ConfigFile.plaintextSides(activation.listener).some((s) => s.field === "listen")
        if (plainListen && !activation.listener.allowPlaintextNetwork && listen._tag === "Tcp") {
          const bound = l.address().address
          if (!ConfigFile.isLoopbackIp(bound)) {
            l.#server.close()
            reject(
              new Error(
                `listener ${l.name}: plaintext listen ${formatAddress(listen)} bound ${bound}, which is not loopback; ` +
                  "use a loopback address or set allowPlaintextNetwork: true"
              )
            )
            return
          }
        }
        l.#bound = true
        l.#warnPlaintext(activation.listener)
        deps.log("info", "listening", {
          listener: l.name,
          mode: activation.listener.mode,
          address: l.addressString(),
          target: formatAddress(activation.listener.target),
          tls: activation.listener.tls
        })
        resolve(l)
      })
    })
  }

  /** Serves the connections held since `start({ held: true })`, and every later one. */
  open(): void {
    const held = this.#held
    if (held === undefined) return
    this.#held = undefined
    for (const raw of held) if (!raw.destroyed) this.#onConnection(raw)
  }

  /** The bound address (the real port when configured with port 0). */
  address(): Net.AddressInfo {
    return this.#server.address() as Net.AddressInfo
  }

  /** The bound address as `host:port`. */
  addressString(): string {
    const a = this.address()
    return a.family === "IPv6" ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`
  }

  /** The activation new connections use. */
  get activation(): Activation {
    return this.#current
  }

  /** Connections open now. */
  get activeConnections(): number {
    return this.#live.size
  }

  /** Connections from now on use `activation`; established ones are untouched. */
  update(activation: Activation): void {
    this.#current = activate(activation)
    this.#warnPlaintext(activation.listener)
  }

  /**
   * An error of the listening socket once bound. Node reports a failed `accept()` this way
   * (`syscall: "accept"`): counted by its code, logged once per burst, and the listener goes on
   * listening (libuv keeps the socket armed).
   */
  #onServerError(e: Error): void {
    if ((e as NodeJS.ErrnoException).syscall !== "accept") {
      this.#deps.log("error", "listener_error", { listener: this.name, error: e.message })
      return
    }
    const code = errnoOf(e)
    const reason = Metrics.acceptErrorReason(code)
    this.#deps.metrics.acceptError(this.name, reason)
    this.#acceptBurst.record(reason, {
      code,
      error: e.message,
      advice: code === "EMFILE" || code === "ENFILE" ? fdAdvice(this.#deps.descriptors?.limit) : memoryAdvice
    })
  }

  /** `allowPlaintextNetwork` is loud: a warning at every start and every reload (issue 13 §3). */
  #warnPlaintext(l: ConfigFile.Listener): void {
    if (!l.allowPlaintextNetwork) return
    this.#deps.log("warn", "plaintext_network_allowed", {
      listener: this.name,
      mode: l.mode,
      plaintext: ConfigFile.plaintextSides(l).map((s) => `${s.field} ${formatAddress(s.address)}`),
      note: "allowPlaintextNetwork: true: application bytes may cross the network unencrypted on these sides"
    })
  }

  /** A snapshot for `/status`. */
  snapshot(): Snapshot {
    const l = this.#current.listener
    return {
      name: this.name,
      mode: l.mode,
      listen: this.#bound ? this.addressString() : formatAddress(l.listen),
      target: formatAddress(l.target),
      tls: l.tls,
      bound: this.#bound,
      activeConnections: this.#live.size,
      totalConnections: this.#seq,
      allowPlaintextNetwork: l.allowPlaintextNetwork
    }
  }

  /** Stops accepting; established connections go on. */
  stopAccepting(): Promise<void> {
    this.#stopping = true
    for (const raw of this.#held ?? []) raw.destroy()
    this.#held = undefined
    return new Promise((resolve) => {
      if (!this.#server.listening) return resolve()
      this.#server.close(() => resolve())
      // server.close waits for every connection; we only wait for the listening socket.
      setImmediate(() => {
        this.#bound = false
        resolve()
      })
    })
  }

  /**
   * Stops accepting, lets live connections finish for up to `deadlineMs`, then closes those left.
   * Resolves with how many had to be closed.
   */
  async drain(deadlineMs: number): Promise<number> {
    await this.stopAccepting()
    const deadline = Date.now() + deadlineMs
    while (this.#live.size > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, Math.min(50, Math.max(1, deadline - Date.now()))))
    }
    const left = this.#live.size
    for (const c of this.#live) {
      if (c.relay !== undefined) c.relay.abort()
      for (const s of c.sockets) s.destroy()
      c.raw.destroy()
    }
    while (this.#live.size > 0) await new Promise((r) => setTimeout(r, 5))
    // A burst in progress gets its summary now rather than never.
    this.#acceptBurst.flush()
    this.#dialBurst.flush()
    return left
  }

  #onConnection(raw: Net.Socket): void {
    if (this.#held !== undefined) {
      raw.pause()
      raw.on("error", () => {})
      this.#held.push(raw)
      return
    }
    const { listener } = this.#current
    const m = this.#deps.metrics
    // The descriptor reserve (see `Descriptors`): this socket's number proves that every lower
    // one is taken, so the process is within its reserve of the limit. Closed at once, counted,
    // logged once per burst; the reserve stays for the connections already being served.
    const budget = this.#deps.descriptors
    if (budget !== undefined) {
      const fd = Descriptors.fdOf(raw)
      if (fd !== undefined && fd >= budget.threshold) {
        m.acceptError(this.name, "fd_limit")
        this.#acceptBurst.record("fd_limit", {
          fd,
          limit: budget.limit,
          reserve: budget.reserve,
          remote: `${raw.remoteAddress}:${raw.remotePort}`,
          advice: fdAdvice(budget.limit)
        })
        raw.destroy()
        return
      }
    }
    // Refusals: counted with a reason, logged once, and nothing else is affected.
    if (this.#stopping) {
      m.connectionRefused(this.name, "draining")
      this.#deps.log("info", "connection_refused", {
        listener: this.name,
        reason: "draining",
        remote: `${raw.remoteAddress}:${raw.remotePort}`
      })
      raw.destroy()
      return
    }
    if (this.#live.size >= listener.maxConnections) {
      m.connectionRefused(this.name, "max_connections")
      this.#deps.log("warn", "connection_refused", {
        listener: this.name,
        reason: "max_connections",
        limit: listener.maxConnections,
        remote: `${raw.remoteAddress}:${raw.remotePort}`
      })
      raw.destroy()
      return
    }
    const current = this.#current
    // acceptProxyProtocol: only the trusted load balancers may connect, and each must send a
    // header; anyone else could claim any address, so they are refused before a byte is read.
    if (current.trusted !== undefined && !isTrusted(current.trusted, raw.remoteAddress)) {
      m.connectionRefused(this.name, "proxy_protocol")
      m.proxyProtocolRefused(this.name, "untrusted_source")
      this.#deps.log("warn", "connection_refused", {
        listener: this.name,
        reason: "proxy_protocol",
        detail: "untrusted_source",
        remote: `${raw.remoteAddress}:${raw.remotePort}`
      })
      raw.destroy()
      return
    }
    const live: Live = {
      id: `${this.name}#${++this.#seq}`,
      raw,
      relay: undefined,
      sockets: new Set([raw]),
      remote: `${raw.remoteAddress}:${raw.remotePort}`,
      origin: undefined
    }
    this.#live.add(live)
    m.connectionOpened(this.name)
    const startedAt = performance.now()
    if (current.trusted === undefined) this.#logAccepted(live)
    raw.on("error", () => {}) // reported by the stage that owns the socket
    this.#serve(live, current)
      .catch((e: unknown) => {
        this.#deps.log("error", "connection_error", { listener: this.name, conn: live.id, error: String(e) })
        return undefined
      })
      .then((outcome) => {
        for (const s of live.sockets) s.destroy()
        this.#live.delete(live)
        m.connectionClosed(this.name)
        if (outcome?.bytes !== undefined) {
          m.bytes(this.name, "client_to_target", outcome.bytes.clientToTarget)
          m.bytes(this.name, "target_to_client", outcome.bytes.targetToClient)
        }
        this.#deps.log("info", "closed", {
          listener: this.name,
          conn: live.id,
          reason: outcome?.reason ?? "error",
          durationMs: Math.round(performance.now() - startedAt),
          bytesClientToTarget: outcome?.bytes?.clientToTarget ?? 0,
          bytesTargetToClient: outcome?.bytes?.targetToClient ?? 0
        })
      })
  }

  #ctx(live: Live): TlsSession.SessionContext {
    return {
      listener: this.name,
      connectionId: live.id,
      remote: live.remote,
      metrics: this.#deps.metrics,
      log: this.#deps.log
    }
  }

  #logAccepted(live: Live, via?: string): void {
    this.#deps.log("info", "accepted", {
      listener: this.name,
      conn: live.id,
      remote: live.remote,
      ...(via === undefined ? {} : { via })
    })
  }

  /**
   * acceptProxyProtocol: reads the trusted source's header (bounded, with its timeout); the real
   * client becomes the connection's `remote` and `origin`. False when the connection was refused.
   */
  async #acceptProxyHeader(live: Live, current: Current): Promise<boolean> {
    const accept = current.listener.acceptProxyProtocol!
    const m = this.#deps.metrics
    const via = live.remote
    const r = await ProxyProtocolSession.readHeader(live.raw, accept.timeoutMs)
    if (r._tag === "Failed") {
      m.connectionRefused(this.name, "proxy_protocol")
      m.proxyProtocolRefused(this.name, r.failure.reason)
      this.#deps.log("warn", "connection_refused", {
        listener: this.name,
        conn: live.id,
        reason: "proxy_protocol",
        detail: r.failure.reason,
        error: r.failure.detail,
        remote: via
      })
      live.raw.destroy()
      return false
    }
    m.proxyProtocolHeader(this.name, "received", r.header.version === 1 ? "v1" : "v2")
    live.origin = ProxyProtocolSession.originOf(live.raw, r.header)
    live.remote = ProxyProtocolSession.formatSource(live.origin, via)
    this.#logAccepted(live, via)
    return true
  }

  /**
   * proxyProtocol: writes the PROXY header to the target, before any application byte (the relay
   * starts after it). Returns its length, to keep it out of the application byte counts.
   */
  #sendProxyHeader(
    live: Live,
    current: Current,
    target: Net.Socket,
    secure: Tls.TLSSocket,
    peer: TlsSession.Secured["peer"]
  ): number {
    const version = current.listener.proxyProtocol
    if (version === undefined) return 0
    const origin = live.origin ?? ProxyProtocolSession.originOf(live.raw, undefined)
    const header = ProxyProtocolSession.makeHeader(
      version,
      origin,
      ProxyProtocolSession.tlsFactsOf(secure, peer, current.material.config.name)
    )
    target.write(header)
    this.#deps.metrics.proxyProtocolHeader(this.name, "sent", version)
    return header.length
  }

  async #dial(live: Live, current: Current): Promise<Net.Socket | undefined> {
    const l = current.listener
    const r = await connectTarget(l.target, l.connectTimeoutMs).then((c) => checkPlaintextTarget(l, c))
    if (Result.isFailure(r)) {
      const code = errnoOf(r.failure.error)
      if (code !== undefined && exhaustionCodes.has(code)) {
        // Out of descriptors (or socket memory) here, not a fault of the target: still counted
        // per connection, but logged once per burst, not once per connection.
        const outOfFds = code === "EMFILE" || code === "ENFILE"
        const reason: Metrics.RefusedReason = outOfFds ? "fd_limit" : r.failure.reason
        this.#deps.metrics.connectionRefused(this.name, reason)
        this.#dialBurst.record(reason, {
          conn: live.id,
          code,
          target: formatAddress(l.target),
          error: r.failure.error.message,
          advice: outOfFds ? fdAdvice(this.#deps.descriptors?.limit) : memoryAdvice
        })
        return undefined
      }
      this.#deps.metrics.connectionRefused(this.name, r.failure.reason)
      this.#deps.log("warn", "target_failed", {
        listener: this.name,
        conn: live.id,
        reason: r.failure.reason,
        target: formatAddress(l.target),
        error: r.failure.error.message
      })
      return undefined
    }
    live.sockets.add(r.success)
    return r.success
  }

  async #serve(live: Live, current: Current): Promise<Outcome> {
    const l = current.listener
    if (l.acceptProxyProtocol !== undefined && !(await this.#acceptProxyHeader(live, current))) {
      return { reason: "proxy_protocol_refused", bytes: undefined }
    }
    switch (l.mode) {
      case "terminate":
        return this.#terminate(live, current)
      case "originate":
        return this.#originate(live, current)
      case "starttls":
        return (l.starttls?.side ?? "server") === "server"
          ? this.#starttlsServer(live, current)
          : this.#starttlsClient(live, current)
    }
  }

  // Each mode's relay is awaited by an async function that holds only the sockets: a suspended
  // async function keeps every value of its frame, so the handshake's result (the peer's parsed
  // certificate) is produced and consumed in a helper that has returned before the relay starts
  // (bench/figures/per-connection.md).

  async #terminate(live: Live, current: Current): Promise<Outcome> {
    const legs = await this.#terminateLegs(live, current)
    if (!("tls" in legs)) return legs
    return withoutHeader(await this.#relay(live, legs.tls, legs.target, current, undefined, "target"), legs.headerBytes)
  }

  /** Terminate up to the relay: handshake and peer check, then the target and its PROXY header. */
  async #terminateLegs(
    live: Live,
    current: Current
  ): Promise<Outcome | { readonly tls: Tls.TLSSocket; readonly target: Net.Socket; readonly headerBytes: number }> {
    const secured = await current.engine!.accept(live.raw, this.#ctx(live))
    if (Result.isFailure(secured)) return { reason: secured.failure.reason, bytes: undefined }
    const tls = secured.success.socket
    live.sockets.add(tls)
    const target = await this.#dial(live, current)
    if (target === undefined) {
      // Close the client side cleanly: close_notify, then FIN.
      await closeGently(tls)
      return { reason: "target_failed", bytes: undefined }
    }
    return { tls, target, headerBytes: this.#sendProxyHeader(live, current, target, tls, secured.success.peer) }
  }

  async #originate(live: Live, current: Current): Promise<Outcome> {
    const tls = await this.#originateLeg(live, current)
    if (!(tls instanceof Net.Socket)) return tls
    return this.#relay(live, tls, live.raw, current, undefined, "client")
  }

  /** Originate up to the relay: the target, then the handshake and the server's check. */
  async #originateLeg(live: Live, current: Current): Promise<Outcome | Tls.TLSSocket> {
    const l = current.listener
    const up = await this.#dial(live, current)
    if (up === undefined) {
      // The application gets a FIN, not a reset, even if it already sent bytes.
      await closeGently(live.raw)
      return { reason: "target_failed", bytes: undefined }
    }
    const secured = await TlsSession.connectClient(up, current.material, clientOptions(l), this.#ctx(live))
    if (Result.isFailure(secured)) return { reason: secured.failure.reason, bytes: undefined }
    live.sockets.add(secured.success.socket)
    return secured.success.socket
  }

  async #starttlsServer(live: Live, current: Current): Promise<Outcome> {
    const app = await this.#dial(live, current)
    if (app === undefined) {
      await closeGently(live.raw)
      return { reason: "target_failed", bytes: undefined }
    }
    const ctx = this.#ctx(live)
    let peer: TlsSession.Secured["peer"]
    // proxyProtocol: the header goes to the app once TLS is up, before the first byte it gets
    // (the configuration allows it only for protocols whose app hears nothing before the upgrade).
    let headerBytes = 0
    const preamble = (secure: Tls.TLSSocket): Uint8Array | undefined => {
      if (current.listener.proxyProtocol === undefined) return undefined
      if (app.bytesWritten > 0) {
        // Never a header in the middle of a stream: a bug, so the connection is dropped.
        this.#deps.log("error", "proxy_protocol_late", { listener: this.name, conn: live.id })
        app.destroy()
        return undefined
      }
      const header = ProxyProtocolSession.makeHeader(
        current.listener.proxyProtocol,
        live.origin ?? ProxyProtocolSession.originOf(live.raw, undefined),
        ProxyProtocolSession.tlsFactsOf(secure, peer, current.material.config.name)
      )
      peer = undefined
      this.#deps.metrics.proxyProtocolHeader(this.name, "sent", current.listener.proxyProtocol)
      headerBytes = header.length
      return header
    }
    const outcome = await this.#starttls(
      live,
      current,
      app,
      "server",
      (raw) =>
        current.engine!.accept(raw, ctx).then((r) => {
          if (Result.isFailure(r)) return Promise.reject(r.failure)
          // Kept only for the PROXY header, and dropped once it is written (see `#terminate`).
          if (current.listener.proxyProtocol !== undefined) peer = r.success.peer
          return r.success.socket
        }),
      preamble
    )
    return withoutHeader(outcome, headerBytes)
  }

  async #starttlsClient(live: Live, current: Current): Promise<Outcome> {
    const peer = await this.#dial(live, current)
    if (peer === undefined) {
      await closeGently(live.raw)
      return { reason: "target_failed", bytes: undefined }
    }
    const ctx = this.#ctx(live)
    const opts = clientOptions(current.listener)
    return this.#starttls(live, current, peer, "client", (raw) =>
      TlsSession.connectClient(raw, current.material, opts, ctx).then((r) =>
        Result.isSuccess(r) ? r.success.socket : Promise.reject(r.failure)
      )
    )
  }

  async #starttls(
    live: Live,
    current: Current,
    other: Net.Socket,
    side: "server" | "client",
    upgrade: (raw: Net.Socket) => Promise<Tls.TLSSocket>,
    appPreamble?: StarttlsSession.RunOptions["appPreamble"]
  ): Promise<Outcome> {
    const st = current.listener.starttls!
    const m = this.#deps.metrics
    const negotiator = Starttls.makeNegotiator({
      protocol: st.protocol,
      side,
      requireTls: st.requireTls,
      maxCleartextBytes: st.maxCleartextBytes,
      line: st.line,
      clientName: st.clientName
    })
    // negotiationTimeout bounds the whole plaintext phase (a client that trickles bytes is cut too).
    const abort = new AbortController()
    const limit = st.negotiationTimeoutMs
    const timer = setTimeout(() => abort.abort(), limit)
    const [peer, app] = side === "server" ? [live.raw, other] : [other, live.raw]
    try {
      const runSide = side === "server" ? StarttlsSession.runServerSide : StarttlsSession.runClientSide
      const up = await runSide({
        peer,
        app,
        negotiator,
        upgrade,
        appPreamble,
        signal: abort.signal,
        onDiscarded: (n) => {
          m.starttlsDiscarded(this.name, st.protocol, n)
          this.#deps.log("warn", "starttls_discarded", {
            listener: this.name,
            conn: live.id,
            protocol: st.protocol,
            bytes: n
          })
        }
      })
      clearTimeout(timer)
      m.starttlsUpgrade(this.name, st.protocol, "ok")
      live.sockets.add(up.peer)
      // The plaintext leg is the target on the server side and the connecting client on the
      // client side: byte directions are read from it accordingly.
      return this.#relay(live, up.peer, up.app, current, up.appToPeer, side === "server" ? "target" : "client")
    } catch (e) {
      clearTimeout(timer)
      const reason = e instanceof StarttlsSession.StarttlsSessionError ? e.reason : "aborted"
      // docs/metrics.md: `refused` when Sleeve or the target refused (a client that hangs up
      // after its commands were answered "TLS required", e.g. SMTP 530, was refused too),
      // `failed` when the upgrade itself failed. A server-side client that left or timed out
      // without ever asking for STARTTLS made no upgrade attempt and is not counted.
      const refusal: Metrics.RefusedReason | undefined =
        reason === "starttls_required" ||
        reason === "cleartext_limit" ||
        // A client that does not speak the protocol (binary junk, a malformed LDAPMessage); a
        // remote server that does not is counted by the upgrade result alone.
        (reason === "protocol_error" && side === "server")
          ? reason
          : side === "server" && negotiator.phase === "negotiating" && negotiator.stats.refusedCommands > 0
            ? "starttls_required"
            : undefined
      const result: Metrics.StarttlsResult | undefined =
        refusal !== undefined || reason === "not_offered" || reason === "protocol_error"
          ? "refused"
          : side === "server" && negotiator.phase === "negotiating"
            ? undefined
            : "failed"
      if (result !== undefined) m.starttlsUpgrade(this.name, st.protocol, result)
      if (refusal !== undefined) m.connectionRefused(this.name, refusal)
      if (!(e instanceof StarttlsSession.StarttlsSessionError && e.cause instanceof TlsSession.TlsSessionError)) {
        // A session that simply ended without asking for TLS (requireTls: false) is no failure.
        this.#deps.log(
          result === undefined ? "info" : "warn",
          result === undefined ? "starttls_not_requested" : "starttls_failed",
          {
            listener: this.name,
            conn: live.id,
            protocol: st.protocol,
            reason,
            error: e instanceof Error ? e.message : String(e)
          }
        )
      }
      return { reason: `starttls_${reason}`, bytes: undefined }
    }
  }

  async #relay(
    live: Live,
    secure: Net.Socket,
    plain: Net.Socket,
    current: Current,
    plainToSecure: StarttlsSession.Upgraded["appToPeer"],
    plainIs: "target" | "client"
  ): Promise<Outcome> {
    const r = Pipe.relay(secure, plain, { idleTimeoutMs: current.listener.idleTimeoutMs, bToA: plainToSecure })
    live.relay = r
    secure.resume()
    plain.resume()
    const ended = await r.done
    // Plaintext byte counts, from the plaintext socket (what the application sent and received).
    const bytes =
      plainIs === "target"
        ? { clientToTarget: plain.bytesWritten, targetToClient: plain.bytesRead }
        : { clientToTarget: plain.bytesRead, targetToClient: plain.bytesWritten }
    return { reason: ended.reason, bytes }
  }
}

interface Outcome {
  readonly reason: string
  readonly bytes: { readonly clientToTarget: number; readonly targetToClient: number } | undefined
}

const clientOptions = (l: ConfigFile.Listener): TlsSession.ClientOptions => ({
  serverName: l.serverName,
  insecureSkipHostnameVerification: l.insecureSkipHostnameVerification,
  handshakeTimeoutMs: l.handshakeTimeoutMs
})
