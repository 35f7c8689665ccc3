/**
 * Named TLS configurations for programs that embed Sleeve: the IRIS device verbs as a library.
 *
 * | IRIS                                  | here                                        |
 * | ------------------------------------- | ------------------------------------------- |
 * | `OPEN dev:(host:port:/TLS="cfg")`     | `connect("cfg", "host:port")`               |
 * | `OPEN dev:(:port:/TLS="cfg")`         | `upgradeServer(socket, "cfg")` on each accepted socket (or a `terminate` listener) |
 * | `USE dev:(::/TLS="cfg")` (server)     | `upgradeServer(socket, "cfg")`              |
 * | `USE dev:(::/TLS="cfg")` (client)     | `upgradeClient(socket, "cfg", { serverName })` |
 * | `/TLS="cfg|password"`                 | `{ password: Redacted.make(pw) }` option   |
 *
 * Every verb applies the configuration's verification and peer authorization (verified chain,
 * `verifyDepth`, `requireDualUse`, `authorizedPeers` as structured DNs) exactly as the sidecar's
 * listeners do, and counts and logs through the same metrics and event sink. `upgrade*` is the
 * STARTTLS primitive: call it at the moment your protocol says so, on a socket that has already
 * exchanged plaintext; every byte after that point is TLS.
 *
 * A password given at open time is for real-time interactive use only (the seed says so): it is
 * `Redacted`, used to decrypt the key for that one call, and never stored or logged. Services
 * should use `privateKeyPassword: { env }` or `{ file }` in the configuration.
 *
 * `TlsConfigs` is an Effect service; {@link open} gives the same verbs as Promises.
 */
import { ConfigFile, TlsMaterial } from "@sleeve/core"
import { Metrics } from "@sleeve/metrics"
import { Context, Data, Effect, Exit, Layer, type Redacted, Result, Scope } from "effect"
import * as Fs from "node:fs"
import type * as Net from "node:net"
import type * as Tls from "node:tls"
import type { EventSink } from "./EventLog.ts"
import * as Pipe from "./Pipe.ts"
import * as TlsSession from "./TlsSession.ts"

/** A TLS configuration name that is not in the file, is disabled, or is of the other type. */
export class TlsConfigError extends Data.TaggedError("TlsConfigError")<{
  readonly name: string
  readonly message: string
}> {}

/** Connecting to a target failed before TLS. */
export class ConnectError extends Data.TaggedError("ConnectError")<{
  readonly target: string
  readonly message: string
  readonly cause?: unknown
}> {}

/** Options of every verb. */
export interface VerbOptions {
  /** A key password given now (`/TLS="cfg|password"`): interactive use only. */
  readonly password?: Redacted.Redacted<string> | undefined
  /** Bounds the TLS handshake; default 10 s. */
  readonly handshakeTimeoutMs?: number | undefined
  /** The label for metrics and logs; default "library". */
  readonly label?: string | undefined
}

/** Options of the client-role verbs. */
export interface ClientVerbOptions extends VerbOptions {
  /** SNI and the name the server certificate must match; default: the target host. */
  readonly serverName?: string | undefined
  /** Explicit opt-out of hostname verification (chain verification stays on). Loudly logged. */
  readonly insecureSkipHostnameVerification?: boolean | undefined
}

/** The verbs, in Effect. */
export interface Service {
  /** The decoded configuration file. */
  readonly config: ConfigFile.SleeveConfig
  /** Secures `socket` as TLS server with configuration `name` (STARTTLS server side, or byte 0). */
  readonly upgradeServer: (
    socket: Net.Socket,
    name: string,
    options?: VerbOptions
  ) => Effect.Effect<TlsSession.Secured, TlsConfigError | TlsSession.TlsSessionError>
  /** Secures `socket` as TLS client with configuration `name` (STARTTLS client side, or byte 0). */
  readonly upgradeClient: (
    socket: Net.Socket,
    name: string,
    options?: ClientVerbOptions
  ) => Effect.Effect<TlsSession.Secured, TlsConfigError | TlsSession.TlsSessionError>
  /** Connects to `target` (`host:port`, `[v6]:port`, `unix:/path`) with TLS from the first byte; closed with the scope. */
  readonly connect: (
    name: string,
    target: string,
    options?: ClientVerbOptions
  ) => Effect.Effect<TlsSession.Secured, TlsConfigError | TlsSession.TlsSessionError | ConnectError, Scope.Scope>
}

