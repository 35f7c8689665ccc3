/**
 * `sleeve run`: the one place where the daemon is assembled — activate the configuration, start
 * every listener and the admin endpoint, reload on SIGHUP or when a referenced file changes, and
 * drain on SIGTERM/SIGINT (the runtime interrupts this effect; the finalizers drain).
 *
 * Reload is all-or-nothing: a new configuration with any error is rejected, the old one stays
 * in force, and the failure is counted (`sleeve_config_reloads_total{result="failed"}`), logged
 * with every problem, and shown on `/status`.
 *
 * With `workers: N` (N > 1) this process is the primary: everything above happens here once
 * (validation, the admin endpoint, file watching, SIGHUP), and the listeners are served by N
 * worker processes (`WorkerPool`, `Worker`) instead of in-process. The data path
 * (`ProxyRuntime`) is imported only by whichever process serves connections.
 */
import type { Certificate, TlsMaterial } from "@sleeve/core"
import { ConfigFile, Crl } from "@sleeve/core"
import { Metrics } from "@sleeve/metrics"
import * as Activation from "@sleeve/proxy/Activation"
import * as EventLog from "@sleeve/proxy/EventLog"
import type * as ProxyRuntime from "@sleeve/proxy/ProxyRuntime"
import { Effect, Result } from "effect"
import cluster from "node:cluster"
import * as Fs from "node:fs"
import * as Workers from "./internal/Workers.ts"
import type * as WorkerPool from "./WorkerPool.ts"

/** Options of `sleeve run`. */
export interface RunOptions {
  /** The configuration file (from `--config` or `SLEEVE_CONFIG`). */
  readonly configPath: string
  /** How often referenced files are checked for changes (ms); default 1000. */
  readonly watchIntervalMs?: number
  /**
   * How long every file the configuration reads must have been left alone before a reload reads
   * it (ms); default 1000. See `settleWait`.
   */
  readonly settleMs?: number
  /** Called once every listener and the admin endpoint are bound (`sleeve demo` prints its commands then). */
  readonly onReady?: (ready: ReadyInfo) => void
  /** Where connection events go; JSON lines on stdout by default. */
  readonly log?: EventLog.EventSink
}

/** Bound addresses, once ready. */
export interface ReadyInfo {
  readonly listeners: ReadonlyArray<{ readonly name: string; readonly mode: string; readonly listen: string }>
  readonly admin: string | undefined
}

const certSummary = (c: Certificate.Certificate) => ({
  subject: c.subjectString,
  issuer: c.issuerString,
  notBefore: c.notBefore.toISOString(),
  notAfter: c.notAfter.toISOString(),
  fingerprint256: c.fingerprint256
})

const expiries = (a: Activation.Activated): Array<Metrics.CertificateExpiry> => {
  const out: Array<Metrics.CertificateExpiry> = []
  for (const [name, m] of a.materials) {
    const leaf = m.chain?.[0]
    if (leaf !== undefined) out.push({ tlsConfig: name, kind: "own", notAfter: leaf.notAfter })
    for (const ca of m.ca) out.push({ tlsConfig: name, kind: "ca", notAfter: ca.notAfter })
  }
  return out
}

// Revocation (issue 13 §2) -------------------------------------------------------------------

const crlNextUpdates = (a: Activation.Activated): Array<Metrics.CrlNextUpdate> =>
  [...a.materials].flatMap(([name, m]) =>
    m.crls.flatMap((c) => (c.nextUpdate === undefined ? [] : [{ tlsConfig: name, nextUpdate: c.nextUpdate }]))
  )

/** The CRLs of a TLS configuration for `/status`, with their staleness now. */
const crlSummary = (m: TlsMaterial.Material, now: Date) =>
  m.config.crlFile === undefined
    ? undefined
    : {
        file: m.config.crlFile,
        crlStale: m.config.crlStale,
        appliedBy: m.revocation,
        lists: m.crls.map((c) => ({
          issuer: c.issuerString,
          thisUpdate: c.thisUpdate.toISOString(),
          nextUpdate: c.nextUpdate?.toISOString() ?? null,
          crlNumber: c.crlNumber ?? null,
          revoked: c.revokedCount,
          stale: Crl.isStale(c, now)
        }))
      }

/**
 * The soonest nextUpdate still ahead, across every CRL in force: when it passes, the
 * configuration is activated again (the existing reload path), so the stale CRL is reported
 * and `crlStale: warn` hands the CRLs from OpenSSL to Sleeve.
 */
const nextCrlDeadline = (a: Activation.Activated, now: number): number | undefined => {
  let soonest: number | undefined
  for (const m of a.materials.values())
    for (const c of m.crls) {
      const t = c.nextUpdate?.getTime()
      if (t !== undefined && t >= now && (soonest === undefined || t < soonest)) soonest = t
    }
  return soonest
}

