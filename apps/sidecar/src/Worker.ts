/**
 * One worker of `sleeve run` with `workers: N` (N > 1): a single-threaded data path, started by
 * the primary (`WorkerPool`) with `node:cluster`, serving every listener of the configuration the
 * primary validated.
 *
 * A worker reads no file: the primary sends the bytes it validated (`Activation.Snapshot`), so
 * every worker activates exactly the same configuration, at start and at each reload. It serves
 * no admin endpoint and watches no file; it answers the primary's requests for its listener
 * snapshots and its metrics (as JSON, for `Metrics.aggregateText`). SIGTERM/SIGINT drain it
 * exactly as they drain a single-process sidecar (the primary sends SIGTERM); SIGHUP is ignored,
 * because reloading is the primary's decision (a terminal hang-up reaches the whole group).
 *
 * Listeners bind through the primary (cluster, `SCHED_NONE`): every worker accepts from the one
 * socket the primary bound for an address, so a port 0 is the same port in every worker.
 */
import * as Metrics from "@sleeve/metrics/Metrics"
import * as Activation from "@sleeve/proxy/Activation"
import * as EventLog from "@sleeve/proxy/EventLog"
import * as ProxyRuntime from "@sleeve/proxy/ProxyRuntime"
import { Effect } from "effect"
import * as Workers from "./internal/Workers.ts"
import type { RunOptions } from "./Sidecar.ts"

const send = (message: Workers.FromWorker): Promise<void> =>
  new Promise((resolve) => {
    if (process.send === undefined || !process.connected) return resolve()
    process.send(message, undefined, {}, () => resolve())
  })

const waitForStart = Effect.callback<Extract<Workers.ToWorker, { type: "sleeve:start" }>>((resume) => {
  const onMessage = (m: unknown) => {
    if (Workers.isToWorker(m) && m.type === "sleeve:start") {
      process.off("message", onMessage)
      resume(Effect.succeed(m))
    }
  }
  process.on("message", onMessage)
  return Effect.sync(() => process.off("message", onMessage))
})

/**
 * A worker that cannot start tells the primary why and exits 1 at once: the primary reports the
 * failure once for all workers, so nothing is printed here.
 */
const startFailed = (error: string): Effect.Effect<never> =>
  Effect.promise(async () => {
    await send({ type: "sleeve:start-failed", error })
    process.exit(1)
  }) as Effect.Effect<never>

/** Runs this process as a worker until SIGTERM/SIGINT. */
export const run = (options: RunOptions): Effect.Effect<void, Error> =>
  Effect.scoped(
    Effect.gen(function* () {
      const slot = Number(process.env[Workers.slotVariable] ?? "0")
      const base = options.log ?? EventLog.makeJson()
      const log: EventLog.EventSink = (level, event, fields) => base(level, event, { worker: slot, ...fields })
      const metrics = Metrics.make()
      const ignoreHup = () => {}
      process.on("SIGHUP", ignoreHup)
      yield* Effect.addFinalizer(() => Effect.sync(() => process.off("SIGHUP", ignoreHup)))

      const start = yield* waitForStart
      const first = Activation.activate(start.configPath, Activation.snapshotOptions(start.snapshot))
      if (first._tag === "Failure") return yield* startFailed(first.failure.message)

      let draining: Promise<void> | undefined
      let running: ProxyRuntime.Running | undefined
      const onMessage = (m: unknown) => {
        if (!Workers.isToWorker(m) || running === undefined) return
        switch (m.type) {
          case "sleeve:reload": {
            if (draining !== undefined) {
              void send({ type: "sleeve:reloaded", id: m.id, error: "draining" })
              return
            }
            const next = Activation.activate(start.configPath, Activation.snapshotOptions(m.snapshot))
            if (next._tag === "Failure") {
              void send({ type: "sleeve:reloaded", id: m.id, error: next.failure.message })
              return
            }
            running.reload(next.success).then(
              () => send({ type: "sleeve:reloaded", id: m.id, listeners: running?.status().listeners ?? [] }),
              (e: unknown) => send({ type: "sleeve:reloaded", id: m.id, error: (e as Error).message ?? String(e) })
            )
            return
          }
          case "sleeve:collect": {
            if (m.what === "status")
              void send({ type: "sleeve:status", id: m.id, listeners: running.status().listeners })
            else
              void metrics.registry
                .getMetricsAsJSON()
                .then((json) => send({ type: "sleeve:metrics", id: m.id, metrics: json }))
            return
          }
          case "sleeve:start":
            return
        }
      }
      // Added before the proxy, so it is removed after the drain: `/status` and `/metrics` keep
      // answering while connections finish.
      process.on("message", onMessage)
      yield* Effect.addFinalizer(() => Effect.sync(() => process.off("message", onMessage)))

      const drainOnce = (r: ProxyRuntime.Running): Promise<void> =>
        (draining ??= (async () => {
          const deadlineMs = r.current().config.drainTimeoutMs
          const active = r.status().listeners.reduce((n, l) => n + l.activeConnections, 0)
          log("info", "draining", { deadlineMs, activeConnections: active })
          const closed = await r.drain(deadlineMs)
          log("info", "stopped", { closedAtDeadline: closed })
          await send({ type: "sleeve:drained", closedAtDeadline: closed })
        })())
      const proxy = yield* Effect.acquireRelease(
        Effect.promise(() =>
          ProxyRuntime.start(first.success, { metrics, log }).then(
            (r) => ({ running: r }),
            (cause: unknown) => ({ error: `cannot listen: ${(cause as Error).message}` })
          )
        ),
        (p) => ("running" in p ? Effect.promise(() => drainOnce(p.running)) : Effect.void)
      )
      if (!("running" in proxy)) return yield* startFailed(proxy.error)
      running = proxy.running
      metrics.setReady(true)
      yield* Effect.promise(() =>
        send({
          type: "sleeve:ready",
          listeners: proxy.running.status().listeners
        })
      )
      return yield* Effect.never
    })
  )
