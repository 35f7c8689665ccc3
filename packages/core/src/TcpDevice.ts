/**
 * IRIS TCP devices: the device name `|TCP|<port>` and the parameter lists of `OPEN` and `USE`,
 * parsed into typed values and printed back.
 *
 * IRIS code opens TLS connections as `OPEN "|TCP|1000":("host":1000:/TLS="cfg")` (client),
 * `OPEN "|TCP|1000":(:1000:/TLS="cfg")` (server: empty host) and upgrades a plain connection
 * with `USE "|TCP|1000":(::/TLS="cfg")`. This module lets IRIS users translate such code (and
 * lets docs/iris-mapping.md be tested): it turns that text into
 * `ClientOpen`, `ServerOpen` or `Upgrade`, keeping the parameters Sleeve does not interpret
 * (mode string, terminators, buffer sizes, `/CRLF`, `/IOTABLE=...`) in order so the printer can
 * reproduce them.
 *
 * Syntax accepted: a parenthesised, `:`-separated list of positional parameters followed by
 * keyword parameters (`/NAME` or `/NAME=value`). A value is empty, an IRIS string literal
 * (`"a""b"` is `a"b`) or a bare token such as `1000`, `host.example` or `$C(13,10)`, which is
 * kept as written. The TLS keyword (`/TLS=` or its older spelling `/SSL=`) holds
 * `"config"` or `"config|password"`; the password is wrapped in `Redacted` at once and the
 * printer writes it only when asked (`revealPassword`).
 *
 * Canonical printing: the host is always printed as a string literal (a bare host in
 * ObjectScript would be a variable), the port as digits, and the TLS keyword as `/TLS="..."`
 * first among the keyword parameters; everything else is printed as it was written. It does
 * not evaluate ObjectScript expressions (`"a"_"b"`, variables): such input is rejected.
 */
import { Data, Redacted, Result } from "effect"

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

/** A parameter value: omitted, an IRIS string literal, or a bare token kept as written. */
export type Value =
  | { readonly _tag: "Empty" }
  | { readonly _tag: "Quoted"; readonly value: string }
  | { readonly _tag: "Bare"; readonly text: string }

/** A keyword parameter other than TLS: `/NAME` (a flag, `value` undefined) or `/NAME=value`. */
export interface Keyword {
  readonly name: string
  readonly value: Value | undefined
}

/** The `/TLS=` parameter: the TLS configuration name and its optional private-key password. */
export interface TlsParameter {
  readonly config: string
  readonly password?: Redacted.Redacted<string>
}

/** `OPEN` with a host and a port: connect to `host:port`. */
export interface ClientOpen {
  readonly _tag: "ClientOpen"
  readonly host: string
  readonly port: number
  readonly tls?: TlsParameter
  /** Positional parameters after the port (mode, terminators, buffer sizes...). */
  readonly positional: ReadonlyArray<Value>
  /** Keyword parameters other than TLS, in order. */
  readonly keywords: ReadonlyArray<Keyword>
}

/** `OPEN` with an empty host and a port: listen on `port`. */
export interface ServerOpen {
  readonly _tag: "ServerOpen"
  readonly port: number
  readonly tls?: TlsParameter
  /** Positional parameters after the port (mode, terminators, buffer sizes...). */
  readonly positional: ReadonlyArray<Value>
  /** Keyword parameters other than TLS, in order. */
  readonly keywords: ReadonlyArray<Keyword>
}

/** `USE` with empty host and port and `/TLS`: start TLS on the open connection. */
export interface Upgrade {
  readonly _tag: "Upgrade"
  readonly tls: TlsParameter
  /** Positional parameters after the (empty) port. */
  readonly positional: ReadonlyArray<Value>
  /** Keyword parameters other than TLS, in order. */
  readonly keywords: ReadonlyArray<Keyword>
}

/** What an `OPEN` parameter list means. */
export type Open = ClientOpen | ServerOpen

/** Any typed TCP parameter list. */
export type Parameters = ClientOpen | ServerOpen | Upgrade

