/**
 * The primary of `sleeve run` with `workers: N` (N > 1): it validates the configuration, starts N
 * worker processes (`Worker.ts`) with `node:cluster`, restarts one that dies, and gives
 * `Sidecar` the same runtime interface a single-process proxy has, so reload, drain, `/status`,
 * `/readyz` and `/metrics` work the same with one process or many. The primary never loads the
 * data path: it imports types only from @sleeve/proxy's listener and runtime modules.
 *
 * How connections reach the workers: `node:cluster` with `SCHED_NONE`. The primary binds each
 * listening socket once and shares it with every worker, and the workers accept from it
 * directly (the kernel hands each connection to one of them). Compared with the alternatives,
 * measured on this project's 2-core machine (/work/notes/workers-figures.md):
 *
 * - cluster round-robin (`SCHED_RR`, Node's default) makes the primary accept every connection
 *   and pass it to a worker over IPC: that cost 0.5–0.8 ms of CPU per connection on top of a
 *   ~0.9 ms TLS handshake, and makes the primary a serial bottleneck;
 * - N processes binding with `reusePort` cost no more than `SCHED_NONE`, but an address already
 *   taken by another process with SO_REUSEPORT is silently shared instead of failing, port 0
 *   would be a different port in each worker, and connections queued on a closing worker's own
 *   socket are reset by the kernel;
 * - `SCHED_NONE` costs what one process costs per connection, fails an address in use once (the
 *   primary binds it), gives one port for port 0, and keeps one accept queue, so a worker that
 *   dies loses only the connections it had accepted. Its known weakness is balance (Node's docs
 *   report skew with many idle keep-alive connections); measured here it spread 770/778
 *   handshakes under load and 13/7 of 20 sequential connections, because a worker busy with a
 *   handshake is not waiting in accept. Bytes never pass through the primary with any of them.
 *
 * All-or-nothing across workers: every worker activates the bytes the primary validated
 * (`Activation.Snapshot`), and a reload that any worker cannot apply (a new listener that
 * cannot bind) is undone in the workers that applied it, so they all stay on the old
 * configuration. Worker starts and reloads are serialised, so a restarted worker always gets
 * the configuration in force.
 */
import * as Metrics from "@sleeve/metrics/Metrics"
import type { Activated, Snapshot } from "@sleeve/proxy/Activation"
import type { EventSink } from "@sleeve/proxy/EventLog"
import type * as Listener from "@sleeve/proxy/Listener"
import { listenError } from "@sleeve/proxy/ListenError"
import type * as ProxyRuntime from "@sleeve/proxy/ProxyRuntime"
import { ConfigFile } from "@sleeve/core"
import cluster, { type Worker } from "node:cluster"
import * as Net from "node:net"
import * as Workers from "./internal/Workers.ts"

/** Restart backoff: the first restart after a stable run waits `restartBaseMs`, then it doubles. */
export const restartBaseMs = 250
/** The longest wait before a restart. */
export const restartMaxMs = 30_000
/** A worker that served this long before it died is restarted without accumulated backoff. */
export const stableAfterMs = 30_000
/** How long `/status` and `/metrics` wait for a worker's answer. */
const collectTimeoutMs = 2_000
/** How long a reload waits for each worker. */
const reloadTimeoutMs = 60_000

/** One worker as `/status` shows it. */
export interface WorkerInfo {
  readonly worker: number
  readonly pid: number | undefined
  readonly ready: boolean
  /** When it became ready (ISO time). */
  readonly since: string | undefined
  readonly restarts: number
  /** Its listeners, or `undefined` if it did not answer in time. */
  readonly listeners:
    | ReadonlyArray<{ readonly name: string; readonly activeConnections: number; readonly totalConnections: number }>
    | undefined
}

/** The pool, as `Sidecar` drives it (the `ProxyRuntime.Running` calls it uses, plus details). */
export interface Pool {
  readonly current: () => Activated
  readonly reload: (next: Activated, snapshot: Snapshot) => Promise<void>
  /** SIGTERM to every worker (each drains for up to `deadlineMs`); resolves when all exited. */
  readonly drain: (deadlineMs: number) => Promise<number>
  readonly status: () => ProxyRuntime.Status
  /** Listener snapshots summed over the workers, and each worker (asks every worker). */
  readonly details: () => Promise<{
    readonly listeners: ReadonlyArray<Listener.Snapshot>
    readonly workers: ReadonlyArray<WorkerInfo>
  }>
  /** The exposition of the whole sidecar (asks every worker). */
  readonly metricsText: () => Promise<string>
}

/** What the pool needs. */
export interface Options {
  readonly configPath: string
  readonly count: number
  readonly metrics: Metrics.Recorder
  readonly log: EventSink
}