/** Named TLS configurations as a service. */
export class TlsConfigs extends Context.Service<TlsConfigs, Service>()("@sleeve/proxy/TlsConfigs") {
  /**
   * Reads the configuration file (only its `tls` section matters here; listeners are ignored).
   * Metrics and events go to the `Metrics` service and the given sink.
   */
  static readonly layerFromFile = (
    path: string,
    options: { readonly log?: EventSink } = {}
  ): Layer.Layer<TlsConfigs, TlsConfigError, Metrics.Metrics> =>
    Layer.effect(TlsConfigs)(
      Effect.gen(function* () {
        const metrics = yield* Metrics.Metrics
        const made = makeFromFile(path, { metrics, ...(options.log === undefined ? {} : { log: options.log }) })
        if (Result.isFailure(made)) return yield* Effect.fail(made.failure)
        return made.success
      })
    )
}

let seq = 0

/** Builds the service from a configuration file (see {@link TlsConfigs.layerFromFile}). */
export const makeFromFile = (
  path: string,
  deps: { readonly metrics?: Metrics.Recorder; readonly log?: EventSink } = {}
): Result.Result<Service, TlsConfigError> => {
  let text: string
  try {
    text = Fs.readFileSync(path, "utf8")
  } catch (e) {
    return Result.fail(new TlsConfigError({ name: "", message: `${path}: ${(e as Error).message}` }))
  }
  const decoded = ConfigFile.decode(text, path)
  if (Result.isFailure(decoded)) return Result.fail(new TlsConfigError({ name: "", message: decoded.failure.message }))
  const config = decoded.success
  const metrics = deps.metrics ?? Metrics.makeNoop()
  const log = deps.log ?? (() => {})
  const cache = new Map<string, TlsMaterial.Material>()
  // One server engine (a tls.Server, so one SecureContext) per material and handshake timeout,
  // not one per upgraded socket.
  const engines = new WeakMap<TlsMaterial.Material, Map<number, TlsSession.ServerEngine>>()
  const engineOf = (m: TlsMaterial.Material, handshakeTimeoutMs: number): TlsSession.ServerEngine => {
    let byTimeout = engines.get(m)
    if (byTimeout === undefined) {
      byTimeout = new Map()
      engines.set(m, byTimeout)
    }
    let engine = byTimeout.get(handshakeTimeoutMs)
    if (engine === undefined) {
      engine = TlsSession.makeServerEngine(m, handshakeTimeoutMs)
      byTimeout.set(handshakeTimeoutMs, engine)
    }
    return engine
  }

  const material = (name: string, type: "server" | "client", options: VerbOptions) =>
    Effect.suspend(() => {
      const cfg = config.tls.get(name)
      if (cfg === undefined)
        return Effect.fail(new TlsConfigError({ name, message: `no TLS configuration named "${name}"` }))
      if (!cfg.enabled)
        return Effect.fail(new TlsConfigError({ name, message: `TLS configuration "${name}" is disabled` }))
      if (cfg.type !== type && cfg.type !== "mirror") {
        return Effect.fail(
          new TlsConfigError({ name, message: `TLS configuration "${name}" is of type ${cfg.type}, not ${type}` })
        )
      }
      const cached = options.password === undefined ? cache.get(name) : undefined
      if (cached !== undefined) return Effect.succeed(cached)
      const loaded = TlsMaterial.load(cfg, {
        file: path,
        now: new Date(),
        expiryWarningMs: config.expiryWarningMs,
        ...(options.password === undefined ? {} : { password: options.password })
      })
      if (loaded.material === undefined) {
        const problems = loaded.problems.filter((p) => p.severity === "error").map(ConfigFile.formatProblem)
        return Effect.fail(new TlsConfigError({ name, message: problems.join("\n") }))
      }
      if (options.password === undefined) cache.set(name, loaded.material)
      return Effect.succeed(loaded.material)
    })

  const ctx = (options: VerbOptions): TlsSession.SessionContext => ({
    listener: options.label ?? "library",
    connectionId: `${options.label ?? "library"}#${++seq}`,
    metrics,
    log
  })
  const fromResult = <A>(r: Result.Result<A, TlsSession.TlsSessionError>) =>
    Result.isSuccess(r) ? Effect.succeed(r.success) : Effect.fail(r.failure)

  const upgradeClient: Service["upgradeClient"] = (socket, name, options = {}) =>
    Effect.flatMap(material(name, "client", options), (m) =>
      Effect.flatMap(
        Effect.promise(() =>
          TlsSession.connectClient(
            socket,
            m,
            {
              serverName: options.serverName,
              insecureSkipHostnameVerification: options.insecureSkipHostnameVerification ?? false,
              handshakeTimeoutMs: options.handshakeTimeoutMs ?? 10_000
            },
            ctx(options)
          )
        ),
        fromResult
      )
    )

  return Result.succeed({
    config,
    upgradeServer: (socket, name, options = {}) =>
      Effect.flatMap(material(name, "server", options), (m) =>
        Effect.flatMap(
          Effect.promise(() => engineOf(m, options.handshakeTimeoutMs ?? 10_000).accept(socket, ctx(options))),
          fromResult
        )
      ),
    upgradeClient,
    connect: (name, target, options = {}) =>
      Effect.gen(function* () {
        const address = ConfigFile.parseAddress(target)
        if (Result.isFailure(address)) return yield* Effect.fail(new ConnectError({ target, message: address.failure }))
        const a = address.success
        const socket = yield* Effect.acquireRelease(
          Effect.callback<Net.Socket, ConnectError>((resume) => {
            const s = Pipe.dial(a)
            s.once("connect", () => resume(Effect.succeed(s)))
            s.once("error", (e) => resume(Effect.fail(new ConnectError({ target, message: e.message, cause: e }))))
            return Effect.sync(() => s.destroy())
          }),
          (s) => Effect.sync(() => s.destroy())
        )
        const serverName = options.serverName ?? (a._tag === "Tcp" ? a.host : undefined)
        const secured = yield* upgradeClient(socket, name, { ...options, serverName })
        yield* Effect.addFinalizer(() => Effect.sync(() => secured.socket.destroy()))
        return secured
      })
  })
}

