import { assert, describe, expect, it } from "@effect/vitest"
import { Redacted, Result } from "effect"
import * as fc from "fast-check"
import { inspect } from "node:util"
import * as TcpDevice from "../src/TcpDevice.ts"

const ok = <A>(r: Result.Result<A, TcpDevice.TcpDeviceParseError>): A => {
  if (Result.isFailure(r)) throw new Error(r.failure.message)
  return r.success
}

const err = <A>(r: Result.Result<A, TcpDevice.TcpDeviceParseError>): TcpDevice.TcpDeviceParseError => {
  if (Result.isSuccess(r)) throw new Error(`unexpected success: ${JSON.stringify(r.success)}`)
  return r.failure
}

/** Replace Redacted passwords by their clear text so values can be compared with toEqual. */
const reveal = (p: TcpDevice.Parameters): unknown =>
  p.tls?.password === undefined ? p : { ...p, tls: { ...p.tls, password: Redacted.value(p.tls.password) } }

describe("parseDevice / formatDevice", () => {
  it("parses |TCP|<port>, case-insensitively", () => {
    expect(ok(TcpDevice.parseDevice("|TCP|1000"))).toEqual({ _tag: "DeviceName", port: 1000 })
    expect(ok(TcpDevice.parseDevice("|tcp|7000"))).toEqual({ _tag: "DeviceName", port: 7000 })
    expect(TcpDevice.formatDevice(ok(TcpDevice.parseDevice("|tcp|7000")))).toBe("|TCP|7000")
  })

  it.each([
    ["TCP|1000", 0, "starts with '|TCP|'"],
    ["|TCP|", 5, "followed by digits"],
    ["|TCP|abc", 5, "followed by digits"],
    ["|TCP|10a", 5, "followed by digits"],
    ["|TCP|0", 5, "1 to 65535"],
    ["|TCP|65536", 5, "1 to 65535"],
    ["|FILE|1", 0, "starts with '|TCP|'"]
  ])("rejects %j at %i", (input, position, message) => {
    const e = err(TcpDevice.parseDevice(input))
    expect(e._tag).toBe("TcpDeviceParseError")
    expect(e.position).toBe(position)
    expect(e.message).toContain(message)
  })
})

