import { describe, expect, it } from "@effect/vitest"
import * as Exposition from "../src/Exposition.ts"

const page = [
  "# HELP sleeve_connections_total Connections accepted.",
  "# TYPE sleeve_connections_total counter",
  'sleeve_connections_total{listener="in"} 3',
  'sleeve_connections_total{listener="a b}c"} 1',
  'sleeve_handshake_duration_seconds_bucket{le="+Inf",listener="in",role="server"} 2',
  "process_start_time_seconds 1700000000",
  'weird{v="-"} -Inf',
  ""
].join("\n")

describe("Exposition", () => {
  it("parses samples keyed as written, labels with spaces and braces included", () => {
    const samples = Exposition.parse(page)
    expect([...samples]).toEqual([
      ['sleeve_connections_total{listener="in"}', 3],
      ['sleeve_connections_total{listener="a b}c"}', 1],
      ['sleeve_handshake_duration_seconds_bucket{le="+Inf",listener="in",role="server"}', 2],
      ["process_start_time_seconds", 1700000000],
      ['weird{v="-"}', Number.NEGATIVE_INFINITY]
    ])
    expect(() => Exposition.parse("not a sample line at all")).toThrow("not an exposition line: not a sample")
  })

  it("decodes one line; the canonical key sorts labels", () => {
    expect(Exposition.decodeLine('m{role="server",listener="in"} +Inf')).toEqual({
      name: "m",
      labels: { role: "server", listener: "in" },
      value: Number.POSITIVE_INFINITY,
      series: 'm{role="server",listener="in"}'
    })
    expect(Exposition.decodeLine("# TYPE m counter")).toBeUndefined()
    expect(Exposition.seriesKey("m", { role: "server", listener: "in" })).toBe('m{listener="in",role="server"}')
    expect(Exposition.seriesKey("m")).toBe("m")
  })

  it("diff lists the named series that moved, new ones counted from 0", () => {
    const before = Exposition.parse('a{x="1"} 1\na{x="2"} 5\nb 1\n')
    const after = Exposition.parse('a{x="1"} 2\na{x="2"} 5\na{x="3"} 4\nb 9\n')
    expect(Exposition.diff(before, after, ["a"])).toEqual({ 'a{x="1"}': 1, 'a{x="3"}': 4 })
  })
})