/** The verbs as Promises, for programs that do not use Effect. */
export interface PromiseApi {
  readonly config: ConfigFile.SleeveConfig
  readonly upgradeServer: (socket: Net.Socket, name: string, options?: VerbOptions) => Promise<Tls.TLSSocket>
  readonly upgradeClient: (socket: Net.Socket, name: string, options?: ClientVerbOptions) => Promise<Tls.TLSSocket>
  /** The caller owns the returned socket (destroy or end it when done). */
  readonly connect: (name: string, target: string, options?: ClientVerbOptions) => Promise<Tls.TLSSocket>
}

/**
 * Opens a configuration file for the Promise API. Rejects with a `TlsConfigError`; the verbs
 * reject with `TlsConfigError`, `TlsSession.TlsSessionError` or `ConnectError`.
 *
 * ```ts
 * import { TlsConfigs } from "@sleeve/proxy"
 * const sleeve = await TlsConfigs.open("sleeve.yaml")
 * const tls = await sleeve.connect("MirrorClient", "node1.example.com:2188")   // OPEN dev:(host:port:/TLS="MirrorClient")
 * tls.write("hello\n")
 * ```
 */
export const open = async (
  path: string,
  deps: { readonly metrics?: Metrics.Recorder; readonly log?: EventSink } = {}
): Promise<PromiseApi> => {
  const made = makeFromFile(path, deps)
  if (Result.isFailure(made)) throw made.failure
  const s = made.success
  const run = <A>(e: Effect.Effect<A, unknown>) => Effect.runPromise(e)
  return {
    config: s.config,
    upgradeServer: (socket, name, options) => run(Effect.map(s.upgradeServer(socket, name, options), (r) => r.socket)),
    upgradeClient: (socket, name, options) => run(Effect.map(s.upgradeClient(socket, name, options), (r) => r.socket)),
    // The socket outlives the call: its scope closes when the socket closes.
    connect: async (name, target, options) => {
      const scope = Effect.runSync(Scope.make())
      const close = () => Effect.runFork(Scope.close(scope, Exit.void))
      try {
        const r = await run(Scope.provide(scope)(s.connect(name, target, options)))
        r.socket.once("close", close)
        return r.socket
      } catch (e) {
        close()
        throw e
      }
    }
  }
}
