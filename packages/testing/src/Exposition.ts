/**
 * The Prometheus text exposition format (what `/metrics` serves), read back by tests: one sample
 * line decoded into name, labels and value (`decodeLine`), a whole page as a map from series to
 * value (`parse`), a canonical series key that does not depend on label order (`seriesKey`), and
 * the difference between two scrapes (`diff`) so that a test can say "this event moved exactly
 * these series by exactly this much".
 *
 * It reads what prom-client writes: `name{label="value",…} value`, with `#` comments. What it
 * deliberately does not do: timestamps, exemplars, OpenMetrics, or unescaping label values (keys
 * keep the escaped text as written, which is what tests compare).
 */

/** One sample line. */
export interface Sample {
  readonly name: string
  /** Label values as written (escapes kept). */
  readonly labels: Readonly<Record<string, string>>
  readonly value: number
  /** `name{label="value",…}` exactly as written (or `name` alone). */
  readonly series: string
}

const sampleLine = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/
const labelPair = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g

/** A sample line decoded; `undefined` when the line is not one (comments and blank lines are not). */
export const decodeLine = (line: string): Sample | undefined => {
  const m = sampleLine.exec(line)
  if (m === null) return undefined
  const [, name = "", labelText, value = ""] = m
  const labels: Record<string, string> = {}
  for (const [, k = "", v = ""] of (labelText ?? "").matchAll(labelPair)) labels[k] = v
  return {
    name,
    labels,
    value: value === "+Inf" ? Number.POSITIVE_INFINITY : value === "-Inf" ? Number.NEGATIVE_INFINITY : Number(value),
    series: labelText === undefined ? name : `${name}{${labelText}}`
  }
}

/** `name{a="1",b="2"}` with the labels sorted by name (`name` alone without labels). */
export const seriesKey = (name: string, labels: Readonly<Record<string, string>> = {}): string => {
  const pairs = Object.entries(labels)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}="${v}"`)
  return pairs.length === 0 ? name : `${name}{${pairs.join(",")}}`
}

/**
 * The samples of an exposition, keyed by series exactly as written. Comments and blank lines are
 * skipped; any other line that is not a sample throws.
 */
export const parse = (text: string): ReadonlyMap<string, number> => {
  const samples = new Map<string, number>()
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue
    const sample = decodeLine(line)
    if (sample === undefined) throw new Error(`not an exposition line: ${line}`)
    samples.set(sample.series, sample.value)
  }
  return samples
}

/**
 * The series of `after` whose value differs from `before` (a missing series counts as 0),
 * restricted to the metric names in `names`, as `{ series: change }`.
 */
export const diff = (
  before: ReadonlyMap<string, number>,
  after: ReadonlyMap<string, number>,
  names: ReadonlyArray<string>
): Record<string, number> => {
  const out: Record<string, number> = {}
  for (const [series, value] of after) {
    const name = series.split("{")[0] as string
    if (!names.includes(name)) continue
    const change = value - (before.get(series) ?? 0)
    if (change !== 0) out[series] = change
  }
  return out
}