describe("parseOpen", () => {
  it('client: (host:port:/TLS="cfg")', () => {
    const open = ok(TcpDevice.parseOpen('(db.example:1972:/TLS="client")'))
    expect(open).toEqual({
      _tag: "ClientOpen",
      host: "db.example",
      port: 1972,
      tls: { config: "client" },
      positional: [],
      keywords: []
    })
    expect(TcpDevice.formatOpen(open)).toBe('("db.example":1972:/TLS="client")')
  })

  it('client with a password: (host:port:/TLS="cfg|password")', () => {
    const open = ok(TcpDevice.parseOpen('("db.example":1972:/TLS="client|s3cr|et""x")'))
    assert(open._tag === "ClientOpen")
    expect(open.tls?.config).toBe("client")
    assert(open.tls?.password !== undefined)
    expect(Redacted.value(open.tls.password)).toBe('s3cr|et"x')
    expect(TcpDevice.formatOpen(open)).toBe('("db.example":1972:/TLS="client|<redacted>")')
    expect(TcpDevice.formatOpen(open, { revealPassword: true })).toBe('("db.example":1972:/TLS="client|s3cr|et""x")')
  })

  it('server: (:port:/TLS="cfg")', () => {
    const open = ok(TcpDevice.parseOpen('(:1972:/TLS="server")'))
    expect(open).toEqual({ _tag: "ServerOpen", port: 1972, tls: { config: "server" }, positional: [], keywords: [] })
    expect(TcpDevice.formatOpen(open)).toBe('(:1972:/TLS="server")')
  })

  it('quoted host: ("localhost":1000), no TLS; ("":1000) is a server', () => {
    expect(ok(TcpDevice.parseOpen('("localhost":1000)'))).toEqual({
      _tag: "ClientOpen",
      host: "localhost",
      port: 1000,
      positional: [],
      keywords: []
    })
    expect(ok(TcpDevice.parseOpen('("":1000)'))._tag).toBe("ServerOpen")
    expect(ok(TcpDevice.parseOpen('("::1":1000)'))).toMatchObject({ _tag: "ClientOpen", host: "::1" })
    expect(ok(TcpDevice.parseOpen('(host:"1000")'))).toMatchObject({ host: "host", port: 1000 })
  })

  it("keeps other positional and keyword parameters in order", () => {
    const input = '("h":1000:"SM":$C(13,10)::16384:/TLS="c":/IOTABLE="UTF8":/CRLF:/IBU=8192:/crlf)'
    const open = ok(TcpDevice.parseOpen(input))
    expect(open).toEqual({
      _tag: "ClientOpen",
      host: "h",
      port: 1000,
      tls: { config: "c" },
      positional: [
        { _tag: "Quoted", value: "SM" },
        { _tag: "Bare", text: "$C(13,10)" },
        { _tag: "Empty" },
        { _tag: "Bare", text: "16384" }
      ],
      keywords: [
        { name: "IOTABLE", value: { _tag: "Quoted", value: "UTF8" } },
        { name: "CRLF", value: undefined },
        { name: "IBU", value: { _tag: "Bare", text: "8192" } },
        { name: "crlf", value: undefined }
      ]
    })
    expect(TcpDevice.formatOpen(open)).toBe(input)
  })

  it("/SSL= is the older spelling of /TLS= and prints as /TLS=; /tls= is accepted", () => {
    expect(ok(TcpDevice.parseOpen('(:1:/SSL="x")')).tls).toEqual({ config: "x" })
    expect(TcpDevice.formatOpen(ok(TcpDevice.parseOpen("(:1:/tls=x)")))).toBe('(:1:/TLS="x")')
  })

  it("moves TLS first among the keywords when printing (canonical form)", () => {
    const open = ok(TcpDevice.parseOpen('(:1:/CRLF:/TLS="x")'))
    expect(TcpDevice.formatOpen(open)).toBe('(:1:/TLS="x":/CRLF)')
    expect(ok(TcpDevice.parseOpen(TcpDevice.formatOpen(open)))).toEqual(open)
  })

  it.each([
    ['"h":1000', 0, "must start with '('"],
    ['("h":1000', 9, "missing ')'"],
    ['("h":1000))', 10, "after ')'"],
    ['("h")', 4, "port to connect to is required"],
    ['("h":)', 5, "port to connect to is required"],
    ['("h":0)', 5, "1 to 65535"],
    ['("h":65536)', 5, "1 to 65535"],
    ['("h":10x)', 5, "1 to 65535"],
    ['(::/TLS="c")', 2, "OPEN needs a port"],
    ["()", 1, "OPEN needs a port"],
    ['("h:1000)', 1, "unterminated string"],
    ['("a b":1)', 1, "white space"],
    ["($H:1)", 1, "host must be a string literal"],
    ['("h":1:/TLS="")', 12, "names no TLS configuration"],
    ['("h":1:/TLS="|pw")', 12, "names no TLS configuration"],
    ['("h":1:/TLS)', 7, "/TLS needs a value"],
    ['("h":1:/TLS=)', 12, "needs a value"],
    ['("h":1:/TLS="a":/SSL="b")', 16, "more than once"],
    ['("h":1:/CRLF:"M")', 13, "must come before keyword"],
    ['("h":1:/=x)', 8, "keyword name"],
    ['("h":1:"a"_"b")', 10, "expected ':' or ')'"],
    ['("h":1:$C(13)', 13, "missing ')'"],
    ['("h":1:$C((13)', 7, "unbalanced"],
    ['("h" :1)', 4, "expected ':' or ')'"]
  ])("rejects %s at %i (%s)", (input, position, message) => {
    const e = err(TcpDevice.parseOpen(input))
    expect(e._tag).toBe("TcpDeviceParseError")
    expect(e.position).toBe(position)
    expect(e.message).toContain(message)
  })
})

describe("parseUse", () => {
  it('upgrade: (::/TLS="cfg")', () => {
    const use = ok(TcpDevice.parseUse('(::/TLS="cfg")'))
    expect(use).toEqual({ _tag: "Upgrade", tls: { config: "cfg" }, positional: [], keywords: [] })
    expect(TcpDevice.formatUse(use)).toBe('(::/TLS="cfg")')
    expect(ok(TcpDevice.parseUse('(/TLS="cfg")'))).toEqual(use)
    const withMode = ok(TcpDevice.parseUse('(::"M":/TLS="cfg|pw")'))
    expect(withMode.positional).toEqual([{ _tag: "Quoted", value: "M" }])
    expect(TcpDevice.formatUse(withMode, { revealPassword: true })).toBe('(::"M":/TLS="cfg|pw")')
  })

  it.each([
    ['(::"M")', 6, "nothing to upgrade"],
    ['("h":1:/TLS="c")', 1, "cannot change the host or port"],
    ['(:1:/TLS="c")', 2, "cannot change the host or port"]
  ])("rejects %s at %i", (input, position, message) => {
    const e = err(TcpDevice.parseUse(input))
    expect(e.position).toBe(position)
    expect(e.message).toContain(message)
  })
})

