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
import { ConfigFile } from "@sleeve/core"
import type { Metrics } from "@sleeve/metrics"
import { Context, Data, Effect, Layer } from "effect"
import type { Activated } from "./Activation.ts"
import type { EventSink } from "./EventLog.ts"
import * as Listener from "./Listener.ts"

export { type ActivateOptions, type Activated, ActivationError, activate } from "./Activation.ts"

/** A listener could not bind its address (in use, permission, bad interface). */
export class ListenError extends Data.TaggedError("ListenError")<{
  readonly message: string
  readonly cause: unknown
}> {}

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

/** Starts every listener of an activated configuration. If one cannot bind, those started are closed. */
export const start = async (
  activated: Activated,
  deps: { readonly metrics: Metrics.Recorder; readonly log: EventSink }
): Promise<Running> => {
  let current = activated
  const listeners = new Map<string, Listener.RunningListener>()
  const startOne = async (l: ConfigFile.Listener, a: Activated) => {
    const r = await Listener.RunningListener.start({ listener: l, material: a.materials.get(l.tls)! }, deps)
    listeners.set(l.name, r)
  }
  try {
    for (const l of activated.config.listeners) await startOne(l, activated)
  } catch (e) {
    await Promise.all([...listeners.values()].map((l) => l.drain(0)))
    throw e
  }
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
      const started: Array<Listener.RunningListener> = []
      try {
        for (const l of next.config.listeners) {
          if (listeners.has(l.name) && !replacedNames.has(l.name)) continue
          started.push(
            await Listener.RunningListener.start({ listener: l, material: next.materials.get(l.tls)! }, deps)
          )
        }
      } catch (e) {
        await Promise.all(started.map((l) => l.drain(0)))
        throw e
      }
      for (const [name, running] of replaced) {
        listeners.delete(name)
        void running.drain(next.config.drainTimeoutMs)
      }
      for (const l of next.config.listeners) {
        const running = listeners.get(l.name)
        if (running !== undefined) running.update({ listener: l, material: next.materials.get(l.tls)! })
      }
      for (const l of started) listeners.set(l.name, l)
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
  static readonly layer = (
    activated: Activated,
    deps: { readonly metrics: Metrics.Recorder; readonly log: EventSink }
  ): Layer.Layer<ProxyRuntime, ListenError> =>
    Layer.effect(ProxyRuntime)(
      Effect.acquireRelease(
        Effect.tryPromise({
          try: () => start(activated, deps),
          catch: (cause) => new ListenError({ message: `cannot listen: ${(cause as Error).message}`, cause })
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
