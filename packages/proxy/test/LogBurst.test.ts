/**
 * `LogBurst`: one warn line at the start of a burst, a summary when it has been quiet for
 * `quietMs` (and every `reportEveryMs` while it goes on), never a line per occurrence. Time is a
 * hand-driven clock with real timer semantics (each scheduled run fires once, in order).
 */
import { describe, expect, it } from "vitest"
import * as EventLog from "../src/EventLog.ts"
import * as LogBurst from "../src/LogBurst.ts"

const manualTimers = () => {
  let now = 0
  let queue: Array<{ at: number; run: () => void; live: boolean }> = []
  const timers: LogBurst.Timers = {
    now: () => now,
    schedule: (ms, run) => {
      const t = { at: now + ms, run, live: true }
      queue.push(t)
      return { cancel: () => (t.live = false) }
    }
  }
  /** Advances the clock to `t`, running every timer due on the way. */
  const advance = (to: number) => {
    for (;;) {
      const due = queue.filter((t) => t.live && t.at <= to).sort((a, b) => a.at - b.at)[0]
      if (due === undefined) break
      now = due.at
      due.live = false
      due.run()
    }
    queue = queue.filter((t) => t.live)
    now = to
  }
  return { timers, advance, pending: () => queue.filter((t) => t.live).length }
}

const setup = () => {
  const clock = manualTimers()
  const mem = EventLog.makeMemory()
  const burst = LogBurst.make({
    log: mem.sink,
    event: "accept_failed",
    fields: { listener: "in" },
    quietMs: 1000,
    reportEveryMs: 10_000,
    timers: clock.timers
  })
  return { clock, events: mem.events, burst }
}

describe("LogBurst", () => {
  it("logs the first occurrence, counts the rest, and summarises once the burst is quiet", () => {
    const { clock, events, burst } = setup()
    burst.record("fd_limit", { fd: 90, advice: "raise LimitNOFILE" })
    for (let i = 1; i < 500; i++) {
      clock.advance(i)
      burst.record(i % 100 === 0 ? "emfile" : "fd_limit", { fd: 90 })
    }
    expect(events).toHaveLength(1)
    expect(events[0]).toMatchObject({
      level: "warn",
      event: "accept_failed",
      listener: "in",
      reason: "fd_limit",
      fd: 90,
      advice: "raise LimitNOFILE"
    })
    // Quiet for less than quietMs after the last one: still one line.
    clock.advance(499 + 999)
    expect(events).toHaveLength(1)
    clock.advance(499 + 1000)
    expect(events).toHaveLength(2)
    expect(events[1]).toMatchObject({
      level: "info",
      event: "accept_failed_summary",
      listener: "in",
      ended: true,
      count: 500,
      reasons: { fd_limit: 496, emfile: 4 },
      durationMs: 499
    })
    expect(clock.pending()).toBe(0)
    // A later fault is a new burst: a new first line.
    clock.advance(5000)
    burst.record("enobufs", { code: "ENOBUFS" })
    expect(events).toHaveLength(3)
    expect(events[2]).toMatchObject({ event: "accept_failed", reason: "enobufs" })
  })

  it("a burst that goes on is summarised every reportEveryMs, then once more when it ends", () => {
    const { clock, events, burst } = setup()
    for (let t = 0; t <= 25_000; t += 100) {
      clock.advance(t)
      burst.record("fd_limit", {})
    }
    clock.advance(40_000)
    expect(events.map((e) => [e.event, e.ended, e.count, e.sinceLastSummary])).toEqual([
      ["accept_failed", undefined, undefined, undefined],
      // At 10 s and 20 s (the timer runs before the occurrence of that same instant) ...
      ["accept_failed_summary", false, 100, 100],
      ["accept_failed_summary", false, 200, 100],
      // ... and 1 s after the last one, at 25 s.
      ["accept_failed_summary", true, 251, 51]
    ])
    expect(clock.pending()).toBe(0)
  })

  it("a lone occurrence gets its summary too; flush ends a burst at once and is idempotent", () => {
    const { clock, events, burst } = setup()
    burst.record("fd_limit", {})
    clock.advance(2000)
    expect(events.map((e) => [e.event, e.count])).toEqual([
      ["accept_failed", undefined],
      ["accept_failed_summary", 1]
    ])
    burst.record("fd_limit", {})
    burst.record("fd_limit", {})
    burst.flush()
    burst.flush()
    expect(events.map((e) => [e.event, e.count])).toEqual([
      ["accept_failed", undefined],
      ["accept_failed_summary", 1],
      ["accept_failed", undefined],
      ["accept_failed_summary", 2]
    ])
    clock.advance(10_000)
    expect(events).toHaveLength(4)
  })
})