describe("the password never leaks", () => {
  it("String, JSON, inspect and the default printer never show it", () => {
    const secret = "hunter2-very-secret"
    const values: ReadonlyArray<TcpDevice.Parameters> = [
      ok(TcpDevice.parseOpen(`("h":1:/TLS="c|${secret}")`)),
      ok(TcpDevice.parseOpen(`(:1:/TLS="c|${secret}")`)),
      ok(TcpDevice.parseUse(`(::/TLS="c|${secret}")`))
    ]
    for (const v of values) {
      expect(Redacted.value(v.tls?.password ?? Redacted.make(""))).toBe(secret)
      for (const text of [
        String(v),
        JSON.stringify(v),
        inspect(v, { depth: 10 }),
        `${v.tls?.password}`,
        TcpDevice.formatParameters(v)
      ]) {
        expect(text).not.toContain(secret)
      }
    }
  })

  it("a parse error neither keeps the input nor echoes the password", () => {
    for (const input of [
      '("h":1:/TLS="c|hunter2":/TLS="d")',
      '("h":1:/TLS="c|hunter2":x"',
      '("h":1:/TLS="c|hunter2)'
    ]) {
      const e = err(TcpDevice.parseOpen(input))
      for (const text of [e.message, String(e), JSON.stringify(e), inspect(e)]) expect(text).not.toContain("hunter2")
    }
  })
})

// ---------------------------------------------------------------------------------------------
// Property: parse ∘ print is the identity on typed values
// ---------------------------------------------------------------------------------------------

const bareArb = fc.oneof(
  fc.stringMatching(/^[A-Za-z0-9$._,=-][A-Za-z0-9$._,=/-]{0,8}$/),
  fc.tuple(fc.nat(255), fc.nat(255)).map(([a, b]) => `$C(${a},${b})`)
)
const valueArb: fc.Arbitrary<TcpDevice.Value> = fc.oneof(
  fc.constant({ _tag: "Empty" as const }),
  fc.string({ maxLength: 8 }).map((value) => ({ _tag: "Quoted" as const, value })),
  bareArb.map((text) => ({ _tag: "Bare" as const, text }))
)
const keywordArb: fc.Arbitrary<TcpDevice.Keyword> = fc.record({
  name: fc.stringMatching(/^[A-Za-z][A-Za-z0-9]{0,7}$/).filter((n) => !/^(?:tls|ssl)$/i.test(n)),
  value: fc.option(fc.oneof(valueArb.filter((v) => v._tag !== "Empty")), { nil: undefined })
})
const tlsArb: fc.Arbitrary<TcpDevice.TlsParameter> = fc.record(
  {
    config: fc
      .string({ unit: "grapheme", minLength: 1, maxLength: 10 })
      .filter((c) => !c.includes("|") && !/\p{Cc}/u.test(c)),
    password: fc.string({ unit: "grapheme", maxLength: 10 }).map((p) => Redacted.make(p))
  },
  { requiredKeys: ["config"] }
)
const hostArb = fc.oneof(fc.domain(), fc.ipV4(), fc.ipV6(), fc.constant("localhost"))
const portArb = fc.integer({ min: 1, max: 65535 })
const restArb = { positional: fc.array(valueArb, { maxLength: 4 }), keywords: fc.array(keywordArb, { maxLength: 4 }) }

const parametersArb: fc.Arbitrary<TcpDevice.Parameters> = fc.oneof(
  fc.record(
    { _tag: fc.constant("ClientOpen" as const), host: hostArb, port: portArb, tls: tlsArb, ...restArb },
    { requiredKeys: ["_tag", "host", "port", "positional", "keywords"] }
  ),
  fc.record(
    { _tag: fc.constant("ServerOpen" as const), port: portArb, tls: tlsArb, ...restArb },
    { requiredKeys: ["_tag", "port", "positional", "keywords"] }
  ),
  fc.record({ _tag: fc.constant("Upgrade" as const), tls: tlsArb, ...restArb })
)

describe("properties", () => {
  it("parse(format(x, { revealPassword: true })) equals x, and printing is stable", () => {
    fc.assert(
      fc.property(parametersArb, (p) => {
        const printed = TcpDevice.formatParameters(p, { revealPassword: true })
        const back: Result.Result<TcpDevice.Parameters, TcpDevice.TcpDeviceParseError> =
          p._tag === "Upgrade" ? TcpDevice.parseUse(printed) : TcpDevice.parseOpen(printed)
        if (Result.isFailure(back)) throw new Error(`${printed}: ${back.failure.message}`)
        expect(reveal(back.success)).toEqual(reveal(p))
        expect(TcpDevice.formatParameters(back.success, { revealPassword: true })).toBe(printed)
      }),
      { numRuns: 500 }
    )
  })

  it("device names round-trip", () => {
    fc.assert(
      fc.property(portArb, (port) => {
        expect(ok(TcpDevice.parseDevice(TcpDevice.formatDevice({ _tag: "DeviceName", port })))).toEqual({
          _tag: "DeviceName",
          port
        })
      })
    )
  })

  it("the parsers never throw on arbitrary input", () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 30 }), (s) => {
        const results: ReadonlyArray<Result.Result<unknown, TcpDevice.TcpDeviceParseError>> = [
          TcpDevice.parseOpen(s),
          TcpDevice.parseUse(s),
          TcpDevice.parseDevice(s)
        ]
        for (const r of results) {
          if (Result.isFailure(r)) expect(r.failure.position).toBeGreaterThanOrEqual(0)
        }
      }),
      { numRuns: 1000 }
    )
  })
})
