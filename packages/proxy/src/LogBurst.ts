/**
 * Logging for a fault that comes in bursts (descriptors running out at accept or at the target
 * dial): the first occurrence is logged at once, at `warn`, with what to do about it; the rest of
 * the burst only counts. When the fault has been quiet for `quietMs`, one summary line says how
 * many there were, by reason; a burst that goes on is summarised every `reportEveryMs`, so it
 * is never silent for long. Never a line per occurrence: a flood of identical lines hides
 * everything else in the log and costs what the process is short of.
 *
 * Counting is the caller's job (every occurrence is still a metric); this module only decides
 * what reaches the log. Plain callbacks and timers: it runs on the accept and dial paths.
 */
import type { EventSink } from "./EventLog.ts"

/** How the summary timer is run; `setTimeout` (unref'd) and `Date.now` by default. */
export interface Timers {
  readonly now: () => number
  readonly schedule: (ms: number, run: () => void) => { readonly cancel: () => void }
}

/** Options of {@link make}. */
export interface Options {
  readonly log: EventSink
  /** The event of the first line of a burst, e.g. `accept_failed`. The summary is `<event>_summary`. */
  readonly event: string
  /** Fields every line carries, e.g. the listener. */
  readonly fields: Readonly<Record<string, unknown>>
  /** A burst ends after this long without an occurrence (default 5 s). */
  readonly quietMs?: number
  /** A burst still going is summarised this often (default 60 s). */
  readonly reportEveryMs?: number
  readonly timers?: Timers
}

/** A burst logger for one kind of fault in one place (one listener). */
export interface LogBurst {
  /**
   * One occurrence with its `reason`. The first of a burst is logged with `fields` (the error,
   * the advice); later ones are only counted for the summary.
   */
  readonly record: (reason: string, fields: Readonly<Record<string, unknown>>) => void
  /** Ends a burst in progress now, logging its summary (on drain and stop). */
  readonly flush: () => void
}

/** Default quiet period that ends a burst. */
export const defaultQuietMs = 5000
/** Default period of summaries while a burst goes on. */
export const defaultReportEveryMs = 60_000

const defaultTimers: Timers = {
  now: Date.now,
  schedule: (ms, run) => {
    const t = setTimeout(run, ms)
    t.unref()
    return { cancel: () => clearTimeout(t) }
  }
}

interface Burst {
  readonly startedAt: number
  lastAt: number
  reportedAt: number
  /** Occurrences since the burst started, and since the last summary, by reason. */
  total: number
  readonly byReason: Map<string, number>
  sinceReport: number
  timer: { readonly cancel: () => void } | undefined
}

/** Builds a burst logger. */
export const make = (options: Options): LogBurst => {
  const quietMs = options.quietMs ?? defaultQuietMs
  const reportEveryMs = options.reportEveryMs ?? defaultReportEveryMs
  const timers = options.timers ?? defaultTimers
  const summary = `${options.event}_summary`
  let burst: Burst | undefined

  const report = (b: Burst, ended: boolean) => {
    const now = timers.now()
    options.log(ended ? "info" : "warn", summary, {
      ...options.fields,
      ended,
      count: b.total,
      sinceLastSummary: b.sinceReport,
      reasons: Object.fromEntries(b.byReason),
      durationMs: Math.max(0, (ended ? b.lastAt : now) - b.startedAt)
    })
    b.reportedAt = now
    b.sinceReport = 0
  }

  // One timer per burst, re-armed when it fires rather than on every occurrence.
  const arm = (b: Burst, ms: number) => {
    b.timer = timers.schedule(Math.max(1, ms), () => {
      b.timer = undefined
      if (burst !== b) return
      const now = timers.now()
      if (now - b.lastAt >= quietMs) {
        burst = undefined
        report(b, true)
        return
      }
      if (now - b.reportedAt >= reportEveryMs) {
        if (b.sinceReport > 0) report(b, false)
        else b.reportedAt = now
      }
      arm(b, Math.min(quietMs - (now - b.lastAt), reportEveryMs - (now - b.reportedAt)))
    })
  }

  return {
    record: (reason, fields) => {
      const now = timers.now()
      if (burst === undefined) {
        burst = {
          startedAt: now,
          lastAt: now,
          reportedAt: now,
          total: 1,
          byReason: new Map([[reason, 1]]),
          sinceReport: 1,
          timer: undefined
        }
        options.log("warn", options.event, {
          ...options.fields,
          reason,
          ...fields,
          note: `further occurrences are counted and summarised in ${summary}`
        })
        arm(burst, quietMs)
        return
      }
      burst.lastAt = now
      burst.total++
      burst.sinceReport++
      burst.byReason.set(reason, (burst.byReason.get(reason) ?? 0) + 1)
    },
    flush: () => {
      const b = burst
      if (b === undefined) return
      burst = undefined
      b.timer?.cancel()
      report(b, true)
    }
  }
}