interface Slot {
  readonly index: number
  worker: Worker | undefined
  ready: boolean
  readyAt: number | undefined
  restarts: number
  quickFailures: number
  timer: NodeJS.Timeout | undefined
  readonly pending: Map<number, (reply: Workers.FromWorker | undefined) => void>
  /** The last metrics this slot's current process sent (by pid), for a scrape it is too busy to answer. */
  lastMetrics: { readonly pid: number | undefined; readonly metrics: Metrics.MetricsJson } | undefined
}

/** Sums listener snapshots of the same listener over the workers. */
export const sumListeners = (
  perWorker: ReadonlyArray<ReadonlyArray<Listener.Snapshot>>
): ReadonlyArray<Listener.Snapshot> => {
  const byName = new Map<string, Listener.Snapshot>()
  for (const listeners of perWorker) {
    for (const l of listeners) {
      const seen = byName.get(l.name)
      byName.set(
        l.name,
        seen === undefined
          ? l
          : {
              ...seen,
              bound: seen.bound && l.bound,
              activeConnections: seen.activeConnections + l.activeConnections,
              totalConnections: seen.totalConnections + l.totalConnections
            }
      )
    }
  }
  return [...byName.values()]
}

/**
 * Binds and closes every address a reload would newly listen on (port 0 aside), in the primary:
 * an address in use fails the reload here, once, before any worker tries it. (Workers never
 * meet a failing listen: with `SCHED_NONE`, Node 24's cluster worker asserts, and exits, when a
 * listen retried after a failed one comes back with a handle.)
 */
const probeNewAddresses = async (current: Activated, next: Activated): Promise<void> => {
  const key = (l: ConfigFile.Listener) => `${l.mode}|${ConfigFile.formatAddress(l.listen)}`
  const before = new Map(current.config.listeners.map((l) => [l.name, key(l)]))
  for (const l of next.config.listeners) {
    if (before.get(l.name) === key(l) || l.listen._tag !== "Tcp" || l.listen.port === 0) continue
    const { host, port } = l.listen
    await new Promise<void>((resolve, reject) => {
      const probe = Net.createServer()
      probe.once("error", (e) => reject(listenError(next.config, l, e)))
      probe.listen({ host, port, ipv6Only: false, exclusive: true }, () => probe.close(() => resolve()))
    })
  }
}

