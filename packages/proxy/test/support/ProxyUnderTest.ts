/**
 * The proxy as the sidecar runs it, for the integration suites: a configuration file activated
 * by `ProxyRuntime.activate` (the test fails with every problem when it does not activate),
 * started by `ProxyRuntime.start` with a fresh metrics recorder and the production JSON event log
 * writing to memory, and read back the way an operator would: a listener's bound port, the sum
 * of a metric's series with given labels, and the events as parsed JSON lines.
 *
 * `counted` waits for a counter to reach a value before asserting it, because the metrics of a
 * closing connection are recorded a moment after the client is done. Stopping is the caller's
 * business (`running.drain(0)` in `afterAll`, or `DataPathHarness.startProxy`, which registers it
 * with a `Cleanup`). Nothing here is product code.
 */
import { assert } from "@effect/vitest"
import * as Metrics from "@sleeve/metrics/Metrics"
import { settle } from "@sleeve/testing/Wait"
import { Result } from "effect"
import * as EventLog from "../../src/EventLog.ts"
import * as ProxyRuntime from "../../src/ProxyRuntime.ts"

/** One logged event, parsed back from the JSON line the proxy wrote. */
export type LoggedEvent = { readonly level: string; readonly event: string } & Readonly<Record<string, unknown>>

/** A proxy under test. */
export interface ProxyUnderTest {
  readonly running: ProxyRuntime.Running
  readonly metrics: Metrics.Recorder
  /** The JSON lines written by the event log, verbatim. */
  readonly lines: ReadonlyArray<string>
  /** The events, parsed from `lines`. */
  readonly events: () => ReadonlyArray<LoggedEvent>
  readonly file: string
  /** The bound port of a listener. */
  readonly port: (listener: string) => number
  /** Sum of the series of `metric` whose labels include `labels`. */
  readonly value: (metric: Metrics.MetricName, labels?: Readonly<Record<string, string>>) => Promise<number>
  /**
   * Waits up to 3 s for the sum of the series of `metric` matching `labels` to be `expected`,
   * then asserts that it is.
   */
  readonly counted: (
    metric: Metrics.MetricName,
    labels: Readonly<Record<string, string>>,
    expected: number
  ) => Promise<void>
}

/** Activates `file` (failing the test with every problem on error) and starts the proxy. */
export const start = async (file: string, options: ProxyRuntime.ActivateOptions = {}): Promise<ProxyUnderTest> => {
  const activated = ProxyRuntime.activate(file, options)
  if (Result.isFailure(activated)) throw new Error(`activation failed:\n${activated.failure.message}`)
  const metrics = Metrics.make({ defaultMetrics: false })
  const lines: Array<string> = []
  // The production JSON sink, writing to memory: proves every event is one JSON line.
  const log = EventLog.makeJson((line) => lines.push(line))
  const running = await ProxyRuntime.start(activated.success, { metrics, log })
  const value: ProxyUnderTest["value"] = (metric, labels) => metricValue(metrics, metric, labels ?? {})
  return {
    running,
    metrics,
    lines,
    events: () => lines.map((l) => JSON.parse(l) as LoggedEvent),
    file,
    port: (name) => {
      const l = running.listener(name)
      if (l === undefined) throw new Error(`no listener named ${name}`)
      return l.address().port
    },
    value,
    counted: async (metric, labels, expected) => {
      const seen = await settle(
        () => value(metric, labels),
        (v) => v === expected
      )
      assert.strictEqual(seen, expected, `${metric} ${JSON.stringify(labels)}`)
    }
  }
}

/** Sum of the series of `metric` whose labels include every one of `labels`. */
export const metricValue = async (
  metrics: Metrics.Recorder,
  metric: Metrics.MetricName,
  labels: Readonly<Record<string, string>>
): Promise<number> => {
  const m = metrics.registry.getSingleMetric(metric)
  if (m === undefined) throw new Error(`metric ${metric} is not registered`)
  const { values } = await m.get()
  return values
    .filter((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x))
    .reduce((sum, v) => sum + v.value, 0)
}