/** A TCP device name `|TCP|<port>`. */
export interface DeviceName {
  readonly _tag: "DeviceName"
  readonly port: number
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/**
 * Text that is not a valid TCP device name or parameter list; `position` is a 0-based offset
 * into it. The input itself is deliberately not kept: it may hold a TLS password, and errors
 * get logged.
 */
export class TcpDeviceParseError extends Data.TaggedError("TcpDeviceParseError")<{
  readonly position: number
  readonly message: string
}> {}

// ---------------------------------------------------------------------------------------------
// Lexing the parameter list
// ---------------------------------------------------------------------------------------------

class Failure {
  readonly position: number
  readonly message: string
  constructor(position: number, message: string) {
    this.position = position
    this.message = message
  }
}

interface Item<A> {
  readonly item: A
  readonly position: number
}

interface RawList {
  readonly positional: ReadonlyArray<Item<Value>>
  readonly keywords: ReadonlyArray<
    Item<{ readonly name: string; readonly value: Value | undefined; readonly valuePosition: number }>
  >
}

class Lexer {
  pos = 0
  readonly input: string
  constructor(input: string) {
    this.input = input
  }

  peek(): string | undefined {
    return this.input[this.pos]
  }

  fail(message: string, position: number = this.pos): never {
    throw new Failure(position, message)
  }

  list(): RawList {
    const positional: Array<Item<Value>> = []
    const keywords: Array<RawList["keywords"][number]> = []
    if (this.peek() !== "(") this.fail("a parameter list must start with '('")
    this.pos++
    if (this.peek() === ")") {
      this.pos++
    } else {
      for (;;) {
        const position = this.pos
        if (this.peek() === "/") {
          keywords.push({ item: this.keyword(), position })
        } else {
          const value = this.value()
          if (keywords.length > 0) this.fail("positional parameters must come before keyword parameters", position)
          positional.push({ item: value, position })
        }
        const c = this.peek()
        if (c === ")") {
          this.pos++
          break
        }
        if (c === ":") {
          this.pos++
          continue
        }
        this.fail(
          c === undefined ? "missing ')' at the end of the parameter list" : `expected ':' or ')', found '${c}'`
        )
      }
    }
    if (this.pos !== this.input.length) this.fail("unexpected text after ')'")
    return { positional, keywords }
  }

  keyword(): RawList["keywords"][number]["item"] {
    this.pos++ // '/'
    const start = this.pos
    while (/^[A-Za-z0-9]$/.test(this.peek() ?? "")) this.pos++
    const name = this.input.slice(start, this.pos)
    if (!/^[A-Za-z]/.test(name)) this.fail("expected a keyword name after '/'", start)
    if (this.peek() !== "=") return { name, value: undefined, valuePosition: this.pos }
    this.pos++
    const valuePosition = this.pos
    const value = this.value()
    if (value._tag === "Empty") this.fail(`keyword /${name}= needs a value`, valuePosition)
    return { name, value, valuePosition }
  }

  value(): Value {
    const c = this.peek()
    if (c === ":" || c === ")" || c === undefined) return { _tag: "Empty" }
    if (c === '"') return { _tag: "Quoted", value: this.quoted() }
    return { _tag: "Bare", text: this.bare() }
  }

  /** An IRIS string literal: `"` ... `"`, with `""` standing for one `"`. */
  quoted(): string {
    const start = this.pos
    this.pos++
    let out = ""
    for (;;) {
      const c = this.peek()
      if (c === undefined) this.fail("unterminated string literal", start)
      this.pos++
      if (c === '"') {
        if (this.peek() !== '"') return out
        this.pos++
      }
      out += c
    }
  }