/**
 * What serves the listeners: the in-process proxy (`ProxyRuntime.Running`), or the pool of
 * workers, which also answers `/status` details and `/metrics` for all of them.
 */
type Backend = Pick<ProxyRuntime.Running, "current" | "drain" | "status"> & {
  readonly reload: (next: Activation.Activated, snapshot: Activation.Snapshot) => Promise<void>
  readonly details?: WorkerPool.Pool["details"]
  readonly metricsText?: WorkerPool.Pool["metricsText"]
}

/** Activates the configuration, recording the bytes read (the workers, if any, get exactly those). */
const activate = (path: string) => {
  const reader = Activation.recordingReader()
  const result = Activation.activate(path, { now: reader.now, readFile: reader.readFile })
  return { result, take: reader.take }
}

/** Runs every listener of the configuration until interrupted; fails on an invalid configuration. */
export const run = (options: RunOptions): Effect.Effect<void, Error> =>
  cluster.isWorker
    ? Effect.flatMap(
        Effect.promise(() => import("./Worker.ts")),
        (Worker) => Worker.run(options)
      )
    : serve(options)

const serve = (options: RunOptions): Effect.Effect<void, Error> =>
  Effect.scoped(
    Effect.gen(function* () {
      const log = options.log ?? EventLog.makeJson()
      const metrics = Metrics.make()
      const activated = activate(options.configPath)
      const first = activated.result
      if (Result.isFailure(first)) return yield* Effect.fail(first.failure)
      for (const w of first.success.warnings) log("warn", "config_warning", { problem: ConfigFile.formatProblem(w) })
      metrics.replaceCertificates(expiries(first.success))
      metrics.replaceCrls(crlNextUpdates(first.success))
      metrics.configLoaded()
      const workers = Workers.count(first.success.config.workers)

      // Draining runs once, from whichever finalizer comes first: normally the one added after
      // the admin endpoint (finalizers run in reverse order), so that `/readyz` answers 503 and
      // `/metrics` stays scrapable while connections finish; the proxy's own release covers a
      // start that fails before the admin endpoint is up.
      let draining: Promise<void> | undefined
      const drainOnce = (running: Backend): Promise<void> =>
        (draining ??= (async () => {
          metrics.setReady(false)
          const deadlineMs = running.current().config.drainTimeoutMs
          log("info", "draining", { deadlineMs, activeConnections: countActive(running) })
          const closed = await running.drain(deadlineMs)
          log("info", "stopped", { closedAtDeadline: closed })
        })())
      const proxy: Backend = yield* Effect.acquireRelease(
        Effect.tryPromise({
          try: async (): Promise<Backend> => {
            // Taken either way. With workers the primary keeps the bytes read (key files
            // included) in memory for as long as they are in force: a restarted worker starts
            // from them. Without workers they are dropped here.
            const snapshot = activated.take()
            return workers > 1
              ? (await import("./WorkerPool.ts")).start(first.success, snapshot, {
                  configPath: options.configPath,
                  count: workers,
                  metrics,
                  log
                })
              : (await import("@sleeve/proxy/ProxyRuntime")).start(first.success, { metrics, log })
          },
          // A bind failure names the file, the listener's `listen` field, the address and the rule.
          catch: (cause) =>
            (cause as { readonly _tag?: unknown } | null)?._tag === "ListenError"
              ? (cause as ProxyRuntime.ListenError)
              : new Error(`cannot listen: ${(cause as Error).message}`, { cause })
        }),
        (running) => Effect.promise(() => drainOnce(running))
      )

      const lastReload: { result: "ok" | "failed"; at: string; problems: ReadonlyArray<string> } = {
        result: "ok",
        at: new Date().toISOString(),
        problems: []
      }
      // A trigger that arrives while a reload is in flight (or waits for files to settle) is not
      // dropped: the files may have changed again after that reload read them, so one more
      // reload runs when it ends.
      let reloading = false
      let pending: string | undefined
      const settleMs = options.settleMs ?? 1000
      let waiting: NodeJS.Timeout | undefined
      /** When the current wait for files to settle began (reset once a reload has run). */
      let waitingSince: number | undefined
      /**
       * Defers the reload while a file is being written: it runs again when every file has been
       * left alone for `settleMs`. Returns false when the files are settled. Files that keep
       * changing for longer than `maxSettleWaitMs` fail the reload (returns true): reading them
       * mid-write could activate a configuration cut short, e.g. a YAML file ending before
       * `verifyPeer: require` (fail closed: the configuration in force stays; the next change of
       * a file tries again).
       */
      /** Counts a reload's result and keeps it for /status. */
      const record = (result: "ok" | "failed", problems: ReadonlyArray<string>) => {
        metrics.configReload(result)
        Object.assign(lastReload, { result, at: new Date().toISOString(), problems })
      }
      /** A reload that changed nothing: logged once with why, and recorded. */
      const failed = (trigger: string, problems: ReadonlyArray<string>) => {
        log("error", "reload_failed", { trigger, problems, note: "the previous configuration stays active" })
        record("failed", problems)
      }
      const deferWhileWritten = (trigger: string, files: ReadonlyArray<string>): boolean => {
        const now = Date.now()
        const busy = settleWait(files, settleMs, now)
        if (busy === undefined) return false
        if (waitingSince !== undefined && now - waitingSince > maxSettleWaitMs) {
          const problem = `${busy.file}: still changing after ${maxSettleWaitMs / 1000}s of waiting for it to be left alone for ${settleMs} ms: not read (write it to a temporary file and rename that over it)`
          waitingSince = undefined
          pending = undefined
          failed(trigger, [problem])
          return true
        }
        if (waitingSince === undefined) {
          waitingSince = now
          // Logged once per wait, not once per trigger (a SIGHUP storm during a write).
          log("info", "reload_waiting", { trigger, file: busy.file, settleMs })
        }
        pending ??= trigger
        waiting = setTimeout(() => {
          waiting = undefined
          const t = pending ?? trigger
          pending = undefined
          reload(t)
        }, busy.waitMs)
        return true
      }
      const reload = (trigger: string) => {
        if (draining !== undefined) return
        if (reloading) {
          pending = trigger
          return
        }
        // Waiting for files to settle: the reload that runs then is logged with the trigger that
        // started the wait (a SIGHUP stays a SIGHUP when the watcher sees the same write).
        if (waiting !== undefined) {
          pending ??= trigger
          return
        }
        // A certificate or key written in place (truncated, then written in pieces) passes through
        // states that parse: a chain cut after its leaf is a valid one-certificate chain that
        // matches the key. So no reload reads a file changed less than `settleMs` ago, whatever
        // triggered it. (A complete file renamed into place keeps the mtime it was written with:
        // the reload waits only for what is left of `settleMs` since then.)
        if (deferWhileWritten(trigger, proxy.current().files)) return
        const { result: next, take } = activate(options.configPath)
        // A file changed while it was being read, or one the new configuration reads for the
        // first time is still being written: read everything again once it has settled.
        if (Result.isSuccess(next) && deferWhileWritten(trigger, next.success.files)) return
        reloading = true
        waitingSince = undefined
        /** The reload is over: run the one that arrived meanwhile, if any. */
        const done = () => {
          reloading = false
          const again = pending
          pending = undefined
          if (again !== undefined) reload(again)
        }
        if (Result.isFailure(next)) {
          const problems = next.failure.problems.filter((p) => p.severity === "error").map(ConfigFile.formatProblem)
          failed(trigger, problems)
          done()
          return
        }
        if (Workers.count(next.success.config.workers) !== workers) {
          log("warn", "workers_unchanged", {
            workers,
            note: "a changed workers setting takes effect at the next start; the rest of the file is reloaded"
          })
        }
        proxy
          .reload(next.success, take())
          .then(() => {
            metrics.replaceCertificates(expiries(next.success))
            metrics.replaceCrls(crlNextUpdates(next.success))
            armCrlTimer(next.success)
            watch(next.success.files)
            log("info", "reloaded", { trigger, warnings: next.success.warnings.map(ConfigFile.formatProblem) })
            record("ok", [])
            done()
          })
          .catch((e: unknown) => {
            // e.g. a new listener's address in use: nothing changed, the old listeners serve on.
            failed(trigger, [e instanceof Error ? e.message : String(e)])
            done()
          })
      }

      // Reload on a change of any file the configuration read (polling follows symlinks, so a
      // Kubernetes Secret update, which swaps a symlink, is seen too).
      const watched = new Map<string, (curr: Fs.Stats, prev: Fs.Stats) => void>()
      const interval = options.watchIntervalMs ?? 1000
      const watch = (files: ReadonlyArray<string>) => {
        for (const [f, l] of watched) {
          if (!files.includes(f)) {
            Fs.unwatchFile(f, l)
            watched.delete(f)
          }
        }
        for (const f of files) {
          if (watched.has(f)) continue
          const l = (curr: Fs.Stats, prev: Fs.Stats) => {
            if (curr.mtimeMs !== prev.mtimeMs || curr.ino !== prev.ino || curr.size !== prev.size) reload(`file:${f}`)
          }
          Fs.watchFile(f, { interval, persistent: false }, l)
          watched.set(f, l)
        }
      }
      watch(first.success.files)
      // A CRL reaching its nextUpdate: re-activate then (setTimeout holds at most ~24.8 days, so a
      // later deadline re-arms on the way).
      let crlTimer: NodeJS.Timeout | undefined
      const armCrlTimer = (a: Activation.Activated) => {
        clearTimeout(crlTimer)
        const deadline = nextCrlDeadline(a, Date.now())
        if (deadline === undefined) return
        const wait = deadline - Date.now() + 1000
        crlTimer = setTimeout(
          () => (wait > maxTimerMs ? armCrlTimer(proxy.current()) : reload("crl_next_update")),
          Math.min(Math.max(wait, 0), maxTimerMs)
        )
        crlTimer.unref()
      }
      armCrlTimer(first.success)
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          clearTimeout(crlTimer)
          clearTimeout(waiting)
        })
      )
      const onHup = () => reload("SIGHUP")
      process.on("SIGHUP", onHup)
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          process.off("SIGHUP", onHup)
          for (const [f, l] of watched) Fs.unwatchFile(f, l)
        })
      )

      let adminErrors = 0
      let adminErrorLoggedAt = Number.NEGATIVE_INFINITY
      const admin = first.success.config.admin
      let adminAddress: string | undefined
      if (admin !== undefined && admin.listen._tag === "Tcp") {
        // Imported here: a worker process (which serves no admin endpoint) never loads it.
        const StatusServer = yield* Effect.promise(() => import("./StatusServer.ts"))
        const served = yield* Effect.mapError(
          StatusServer.serve(admin.listen, {
            metrics:
              proxy.metricsText === undefined
                ? metrics
                : { ...metrics, metricsText: Effect.promise(proxy.metricsText) },
            ready: () => draining === undefined && proxy.status().ready,
            // At most one line a minute (an accept error repeats for as long as its cause lasts).
            onServerError: (e) => {
              const now = Date.now()
              adminErrors++
              if (now - adminErrorLoggedAt < 60_000) return
              log("warn", "admin_error", { error: e.message, count: adminErrors })
              adminErrorLoggedAt = now
              adminErrors = 0
            },
            status: async () => {
              const a = proxy.current()
              const details = await proxy.details?.()
              return {
                ready: draining === undefined && proxy.status().ready,
                draining: draining !== undefined,
                configFile: a.config.file,
                listeners: details?.listeners ?? proxy.status().listeners,
                ...(details === undefined ? {} : { workers: details.workers }),
                tls: [...a.materials.values()].map((m) => ({
                  name: m.config.name,
                  type: m.config.type,
                  verifyPeer: m.config.verifyPeer,
                  authorizedPeers: m.config.authorizedPeers.length,
                  certificate: m.chain?.[0] === undefined ? undefined : certSummary(m.chain[0]),
                  ca: m.ca.map(certSummary),
                  crl: crlSummary(m, new Date())
                })),
                policy: a.config.policy,
                // Warnings of the activation in force: stale CRLs, CAs without a CRL, expiring
                // certificates, listeners that allow plaintext on the network.
                warnings: [...a.warnings, ...ConfigFile.plaintextWarnings(a.config)].map(ConfigFile.formatProblem),
                lastReload
              }
            }
          }),
          (e) => new Error(`cannot serve the admin endpoint: ${e.message}`, { cause: e })
        )
        adminAddress = served.url
        // Runs before the admin endpoint closes (see `drainOnce`).
        yield* Effect.addFinalizer(() => Effect.promise(() => drainOnce(proxy)))
      }
      metrics.setReady(true)
      const ready: ReadyInfo = {
        listeners: proxy.status().listeners.map((l) => ({ name: l.name, mode: l.mode, listen: l.listen })),
        admin: adminAddress
      }
      log("info", "ready", { ...ready })
      options.onReady?.(ready)
      return yield* Effect.never
    })
  )

const maxTimerMs = 2_147_483_647

/** A reload waits at most this long for files that keep changing. */
const maxSettleWaitMs = 30_000

/**
 * The file among `files` changed most recently, when that was less than `settleMs` before `now`,
 * and how long until it will have been left alone for `settleMs` (symlinks are followed). A file
 * that cannot be read is not waited for (activation reports it); an mtime in the future (a clock
 * set back) counts as settled.
 */
const settleWait = (
  files: ReadonlyArray<string>,
  settleMs: number,
  now: number
): { readonly file: string; readonly waitMs: number } | undefined => {
  let busy: { file: string; waitMs: number } | undefined
  for (const file of files) {
    let age: number
    try {
      age = now - Fs.statSync(file).mtimeMs
    } catch {
      continue
    }
    if (age < 0 || age >= settleMs) continue
    const waitMs = Math.ceil(settleMs - age)
    if (busy === undefined || waitMs > busy.waitMs) busy = { file, waitMs }
  }
  return busy
}

const countActive = (running: Backend): number =>
  running.status().listeners.reduce((n, l) => n + l.activeConnections, 0)
