/**
 * The proxy: every listener of a configuration file, activated together, reloaded together and
 * drained together.
 *
 * Activation is all-or-nothing (IRIS: configurations are activated at start, and an edited
 * configuration is activated as a whole): the file is decoded and every TLS configuration a
 * listener uses is loaded and checked before anything changes. A reload whose new configuration
 * has any error is rejected as a whole, the old one stays active, and the failure is counted and
 * logged with every problem. On success, listeners that still exist get the new activation for
 * their next connections (established ones are untouched), removed listeners drain, new ones
 * start.
 *
 * `Proxy` is an Effect service (`layer`) for the sidecar and for Effect users; `start` gives the
 * same runtime as a Promise API for everyone else.
 */
import { ConfigFile, type TlsMaterial } from "@sleeve/core"
import type { Metrics } from "@sleeve/metrics"
import { Context, Effect, Layer } from "effect"
import type { Activated } from "./Activation.ts"
import * as Descriptors from "./Descriptors.ts"
import { ListenError, listenError } from "./ListenError.ts"
import type { EventSink } from "./EventLog.ts"
import * as Listener from "./Listener.ts"

export { type ActivateOptions, type Activated, ActivationError, activate } from "./Activation.ts"

export { ListenError, listenError } from "./ListenError.ts"

/** Binds every listener of `ls`, held; on the first failure closes those bound and throws a `ListenError`. */
const bindAll = async (
  config: ConfigFile.SleeveConfig,
  ls: ReadonlyArray<ConfigFile.Listener>,
  materials: ReadonlyMap<string, TlsMaterial.Material>,
  deps: Listener.Dependencies
): Promise<Array<Listener.RunningListener>> => {
  const bound: Array<Listener.RunningListener> = []
  for (const l of ls) {
    try {
      bound.push(
        await Listener.RunningListener.start({ listener: l, material: materials.get(l.tls)! }, deps, { held: true })
      )
    } catch (cause) {
      await Promise.all(bound.map((b) => b.drain(0)))
      throw listenError(config, l, cause)
    }
  }
  return bound
}

/** A snapshot of the proxy for `/status` and `/readyz`. */
export interface Status {
  readonly listeners: ReadonlyArray<Listener.Snapshot>
  readonly ready: boolean
}

/** The running proxy. */
export interface Running {
  /** The activation in force. */
  readonly current: () => Activated
  /** Activates a new configuration; on failure nothing changes. */
  readonly reload: (next: Activated) => Promise<void>
  /** Stops accepting, drains for up to `deadlineMs`, closes what is left; resolves with that count. */
  readonly drain: (deadlineMs: number) => Promise<number>
  readonly status: () => Status
  /** The listener named `name` (for its bound address in tests and embedding). */
  readonly listener: (name: string) => Listener.RunningListener | undefined
}

const listenKey = (l: ConfigFile.Listener): string => `${l.mode}|${ConfigFile.formatAddress(l.listen)}`

/** What `start` needs from its surroundings. */
export interface StartDependencies {
  readonly metrics: Metrics.Recorder
  readonly log: EventSink
  /**
   * The descriptor budget (`Descriptors`): by default this process's (Linux), `null` for none.
   */
  readonly descriptors?: Descriptors.Budget | null
  /** Timing of the once-per-burst log lines. */
  readonly burst?: Listener.Dependencies["burst"]
}

/**
 * Starts every listener of an activated configuration. Every listener is bound before any
 * serves: if one cannot bind, those bound are closed, no connection was served, and the
 * `ListenError` names the file, the listener's `listen` field, the address and the rule.
 */
export const start = async (activated: Activated, startDeps: StartDependencies): Promise<Running> => {
  const { descriptors, ...rest } = startDeps
  const budget = descriptors === null ? undefined : (descriptors ?? Descriptors.makeBudget())
  const deps: Listener.Dependencies = { ...rest, descriptors: budget }
  let current = activated
  const listeners = new Map<string, Listener.RunningListener>()
  for (const l of await bindAll(activated.config, activated.config.listeners, activated.materials, deps)) {
    listeners.set(l.name, l)
  }
  for (const l of listeners.values()) l.open()
  return {
    current: () => current,
    reload: async (next) => {
      const keep = new Map(next.config.listeners.map((l) => [l.name, l]))
      // Listeners removed, or whose address or mode changed: they drain once the rest succeeded.
      const replaced = [...listeners].filter(([name, running]) => {
        const l = keep.get(name)
        return l === undefined || listenKey(l) !== listenKey(running.activation.listener)
      })
      const replacedNames = new Set(replaced.map(([name]) => name))
      // New listeners start first: if one cannot bind, those started here are closed and the
      // reload fails with nothing changed (a new listener cannot take over the address of one
      // it replaces in the same reload; do that in two steps).
      const started = await bindAll(
        next.config,
        next.config.listeners.filter((l) => !listeners.has(l.name) || replacedNames.has(l.name)),
        next.materials,
        deps
      )
      for (const [name, running] of replaced) {
        listeners.delete(name)
        void running.drain(next.config.drainTimeoutMs)
      }
      for (const l of next.config.listeners) {
        const running = listeners.get(l.name)
        if (running !== undefined) running.update({ listener: l, material: next.materials.get(l.tls)! })
      }
      for (const l of started) {
        listeners.set(l.name, l)
        l.open()
      }
      current = next
    },
    drain: async (deadlineMs) => {
      const counts = await Promise.all([...listeners.values()].map((l) => l.drain(deadlineMs)))
      return counts.reduce((a, b) => a + b, 0)
    },
    status: () => {
      const snaps = [...listeners.values()].map((l) => l.snapshot())
      return { listeners: snaps, ready: snaps.every((s) => s.bound) }
    },
    listener: (name) => listeners.get(name)
  }
}

/** The proxy as an Effect service. */
export class ProxyRuntime extends Context.Service<ProxyRuntime, Running>()("@sleeve/proxy/ProxyRuntime") {
  /**
   * Starts the proxy for an activated configuration; on scope close it drains for the
   * configuration's `drainTimeout`.
   */
  static readonly layer = (activated: Activated, deps: StartDependencies): Layer.Layer<ProxyRuntime, ListenError> =>
    Layer.effect(ProxyRuntime)(
      Effect.acquireRelease(
        Effect.tryPromise({
          try: () => start(activated, deps),
          catch: (cause) =>
            cause instanceof ListenError
              ? cause
              : new ListenError({
                  file: activated.config.file,
                  path: "listeners",
                  address: "",
                  code: undefined,
                  rule: `cannot listen: ${cause instanceof Error ? cause.message : String(cause)}`,
                  cause
                })
        }),
        (running) =>
          Effect.promise(async () => {
            const deadline = running.current().config.drainTimeoutMs
            deps.log("info", "draining", { deadlineMs: deadline })
            const closed = await running.drain(deadline)
            deps.log("info", "drained", { closedAtDeadline: closed })
          })
      )
    )
}