  /** A bare token: anything up to `:` or `)`, with balanced `( )` groups (e.g. `$C(13,10)`). */
  bare(): string {
    const start = this.pos
    if (this.peek() === "/") this.fail("unexpected '/'")
    let depth = 0
    for (;;) {
      const c = this.peek()
      if (c === undefined) break
      if (depth === 0 && (c === ":" || c === ")")) break
      if (c === "(") depth++
      else if (c === ")") depth--
      else if (c === '"') {
        if (depth === 0) this.fail("a string literal cannot be joined to other text (expressions are not supported)")
        this.quoted()
        continue
      } else if (/\s/.test(c)) this.fail("unexpected white space")
      this.pos++
    }
    if (depth > 0) this.fail("unbalanced '(' in a parameter", start)
    return this.input.slice(start, this.pos)
  }
}

// ---------------------------------------------------------------------------------------------
// Interpreting
// ---------------------------------------------------------------------------------------------

const isTlsKeyword = (name: string): boolean => /^(?:tls|ssl)$/i.test(name)

const textOf = (value: Value): string | undefined =>
  value._tag === "Quoted" ? value.value : value._tag === "Bare" ? value.text : undefined

const port = (item: Item<Value>, what: string): number => {
  const text = textOf(item.item)
  if (text === undefined) throw new Failure(item.position, `${what} is required`)
  if (!/^[0-9]{1,5}$/.test(text))
    throw new Failure(item.position, `${what} must be a number from 1 to 65535, got '${text}'`)
  const n = Number(text)
  if (n < 1 || n > 65535) throw new Failure(item.position, `${what} must be a number from 1 to 65535, got ${n}`)
  return n
}

const host = (item: Item<Value>): string => {
  const value = item.item
  if (value._tag === "Empty") return ""
  if (value._tag === "Bare" && !/^[A-Za-z0-9._-]+$/.test(value.text)) {
    throw new Failure(
      item.position,
      `host must be a string literal or a host name, got '${value.text}' (write IPv6 addresses quoted)`
    )
  }
  const text = textOf(value) ?? ""
  // A host never contains white space, control characters or quotes: fail before any lookup.
  if (/[\s\p{Cc}"]/u.test(text))
    throw new Failure(item.position, "host contains white space, a control character or a quote")
  return text
}

const tls = (keyword: RawList["keywords"][number]): TlsParameter => {
  const { name, value, valuePosition } = keyword.item
  const text = value === undefined ? undefined : textOf(value)
  if (text === undefined)
    throw new Failure(keyword.position, `/${name} needs a value: /${name}="config" or /${name}="config|password"`)
  const bar = text.indexOf("|")
  const config = bar < 0 ? text : text.slice(0, bar)
  if (config === "") throw new Failure(valuePosition, `/${name} names no TLS configuration`)
  if (/\p{Cc}/u.test(config))
    throw new Failure(valuePosition, "the TLS configuration name contains a control character")
  // Wrap the password at once so no later step can log it.
  return bar < 0 ? { config } : { config, password: Redacted.make(text.slice(bar + 1)) }
}

interface Split {
  readonly positional: ReadonlyArray<Item<Value>>
  readonly keywords: ReadonlyArray<Keyword>
  readonly tls: TlsParameter | undefined
}

const split = (raw: RawList): Split => {
  const tlsKeywords = raw.keywords.filter((k) => isTlsKeyword(k.item.name))
  const second = tlsKeywords[1]
  // Two TLS configurations are ambiguous: refuse rather than pick one.
  if (second !== undefined) throw new Failure(second.position, `/${second.item.name} given more than once`)
  const first = tlsKeywords[0]
  return {
    positional: raw.positional,
    keywords: raw.keywords
      .filter((k) => !isTlsKeyword(k.item.name))
      .map((k) => ({ name: k.item.name, value: k.item.value })),
    tls: first === undefined ? undefined : tls(first)
  }
}

const empty: Item<Value> = { item: { _tag: "Empty" }, position: 0 }

const run = <A>(input: string, f: (lexer: Lexer) => A): Result.Result<A, TcpDeviceParseError> => {
  const trimmed = input.trim()
  const offset = input.indexOf(trimmed)
  try {
    return Result.succeed(f(new Lexer(trimmed)))
  } catch (e) {
    if (e instanceof Failure) {
      const position = e.position + offset
      return Result.fail(new TcpDeviceParseError({ position, message: `${e.message} at position ${position}` }))
    }
    throw e
  }
}

const withTls = <A extends object>(
  base: A,
  tlsParameter: TlsParameter | undefined
): A & { readonly tls?: TlsParameter } => (tlsParameter === undefined ? base : { ...base, tls: tlsParameter })

/** Parse an `OPEN` parameter list: `("host":port...)` is a `ClientOpen`, `(:port...)` a `ServerOpen`. */
export const parseOpen = (params: string): Result.Result<Open, TcpDeviceParseError> =>
  run(params, (lexer): Open => {
    const { positional, keywords, tls: tlsParameter } = split(lexer.list())
    const hostItem = positional[0] ?? empty
    const portItem = positional[1] ?? { item: { _tag: "Empty" }, position: lexer.input.length - 1 }
    const rest = positional.slice(2).map((p) => p.item)
    const h = host(hostItem)
    if (h === "") {
      if (portItem.item._tag === "Empty") {
        throw new Failure(portItem.position, 'OPEN needs a port: ("host":port) to connect or (:port) to listen')
      }
      return withTls(
        { _tag: "ServerOpen" as const, port: port(portItem, "the listening port"), positional: rest, keywords },
        tlsParameter
      )
    }
    return withTls(
      {
        _tag: "ClientOpen" as const,
        host: h,
        port: port(portItem, "the port to connect to"),
        positional: rest,
        keywords
      },
      tlsParameter
    )
  })

/** Parse a `USE` parameter list that starts TLS: `(::/TLS="cfg")`. Host and port must be empty. */
export const parseUse = (params: string): Result.Result<Upgrade, TcpDeviceParseError> =>
  run(params, (lexer): Upgrade => {
    const { positional, keywords, tls: tlsParameter } = split(lexer.list())
    for (const item of positional.slice(0, 2)) {
      if (item.item._tag !== "Empty")
        throw new Failure(item.position, 'USE cannot change the host or port; leave them empty: (::/TLS="cfg")')
    }
    if (tlsParameter === undefined) throw new Failure(lexer.input.length - 1, "USE without /TLS: nothing to upgrade")
    return { _tag: "Upgrade", tls: tlsParameter, positional: positional.slice(2).map((p) => p.item), keywords }
  })

/** Parse a device name `|TCP|<port>` (`|TCP|` case-insensitive, port 1-65535). */
export const parseDevice = (name: string): Result.Result<DeviceName, TcpDeviceParseError> =>
  run(name, (lexer): DeviceName => {
    const text = lexer.input
    if (!/^\|TCP\|/i.test(text)) throw new Failure(0, "a TCP device name starts with '|TCP|'")
    const digits = text.slice(5)
    if (!/^[0-9]+$/.test(digits)) throw new Failure(5, "a TCP device name is '|TCP|' followed by digits")
    return { _tag: "DeviceName", port: port({ item: { _tag: "Bare", text: digits }, position: 5 }, "the device port") }
  })

// ---------------------------------------------------------------------------------------------
// Printing
// ---------------------------------------------------------------------------------------------

/** Printer options. */
export interface FormatOptions {
  /** Print the TLS private-key password in clear. Off by default: it prints as `<redacted>`. */
  readonly revealPassword?: boolean
}

/** An IRIS string literal for `s` (quotes doubled). */
export const quote = (s: string): string => `"${s.replaceAll('"', '""')}"`

const formatValue = (value: Value): string =>
  value._tag === "Empty" ? "" : value._tag === "Quoted" ? quote(value.value) : value.text

const formatTls = (t: TlsParameter, options: FormatOptions | undefined): string => {
  if (t.password === undefined) return `/TLS=${quote(t.config)}`
  const password = options?.revealPassword === true ? Redacted.value(t.password) : "<redacted>"
  return `/TLS=${quote(`${t.config}|${password}`)}`
}

const formatKeyword = (k: Keyword): string =>
  k.value === undefined ? `/${k.name}` : `/${k.name}=${formatValue(k.value)}`

/**
 * Print any typed parameter list. `parseOpen`/`parseUse` of the output gives back an equal
 * value when `revealPassword` is set (or there is no password).
 */
export const formatParameters = (parameters: Parameters, options?: FormatOptions): string => {
  const head =
    parameters._tag === "ClientOpen"
      ? [quote(parameters.host), String(parameters.port)]
      : parameters._tag === "ServerOpen"
        ? ["", String(parameters.port)]
        : ["", ""]
  const items = [
    ...head,
    ...parameters.positional.map(formatValue),
    ...(parameters.tls === undefined ? [] : [formatTls(parameters.tls, options)]),
    ...parameters.keywords.map(formatKeyword)
  ]
  return `(${items.join(":")})`
}

/** Print an `OPEN` parameter list. */
export const formatOpen = (open: Open, options?: FormatOptions): string => formatParameters(open, options)

/** Print a `USE` parameter list. */
export const formatUse = (upgrade: Upgrade, options?: FormatOptions): string => formatParameters(upgrade, options)

/** Print a device name: `|TCP|<port>`. */
export const formatDevice = (device: DeviceName): string => `|TCP|${device.port}`