/** Starts `options.count` workers on `first`; rejects (with every started worker stopped) if one cannot start. */
export const start = async (first: Activated, firstSnapshot: Snapshot, options: Options): Promise<Pool> => {
  const { log, metrics } = options
  const workerMetrics = Metrics.makeWorkerRecorder(metrics)
  let current = first
  let snapshot = firstSnapshot
  let started = false
  let stopping = false
  let nextId = 0
  let closedAtDeadline = 0
  /** The listeners as the workers last reported them (at start or after a reload). */
  let readyListeners: ReadonlyArray<Listener.Snapshot> = []
  const slots: Array<Slot> = Array.from({ length: options.count }, (_, i) => ({
    index: i + 1,
    worker: undefined,
    ready: false,
    readyAt: undefined,
    restarts: 0,
    quickFailures: 0,
    timer: undefined,
    pending: new Map(),
    lastMetrics: undefined
  }))
  const updateActive = () => workerMetrics.setActive(slots.filter((s) => s.ready).length)

  // Starts and reloads run one at a time, in order.
  let queue: Promise<unknown> = Promise.resolve()
  const serial = <A>(f: () => Promise<A>): Promise<A> => {
    const run = queue.then(f)
    queue = run.catch(() => {})
    return run
  }

  const send = (w: Worker, message: Workers.ToWorker): void => {
    if (w.isConnected()) w.send(message, undefined, () => {})
  }
  const request = (
    slot: Slot,
    message: (id: number) => Workers.ToWorker,
    timeoutMs: number
  ): Promise<Workers.FromWorker | undefined> =>
    new Promise((resolve) => {
      const w = slot.worker
      if (w === undefined || !w.isConnected()) return resolve(undefined)
      const id = ++nextId
      const timer = setTimeout(() => done(undefined), timeoutMs)
      const done = (reply: Workers.FromWorker | undefined) => {
        clearTimeout(timer)
        slot.pending.delete(id)
        resolve(reply)
      }
      slot.pending.set(id, done)
      send(w, message(id))
    })

  // See the module header: workers accept from the socket the primary shares.
  cluster.schedulingPolicy = cluster.SCHED_NONE
  // No `cluster.setupPrimary`: its defaults are what a worker must run, the primary's own
  // command line — `process.execArgv` (the Node and V8 flags of the launcher: shebang,
  // ExecStart, `node --flag dist/main.js`; NODE_OPTIONS arrives through the environment),
  // `process.argv[1]` (the same artefact, dist/main.js and its chunks, or src/main.ts in
  // development) and `process.argv.slice(2)` (`run --config …`). The workers e2e test checks
  // every worker's /proc cmdline against the primary's.
  /** Forks the worker of `slot`; resolves with `undefined` once it is ready, or with why it is not. */
  const spawn = (slot: Slot): Promise<string | undefined> =>
    new Promise((resolve) => {
      const w = cluster.fork({ [Workers.slotVariable]: String(slot.index) })
      slot.worker = w
      slot.ready = false
      // How long a worker lived is measured from its own ready (onExit's backoff): not the last one's.
      slot.readyAt = undefined
      let settled = false
      const settle = (error: string | undefined) => {
        if (settled) return
        settled = true
        resolve(error)
      }
      w.once("online", () => send(w, { type: "sleeve:start", configPath: options.configPath, snapshot }))
      w.on("message", (m: unknown) => {
        if (!Workers.isFromWorker(m)) return
        switch (m.type) {
          case "sleeve:ready":
            slot.ready = true
            slot.readyAt = Date.now()
            readyListeners = m.listeners
            updateActive()
            settle(undefined)
            return
          case "sleeve:start-failed":
            settle(m.error)
            return
          case "sleeve:drained":
            closedAtDeadline += m.closedAtDeadline
            return
          default:
            slot.pending.get(m.id)?.(m)
        }
      })
      w.on("error", () => {})
      w.once("exit", (code, signal) => {
        settle(`worker ${slot.index} exited (${signal ?? `code ${code}`}) before it was ready`)
        onExit(slot, w, code, signal)
      })
    })

  /** What the workers that exited had counted (their last scrape): see `Metrics.retire`. */
  let retired: Promise<Metrics.MetricsJson | undefined> = Promise.resolve(undefined)

  const onExit = (slot: Slot, w: Worker, code: number | null, signal: string | null) => {
    if (slot.worker !== w) return
    slot.worker = undefined
    slot.ready = false
    const last = slot.lastMetrics
    slot.lastMetrics = undefined
    if (last !== undefined && last.pid === w.process.pid) {
      const exited = last.metrics
      retired = retired.then((r) => Metrics.retire(r, exited))
    }
    for (const reply of [...slot.pending.values()]) reply(undefined)
    updateActive()
    if (!started || stopping) return
    const lived = slot.readyAt === undefined ? 0 : Date.now() - slot.readyAt
    slot.quickFailures = lived >= stableAfterMs ? 0 : slot.quickFailures + 1
    const delay = Math.min(restartMaxMs, restartBaseMs * 2 ** Math.max(0, slot.quickFailures - 1))
    log("warn", "worker_exited", {
      worker: slot.index,
      pid: w.process.pid,
      code,
      signal,
      restartInMs: delay
    })
    slot.timer = setTimeout(() => {
      slot.timer = undefined
      if (stopping) return
      slot.restarts++
      workerMetrics.restarted()
      void serial(() => (stopping ? Promise.resolve(undefined) : spawn(slot))).then((error) => {
        if (error === undefined) log("info", "worker_restarted", { worker: slot.index, pid: slot.worker?.process.pid })
        else log("error", "worker_start_failed", { worker: slot.index, error })
      })
    }, delay)
  }

  const exited = (w: Worker): Promise<void> =>
    new Promise((resolve) => {
      if (w.isDead()) return resolve()
      w.once("exit", () => resolve())
    })
  /** SIGTERM to every worker; SIGKILL to those still running `graceMs` later. */
  const stopAll = async (graceMs: number): Promise<void> => {
    stopping = true
    for (const s of slots) if (s.timer !== undefined) clearTimeout(s.timer)
    const live = slots.flatMap((s) => (s.worker === undefined ? [] : [s.worker]))
    for (const w of live) w.process.kill("SIGTERM")
    const kill = setTimeout(() => {
      for (const w of live) if (!w.isDead()) w.process.kill("SIGKILL")
    }, graceMs)
    await Promise.all(live.map(exited))
    clearTimeout(kill)
  }

  const errors = await serial(() => Promise.all(slots.map(spawn)))
  const failure = errors.find((e) => e !== undefined)
  if (failure !== undefined) {
    await stopAll(5_000)
    throw new Error(failure)
  }
  started = true
  log("info", "workers_started", {
    workers: slots.map((s) => ({ worker: s.index, pid: s.worker?.process.pid }))
  })

  const live = () => slots.filter((s) => s.worker !== undefined && s.ready)

  return {
    current: () => current,
    reload: (next, nextSnapshot) =>
      serial(async () => {
        await probeNewAddresses(current, next)
        const targets = live()
        const asked = targets.map((s) => s.worker?.process.pid)
        const apply = (s: Slot, snap: Snapshot) =>
          request(s, (id) => ({ type: "sleeve:reload", id, snapshot: snap }), reloadTimeoutMs)
        const replies = await Promise.all(targets.map((s) => apply(s, nextSnapshot)))
        // Committed only when every worker confirmed it: one that exited meanwhile fails the
        // reload too (its replacement starts on the configuration in force).
        const problems = replies.flatMap((r, i) =>
          r === undefined && targets[i]!.worker === undefined
            ? [`worker ${targets[i]!.index}: exited during the reload`]
            : r === undefined || r.type !== "sleeve:reloaded"
              ? [`worker ${targets[i]!.index}: no answer within ${reloadTimeoutMs / 1000}s`]
              : r.error === undefined
                ? []
                : [`worker ${targets[i]!.index}: ${r.error}`]
        )
        if (problems.length === 0) {
          current = next
          snapshot = nextSnapshot
          const reported = replies.find((r) => r?.type === "sleeve:reloaded" && r.listeners !== undefined)
          if (reported?.type === "sleeve:reloaded" && reported.listeners !== undefined)
            readyListeners = reported.listeners
          return
        }
        // Undo it where it was applied, so that every worker stays on the configuration in force.
        const applied = targets.filter((_, i) => {
          const r = replies[i]
          return r !== undefined && r.type === "sleeve:reloaded" && r.error === undefined
        })
        const undone = await Promise.all(applied.map((s) => apply(s, snapshot)))
        // A worker that did not answer may still apply the new configuration later, and one whose
        // undo failed is on it: either would serve something other than the configuration in
        // force. Kill them; their replacements start from the snapshot in force.
        const unknown = [
          // (Not a replacement that started meanwhile: it runs the snapshot in force.)
          ...targets.filter(
            (s, i) => replies[i] === undefined && s.worker !== undefined && s.worker.process.pid === asked[i]
          ),
          ...applied.filter((_, i) => {
            const r = undone[i]
            return r === undefined || r.type !== "sleeve:reloaded" || r.error !== undefined
          })
        ]
        for (const s of new Set(unknown)) {
          log("error", "worker_killed", {
            worker: s.index,
            pid: s.worker?.process.pid,
            reason: "its configuration is unknown after a failed reload; it is replaced on the configuration in force"
          })
          s.worker?.process.kill("SIGKILL")
        }
        throw new Error(problems.join("; "))
      }),
    drain: async (deadlineMs) => {
      // Each worker bounds its own drain by the deadline; the grace covers a worker that hangs.
      await stopAll(deadlineMs + 10_000)
      return closedAtDeadline
    },
    status: () => ({
      // Connection counts are the workers' (`details`); this synchronous view has none.
      listeners: readyListeners.map((l) => ({
        ...l,
        bound: live().length > 0,
        activeConnections: 0,
        totalConnections: 0
      })),
      ready: started && !stopping && live().length > 0
    }),
    details: async () => {
      const replies = await Promise.all(
        slots.map((s) =>
          s.ready ? request(s, (id) => ({ type: "sleeve:collect", id, what: "status" }), collectTimeoutMs) : undefined
        )
      )
      const perWorker = replies.map((r) => (r !== undefined && r.type === "sleeve:status" ? r.listeners : undefined))
      return {
        listeners: sumListeners(perWorker.flatMap((l) => (l === undefined ? [] : [l]))),
        workers: slots.map((s, i) => ({
          worker: s.index,
          pid: s.worker?.process.pid,
          ready: s.ready,
          since: s.readyAt === undefined || !s.ready ? undefined : new Date(s.readyAt).toISOString(),
          restarts: s.restarts,
          listeners: perWorker[i]?.map((l) => ({
            name: l.name,
            activeConnections: l.activeConnections,
            totalConnections: l.totalConnections
          }))
        }))
      }
    },
    metricsText: async () => {
      // A worker too busy to answer within collectTimeoutMs is summed with the last metrics it
      // sent: leaving it out would make the sidecar's counters go down for that scrape, which
      // Prometheus reads as a counter reset.
      const collected = await Promise.all(
        live().map(async (s) => {
          const pid = s.worker?.process.pid
          const r = await request(s, (id) => ({ type: "sleeve:collect", id, what: "metrics" }), collectTimeoutMs)
          if (r !== undefined && r.type === "sleeve:metrics") {
            s.lastMetrics = { pid, metrics: r.metrics }
            return [r.metrics]
          }
          return s.lastMetrics !== undefined && s.lastMetrics.pid === pid ? [s.lastMetrics.metrics] : []
        })
      )
      const gone = await retired
      return Metrics.aggregateText(metrics.registry, [...collected.flat(), ...(gone === undefined ? [] : [gone])])
    }
  }
}
