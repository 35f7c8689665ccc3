/**
 * The Sleeve configuration file: named TLS configurations (IRIS `Security.SSLConfigs`), listeners
 * and the admin endpoint, in YAML (or JSON, which is YAML).
 *
 * Decoding is two passes over the parsed document. The first is structural (an Effect `Schema`:
 * types, literals, unknown keys); the second is semantic (addresses, durations, DNs, references
 * between listeners and TLS configurations, combinations that would be unsafe). Both collect every
 * problem, so an operator fixes a file in one go; each problem names the file, the path inside the
 * document and the rule, e.g.
 * `sleeve.yaml: tls.MyCfg.protocols.min: expected "TLSv1.2" | "TLSv1.3", got "TLSv1"`.
 *
 * This module reads no file but the configuration itself: certificates and keys are loaded and
 * checked by `TlsMaterial`, which works on the decoded model.
 */
import { Data, Result, Schema, SchemaIssue } from "effect"
import * as Net from "node:net"
import * as Path from "node:path"
import * as Yaml from "yaml"
import * as DistinguishedName from "./DistinguishedName.ts"

// ---------------------------------------------------------------------------------------------
// Structural schema (the file's shape)
// ---------------------------------------------------------------------------------------------

const ProtocolVersion = Schema.Literals(["TLSv1.2", "TLSv1.3"])
/** Either a number of seconds or a string such as `500ms`, `10s`, `5m`, `1h`. */
const DurationInput = Schema.Union([Schema.Number, Schema.String])

const PasswordSourceSchema = Schema.Union([
  Schema.Struct({ env: Schema.NonEmptyString }),
  Schema.Struct({ file: Schema.NonEmptyString }),
  Schema.Struct({ prompt: Schema.Literal(true) })
])

const TlsConfigSchema = Schema.Struct({
  description: Schema.optionalKey(Schema.String),
  enabled: Schema.optionalKey(Schema.Boolean),
  type: Schema.Literals(["client", "server", "mirror"]),
  caFile: Schema.optionalKey(Schema.NonEmptyString),
  certificateFile: Schema.optionalKey(Schema.NonEmptyString),
  privateKeyFile: Schema.optionalKey(Schema.NonEmptyString),
  privateKeyType: Schema.optionalKey(Schema.Literals(["RSA", "EC", "Ed25519"])),
  privateKeyPassword: Schema.optionalKey(PasswordSourceSchema),
  protocols: Schema.optionalKey(
    Schema.Struct({ min: Schema.optionalKey(ProtocolVersion), max: Schema.optionalKey(ProtocolVersion) })
  ),
  cipherList: Schema.optionalKey(Schema.NonEmptyString),
  cipherSuites: Schema.optionalKey(Schema.NonEmptyString),
  verifyPeer: Schema.optionalKey(Schema.Literals(["none", "request", "require"])),
  verifyDepth: Schema.optionalKey(Schema.Int),
  crlFile: Schema.optionalKey(Schema.NonEmptyString),
  // revocation: what a CRL past its nextUpdate does (issue 13 §2)
  crlStale: Schema.optionalKey(Schema.Literals(["reject", "warn"])),
  authorizedPeers: Schema.optionalKey(Schema.Array(Schema.String)),
  requireDualUse: Schema.optionalKey(Schema.Boolean)
})

const ListenerSchema = Schema.Struct({
  name: Schema.NonEmptyString,
  mode: Schema.Literals(["terminate", "originate", "starttls"]),
  listen: Schema.NonEmptyString,
  target: Schema.NonEmptyString,
  tls: Schema.NonEmptyString,
  // originate (and client-side starttls): the name sent as SNI and checked against the certificate
  serverName: Schema.optionalKey(Schema.NonEmptyString),
  // originate: explicit, loud opt-out of hostname verification (chain verification stays on)
  insecureSkipHostnameVerification: Schema.optionalKey(Schema.Boolean),
  // starttls
  protocol: Schema.optionalKey(Schema.Literals(["smtp", "imap", "pop3", "ldap", "postgres", "line"])),
  side: Schema.optionalKey(Schema.Literals(["server", "client"])),
  requireTls: Schema.optionalKey(Schema.Boolean),
  maxCleartextBytes: Schema.optionalKey(Schema.Int),
  line: Schema.optionalKey(Schema.Struct({ command: Schema.NonEmptyString, reply: Schema.NonEmptyString })),
  clientName: Schema.optionalKey(Schema.NonEmptyString),
  negotiationTimeout: Schema.optionalKey(DurationInput),
  // limits and timeouts
  handshakeTimeout: Schema.optionalKey(DurationInput),
  idleTimeout: Schema.optionalKey(DurationInput),
  connectTimeout: Schema.optionalKey(DurationInput),
  maxConnections: Schema.optionalKey(Schema.Int),
  // plaintext guardrails: explicit, loud opt-in to a plaintext side off the host (issue 13 §3)
  allowPlaintextNetwork: Schema.optionalKey(Schema.Boolean),
  // PROXY protocol: a header to the target (terminate, server-side starttls) and from load balancers
  proxyProtocol: Schema.optionalKey(Schema.Literals(["v1", "v2"])),
  acceptProxyProtocol: Schema.optionalKey(
    Schema.Struct({
      trustedSources: Schema.Array(Schema.String),
      timeout: Schema.optionalKey(DurationInput)
    })
  )
})

// The top level is decoded key by key, and each TLS configuration and listener on its own, so
// that one broken entry does not hide the problems of the others (see `decode`).
const topLevelKeys = ["tls", "listeners", "admin", "drainTimeout", "expiryWarning", "policy", "workers"] as const
const TlsMapSchema = Schema.Record(Schema.String, Schema.Unknown)
const ListenerArraySchema = Schema.Array(Schema.Unknown)
const AdminSchema = Schema.Struct({ listen: Schema.optionalKey(Schema.NonEmptyString) })
// plaintext guardrails (issue 13 §3)
const PolicySchema = Schema.Struct({ requireTls: Schema.optionalKey(Schema.Boolean) })
const WorkersSchema = Schema.Union([Schema.Int, Schema.Literal("auto")])

type RawAdmin = typeof AdminSchema.Type
type RawTlsConfig = typeof TlsConfigSchema.Type
type RawListener = typeof ListenerSchema.Type

// ---------------------------------------------------------------------------------------------
// Models (the decoded, validated configuration)
// ---------------------------------------------------------------------------------------------

/** A TCP or UNIX-socket address: `host:port`, `[v6]:port` or `unix:/path`. */
export type Address =
  | { readonly _tag: "Tcp"; readonly host: string; readonly port: number }
  | { readonly _tag: "Unix"; readonly path: string }

/** Where a private key password comes from. Never the password itself. */
export type PasswordSource =
  | { readonly _tag: "Env"; readonly name: string }
  | { readonly _tag: "File"; readonly path: string }
  | { readonly _tag: "Prompt" }

/** `none`: no certificate asked; `request`: asked, verified if sent; `require`: must be sent and verify. */
export type VerifyPeer = "none" | "request" | "require"

/** A named TLS configuration (IRIS `Security.SSLConfigs`), with defaults applied and paths resolved. */
export interface TlsConfig {
  readonly name: string
  readonly description: string
  readonly enabled: boolean
  /**
   * `server` or `client`, as in IRIS; `mirror` is one entry for both roles with one certificate
   * and key (IRIS's %MirrorServer + %MirrorClient pair): mutual verification and the dual-use
   * rule are on by default.
   */
  readonly type: "client" | "server" | "mirror"
  readonly caFile: string | undefined
  readonly certificateFile: string | undefined
  readonly privateKeyFile: string | undefined
  readonly privateKeyType: "RSA" | "EC" | "Ed25519" | undefined
  readonly privateKeyPassword: PasswordSource | undefined
  readonly minVersion: "TLSv1.2" | "TLSv1.3"
  readonly maxVersion: "TLSv1.2" | "TLSv1.3"
  readonly cipherList: string
  readonly cipherSuites: string | undefined
  readonly verifyPeer: VerifyPeer
  readonly verifyDepth: number
  readonly crlFile: string | undefined
  /**
   * A CRL past its nextUpdate: `reject` (default) keeps it in OpenSSL's hands, which then fails
   * every handshake it covers (`CRL_HAS_EXPIRED`); `warn` keeps serving, Sleeve checking the
   * stale CRL itself after the handshake, and reports it.
   */
  readonly crlStale: "reject" | "warn"
  readonly authorizedPeers: ReadonlyArray<DistinguishedName.DistinguishedName>
  readonly requireDualUse: boolean
}

/** An IP address or network (`10.0.0.0/8`, `192.0.2.7`, `fd00::/8`); a bare address has the full prefix. */
export interface Cidr {
  readonly family: "IPv4" | "IPv6"
  readonly address: string
  readonly prefix: number
}

/** PROXY protocol headers accepted from load balancers in front of a listener. */
export interface AcceptProxyProtocol {
  /** Only these sources may connect; each must send a header. */
  readonly trustedSources: ReadonlyArray<Cidr>
  /** How long a trusted source has to send its whole header. */
  readonly timeoutMs: number
}

/** STARTTLS protocols Sleeve speaks on an app's behalf. */
export type StarttlsProtocol = "smtp" | "imap" | "pop3" | "ldap" | "postgres" | "line"

/** A listener: where Sleeve accepts, where it forwards, with which TLS configuration. */
export interface Listener {
  readonly name: string
  readonly mode: "terminate" | "originate" | "starttls"
  readonly listen: Address
  readonly target: Address
  readonly tls: string
  readonly serverName: string | undefined
  readonly insecureSkipHostnameVerification: boolean
  readonly starttls:
    | {
        readonly protocol: StarttlsProtocol
        readonly side: "server" | "client"
        readonly requireTls: boolean
        readonly maxCleartextBytes: number
        readonly line: { readonly command: string; readonly reply: string } | undefined
        readonly clientName: string
        /** Bounds the whole plaintext phase, from accept to the TLS handshake. */
        readonly negotiationTimeoutMs: number
      }
    | undefined
  readonly handshakeTimeoutMs: number
  /** 0 disables the idle timeout. */
  readonly idleTimeoutMs: number
  readonly connectTimeoutMs: number
  readonly maxConnections: number
  /** The listener accepts a plaintext side that is not loopback or a UNIX socket (see `plaintextSides`). */
  readonly allowPlaintextNetwork: boolean
  /**
   * A PROXY protocol header (`v1` line or `v2` binary with TLS TLVs) written to the target before
   * any application byte; terminate and server-side starttls (postgres, ldap) only.
   */
  readonly proxyProtocol: "v1" | "v2" | undefined
  /** PROXY protocol headers required from trusted load balancers in front. */
  readonly acceptProxyProtocol: AcceptProxyProtocol | undefined
}

/** The whole decoded file. */
export interface SleeveConfig {
  /** Absolute path of the file this was read from (relative paths inside it are resolved from its folder). */
  readonly file: string
  readonly tls: ReadonlyMap<string, TlsConfig>
  readonly listeners: ReadonlyArray<Listener>
  readonly admin: { readonly listen: Address } | undefined
  readonly drainTimeoutMs: number
  readonly expiryWarningMs: number
  /** Site-wide rules; `requireTls` forbids every plaintext path off the host. */
  readonly policy: { readonly requireTls: boolean }
  /**
   * How many single-threaded data-path processes serve the listeners: a count, or `auto` (one
   * per CPU the process may use). 1 (the default) runs everything in one process.
   */
  readonly workers: Workers
}

/** The `workers` setting: a count of processes, or `auto`. */
export type Workers = number | "auto"

/** The largest `workers` count accepted. */
export const maxWorkers = 64

/** Defaults, in one place so the docs' configuration reference can quote them. */
export const defaults = {
  minVersion: "TLSv1.2",
  maxVersion: "TLSv1.3",
  /** TLS 1.2: forward-secret ECDHE key exchange with AEAD ciphers only (no CBC, no RSA kx, no SHA-1 MACs). */
  cipherList:
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:" +
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305",
  verifyDepth: 9,
  handshakeTimeoutMs: 10_000,
  idleTimeoutMs: 3_600_000,
  connectTimeoutMs: 10_000,
  maxConnections: 1024,
  maxCleartextBytes: 65_536,
  negotiationTimeoutMs: 60_000,
  drainTimeoutMs: 30_000,
  expiryWarningMs: 14 * 86_400_000,
  adminListen: "127.0.0.1:9464",
  /** acceptProxyProtocol.timeout: the spec asks for at least 3 s (a TCP retransmit). */
  proxyProtocolTimeoutMs: 5_000,
  workers: 1
} as const

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/** One problem in a configuration: where (file and path inside the document) and which rule. */
export interface Problem {
  readonly file: string
  /** Dotted path inside the document, e.g. `tls.MyCfg.protocols.min` or `listeners[0].tls`. */
  readonly path: string
  readonly rule: string
  readonly severity: "error" | "warning"
}

/** Renders a problem as one line: `file: path: rule`. */
export const formatProblem = (p: Problem): string =>
  `${p.file}: ${p.path === "" ? "" : `${p.path}: `}${p.severity === "warning" ? "warning: " : ""}${p.rule}`

/** The configuration could not be decoded; `problems` lists every error found (never empty). */
export class ConfigError extends Data.TaggedError("ConfigError")<{
  readonly file: string
  readonly problems: ReadonlyArray<Problem>
}> {
  override get message(): string {
    return this.problems.map(formatProblem).join("\n")
  }
}

// ---------------------------------------------------------------------------------------------
// Pure helpers: addresses, durations, paths
// ---------------------------------------------------------------------------------------------

/** Parses `host:port`, `[v6]:port` or `unix:/path`; the error text is the rule broken. */
export const parseAddress = (input: string): Result.Result<Address, string> => {
  if (input.startsWith("unix:")) {
    const path = input.slice("unix:".length)
    return path === "" ? Result.fail(`expected "unix:/path", got "${input}"`) : Result.succeed({ _tag: "Unix", path })
  }
  const m = /^(?:\[([0-9A-Fa-f:.]+(?:%[\w.-]+)?)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(input)
  if (m === null) {
    return Result.fail(`expected "host:port", "[v6]:port" or "unix:/path", got "${input}"`)
  }
  const port = Number(m[3])
  if (port < 0 || port > 65535) return Result.fail(`port must be between 0 and 65535, got ${port}`)
  return Result.succeed({ _tag: "Tcp", host: (m[1] ?? m[2]) as string, port })
}

/** Parses `a.b.c.d`, `a.b.c.d/n`, an IPv6 address or `v6/n`; the error text is the rule broken. */
export const parseCidr = (input: string): Result.Result<Cidr, string> => {
  const slash = input.indexOf("/")
  const address = slash < 0 ? input : input.slice(0, slash)
  const v = Net.isIP(address)
  const rule = `expected an IP address or a CIDR such as "10.0.0.0/8" or "fd00::/8", got "${input}"`
  if (v === 0 || address.includes("%")) return Result.fail(rule)
  const max = v === 4 ? 32 : 128
  if (slash < 0) return Result.succeed({ family: v === 4 ? "IPv4" : "IPv6", address, prefix: max })
  const p = input.slice(slash + 1)
  if (!/^\d{1,3}$/.test(p) || Number(p) > max) return Result.fail(rule)
  return Result.succeed({ family: v === 4 ? "IPv4" : "IPv6", address, prefix: Number(p) })
}

/** Formats a CIDR back to its configuration form. */
export const formatCidr = (c: Cidr): string =>
  c.prefix === (c.family === "IPv4" ? 32 : 128) ? c.address : `${c.address}/${c.prefix}`

/** Formats an address back to its configuration form. */
export const formatAddress = (a: Address): string =>
  a._tag === "Unix" ? `unix:${a.path}` : a.host.includes(":") ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`

const durationUnits: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

/** Parses a duration: a number of seconds, or `<n>ms|s|m|h|d`; returns milliseconds. */
export const parseDuration = (input: number | string): Result.Result<number, string> => {
  if (typeof input === "number") {
    return Number.isFinite(input) && input >= 0
      ? Result.succeed(Math.round(input * 1000))
      : Result.fail(`expected a non-negative number of seconds, got ${input}`)
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$/.exec(input)
  if (m === null) return Result.fail(`expected a duration such as "500ms", "10s", "5m" or "1h", got "${input}"`)
  return Result.succeed(Math.round(Number(m[1]) * (durationUnits[m[2] as string] as number)))
}

const showValue = (v: unknown): string => {
  if (v === undefined) return "nothing"
  const s = JSON.stringify(v)
  return s === undefined ? String(v) : s.length > 60 ? `${s.slice(0, 57)}...` : s
}

const formatPath = (path: ReadonlyArray<PropertyKey>): string => {
  let out = ""
  for (const seg of path) {
    if (typeof seg === "number") out += `[${seg}]`
    else out += out === "" ? String(seg) : `.${String(seg)}`
  }
  return out
}

const valueAt = (root: unknown, path: ReadonlyArray<PropertyKey>): unknown => {
  let cur: unknown = root
  for (const seg of path) {
    if (cur === null || typeof cur !== "object") return undefined
    cur = (cur as Record<PropertyKey, unknown>)[seg as string]
  }
  return cur
}

const deprecatedProtocols = new Set(["TLSv1", "TLSv1.0", "TLSv1.1", "SSLv3", "SSLv2"])

/** Turns one schema issue into the rule text an operator reads. */
const structuralRule = (raw: unknown, path: ReadonlyArray<PropertyKey>, message: string): string => {
  const value = valueAt(raw, path)
  const last = path[path.length - 1]
  if (path.length === 3 && path[0] === "tls" && last === "privateKeyPassword") {
    return "expected { env: NAME }, { file: PATH } or { prompt: true } — the password itself never goes in the file"
  }
  if (message === "Expected no excess property") return `unknown key "${String(last)}"`
  if (message === "Missing key") return "required key is missing"
  const parent = path[path.length - 2]
  if (parent === "protocols" && typeof value === "string" && deprecatedProtocols.has(value)) {
    return (
      `expected "TLSv1.2" | "TLSv1.3", got "${value}": TLS 1.0/1.1 (and SSL) are refused — ` +
      "they are deprecated by RFC 8996 and lack modern AEAD ciphers; upgrade the peer to TLS 1.2 or later"
    )
  }
  const expected = message.startsWith("Expected ") ? message.slice("Expected ".length) : message
  return `expected ${expected}, got ${showValue(value)}`
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/**
 * Decodes a configuration from its text. `file` names it in errors and anchors relative paths.
 * Returns every problem at once.
 */
export const decode = (text: string, file: string): Result.Result<SleeveConfig, ConfigError> => {
  const absFile = Path.resolve(file)
  const shown = file
  const problems: Array<Problem> = []
  const error = (path: string, rule: string) => problems.push({ file: shown, path, rule, severity: "error" })

  // syntax
  // `linePos` is only filled in with prettyErrors, which also rewrites the message; a LineCounter
  // gives the position without touching the message.
  const lineCounter = new Yaml.LineCounter()
  const doc = Yaml.parseDocument(text, { prettyErrors: false, uniqueKeys: true, lineCounter })
  if (doc.errors.length > 0) {
    for (const e of doc.errors) {
      const pos = lineCounter.linePos(e.pos[0])
      error("", `line ${pos.line}, column ${pos.col}: invalid YAML: ${e.message.split("\n")[0]}`)
    }
    return Result.fail(new ConfigError({ file: shown, problems }))
  }
  const raw: unknown = doc.toJS()
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    error("", `expected a mapping with "tls" and "listeners", got ${showValue(raw)}`)
    return Result.fail(new ConfigError({ file: shown, problems }))
  }

  // Structure, then semantics, part by part: a TLS configuration or a listener with a
  // structural problem is left out of the semantic pass, and every other part is still checked,
  // so one run lists every problem of the file.
  const root = raw as Record<string, unknown>
  const part = <A>(schema: Schema.Decoder<A>, path: ReadonlyArray<PropertyKey>): A | undefined =>
    decodePart(schema, valueAt(root, path), root, path, error)
  for (const key of Object.keys(root)) {
    if (!(topLevelKeys as ReadonlyArray<string>).includes(key)) error(key, `unknown key "${key}"`)
  }
  if (root.tls === undefined) error("tls", "required key is missing")
  const tlsMap = root.tls === undefined ? undefined : part(TlsMapSchema, ["tls"])
  const listenerArray = root.listeners === undefined ? [] : part(ListenerArraySchema, ["listeners"])
  const rawDuration = (key: "drainTimeout" | "expiryWarning") =>
    root[key] === undefined ? undefined : part(DurationInput, [key])

  const base = Path.dirname(absFile)
  const tls = new Map<string, TlsConfig>()
  const brokenTls = new Set<string>()
  for (const name of Object.keys(tlsMap ?? {})) {
    const cfg = part(TlsConfigSchema, ["tls", name])
    if (cfg === undefined) brokenTls.add(name)
    else
      tls.set(
        name,
        decodeTlsConfig(name, cfg, base, (p, r) => error(`tls.${name}.${p}`, r))
      )
  }
  // Without a readable `tls` mapping, a reference cannot be judged: say nothing about it.
  const references: References = {
    names: Object.keys(tlsMap ?? {}),
    status: (name) => (tls.has(name) ? "known" : brokenTls.has(name) || tlsMap === undefined ? "broken" : "unknown")
  }
  const rawListeners = (listenerArray ?? []).map((_, i) => part(ListenerSchema, ["listeners", i]))
  const decodedListeners = rawListeners.map((l, i) =>
    l === undefined
      ? undefined
      : decodeListener(l, tls, references, (p, rule) => error(`listeners[${i}]${p === "" ? "" : `.${p}`}`, rule))
  )
  const listeners = decodedListeners.flatMap((l) => (l === undefined ? [] : [l]))
  const rawAdmin: RawAdmin | undefined = root.admin === undefined ? {} : part(AdminSchema, ["admin"])
  const admin = rawAdmin === undefined ? undefined : decodeAdmin(rawAdmin, error)
  checkListenerSet(rawListeners, admin, error)
  // plaintext guardrails (issue 13 §3)
  const rawPolicy = root.policy === undefined ? {} : part(PolicySchema, ["policy"])
  const policy = { requireTls: rawPolicy?.requireTls ?? false }
  decodedListeners.forEach((l, i) => {
    if (l !== undefined) checkPlaintext(l, policy, (p, rule) => error(`listeners[${i}].${p}`, rule))
  })
  const drainTimeoutMs = durationOr(rawDuration("drainTimeout"), defaults.drainTimeoutMs, "drainTimeout", error)
  const expiryWarningMs = durationOr(rawDuration("expiryWarning"), defaults.expiryWarningMs, "expiryWarning", error)
  const workers = decodeWorkers(root.workers === undefined ? undefined : part(WorkersSchema, ["workers"]), error)

  if (problems.length > 0) return Result.fail(new ConfigError({ file: shown, problems }))
  return Result.succeed({ file: absFile, tls, listeners, admin, drainTimeoutMs, expiryWarningMs, policy, workers })
}

/**
 * Decodes one part of the document (`value`, found at `prefix` in `root`) and reports its
 * structural problems with their full paths; `undefined` when there was any.
 */
const decodePart = <A>(
  schema: Schema.Decoder<A>,
  value: unknown,
  root: unknown,
  prefix: ReadonlyArray<PropertyKey>,
  error: (path: string, rule: string) => void
): A | undefined => {
  const exit = Schema.decodeUnknownExit(schema)(value, { errors: "all", onExcessProperty: "error" })
  if (exit._tag === "Success") return exit.value
  const issue = findSchemaIssue(exit.cause)
  if (issue === undefined) throw new Error("schema decoding failed without an issue")
  const seen = new Set<string>()
  for (const i of SchemaIssue.makeFormatterStandardSchemaV1()(issue).issues) {
    const inner = (i.path ?? []).map((p) => (typeof p === "object" && p !== null && "key" in p ? p.key : p))
    let path = [...prefix, ...inner]
    // A password source is a union of three shapes: the issues of every member inside it would
    // contradict each other ("unknown key env", "env: required key is missing"); one rule for
    // the whole field says what is allowed.
    if (path[0] === "tls" && path[2] === "privateKeyPassword") path = path.slice(0, 3)
    const rule = structuralRule(root, path, i.message)
    const key = `${formatPath(path)}\u0000${rule}`
    if (seen.has(key)) continue
    seen.add(key)
    error(formatPath(path), rule)
  }
  return undefined
}

const findSchemaIssue = (cause: unknown): SchemaIssue.Issue | undefined => {
  const reasons = (cause as { reasons?: ReadonlyArray<{ _tag: string; error?: unknown }> }).reasons ?? []
  for (const r of reasons) {
    if (r._tag === "Fail" && Schema.isSchemaError(r.error)) return r.error.issue
  }
  return undefined
}

const durationOr = (
  input: number | string | undefined,
  fallback: number,
  path: string,
  error: (path: string, rule: string) => void
): number => {
  if (input === undefined) return fallback
  const r = parseDuration(input)
  if (Result.isFailure(r)) {
    error(path, r.failure)
    return fallback
  }
  return r.success
}

const decodeTlsConfig = (
  name: string,
  cfg: RawTlsConfig,
  base: string,
  error: (path: string, rule: string) => void
): TlsConfig => {
  const resolve = (p: string | undefined) => (p === undefined ? undefined : Path.resolve(base, p))
  const minVersion = cfg.protocols?.min ?? defaults.minVersion
  const maxVersion = cfg.protocols?.max ?? defaults.maxVersion
  if (minVersion === "TLSv1.3" && maxVersion === "TLSv1.2") {
    error("protocols", `min (${minVersion}) is above max (${maxVersion})`)
  }
  // Secure default: a client verifies the server it talks to; a server asks for nothing unless
  // told; a mirror pair authenticates both ways (seed "TLS with Mirroring").
  const verifyPeer: VerifyPeer = cfg.verifyPeer ?? (cfg.type === "server" ? "none" : "require")
  if (cfg.type === "mirror" && verifyPeer !== "require") {
    error(
      "verifyPeer",
      `a mirror configuration authenticates its peer both ways: expected "require", got "${verifyPeer}"`
    )
  }
  if (cfg.type !== "client" && (cfg.certificateFile === undefined || cfg.privateKeyFile === undefined)) {
    error(
      cfg.certificateFile === undefined ? "certificateFile" : "privateKeyFile",
      `a ${cfg.type} configuration needs certificateFile and privateKeyFile`
    )
  } else if ((cfg.certificateFile === undefined) !== (cfg.privateKeyFile === undefined)) {
    error(
      cfg.certificateFile === undefined ? "certificateFile" : "privateKeyFile",
      "certificateFile and privateKeyFile go together"
    )
  }
  if (verifyPeer !== "none" && cfg.caFile === undefined) {
    error("caFile", `verifyPeer: ${verifyPeer} needs a caFile with the certificate authorities to trust`)
  }
  if (cfg.privateKeyPassword !== undefined && cfg.privateKeyFile === undefined) {
    error("privateKeyPassword", "set without a privateKeyFile")
  }
  const verifyDepth = cfg.verifyDepth ?? defaults.verifyDepth
  if (verifyDepth < 0 || verifyDepth > 100) error("verifyDepth", `expected 0 to 100, got ${verifyDepth}`)
  const authorizedPeers: Array<DistinguishedName.DistinguishedName> = []
  ;(cfg.authorizedPeers ?? []).forEach((s, i) => {
    const r = DistinguishedName.parse(s)
    if (Result.isFailure(r)) error(`authorizedPeers[${i}]`, `not a distinguished name: ${r.failure.message}`)
    // Fail closed: an empty DN would authorize any verified certificate with an empty subject.
    else if (r.success.rdns.length === 0) error(`authorizedPeers[${i}]`, "an empty distinguished name is not allowed")
    else authorizedPeers.push(r.success)
  })
  // Authorization without verification would trust whatever the peer claims: fail closed.
  if (authorizedPeers.length > 0 && verifyPeer !== "require") {
    error(
      "authorizedPeers",
      `needs verifyPeer: require (it is ${verifyPeer}); a DN is only trusted on a verified chain`
    )
  }
  if (cfg.requireDualUse === true && verifyPeer !== "require") {
    error("requireDualUse", `needs verifyPeer: require (it is ${verifyPeer})`)
  }
  // revocation (issue 13 §2): a CRL only means something where peer certificates are verified.
  if (cfg.crlFile !== undefined && verifyPeer === "none") {
    error(
      "crlFile",
      "has no effect with verifyPeer: none (no peer certificate is verified); set verifyPeer or remove it"
    )
  }
  if (cfg.crlStale !== undefined && cfg.crlFile === undefined) error("crlStale", "only applies with a crlFile")
  const pw = cfg.privateKeyPassword
  const privateKeyPassword: PasswordSource | undefined =
    pw === undefined
      ? undefined
      : "env" in pw
        ? { _tag: "Env", name: pw.env }
        : "file" in pw
          ? { _tag: "File", path: Path.resolve(base, pw.file) }
          : { _tag: "Prompt" }
  return {
    name,
    description: cfg.description ?? "",
    enabled: cfg.enabled ?? true,
    type: cfg.type,
    caFile: resolve(cfg.caFile),
    certificateFile: resolve(cfg.certificateFile),
    privateKeyFile: resolve(cfg.privateKeyFile),
    privateKeyType: cfg.privateKeyType,
    privateKeyPassword,
    minVersion,
    maxVersion,
    cipherList: cfg.cipherList ?? defaults.cipherList,
    cipherSuites: cfg.cipherSuites,
    verifyPeer,
    verifyDepth,
    crlFile: resolve(cfg.crlFile),
    crlStale: cfg.crlStale ?? "reject",
    authorizedPeers,
    requireDualUse: cfg.requireDualUse ?? cfg.type === "mirror"
  }
}

/** What a listener may refer to: every configuration name, and whether one decoded. */
interface References {
  readonly names: ReadonlyArray<string>
  readonly status: (name: string) => "known" | "broken" | "unknown"
}

/** The TLS role of a listener mode: terminate serves, originate connects, starttls as its `side` says. */
const roleOf = (mode: Listener["mode"], side: "server" | "client" | undefined): "server" | "client" =>
  mode === "terminate" ? "server" : mode === "originate" ? "client" : (side ?? "server")

const decodeListener = (
  l: RawListener,
  tls: ReadonlyMap<string, TlsConfig>,
  references: References,
  error: (path: string, rule: string) => void
): Listener | undefined => {
  const before = { n: 0 }
  const err = (p: string, r: string) => {
    before.n++
    error(p, r)
  }
  const listen = parseAddress(l.listen)
  if (Result.isFailure(listen)) err("listen", listen.failure)
  else if (listen.success._tag === "Unix") err("listen", "listening on a UNIX socket is not supported; use host:port")
  const target = parseAddress(l.target)
  if (Result.isFailure(target)) err("target", target.failure)
  else if (target.success._tag === "Tcp" && target.success.port === 0) err("target", "port 0 is not a target")

  // The reference to a TLS configuration: it must exist, be enabled and be of the role the mode needs.
  const cfg = tls.get(l.tls)
  const wanted = roleOf(l.mode, l.side)
  if (cfg === undefined) {
    // A configuration with structural problems has its own; the listener is still left out.
    if (references.status(l.tls) === "broken") before.n++
    else {
      const known = references.names
      err("tls", `no TLS configuration named "${l.tls}"${known.length > 0 ? ` (known: ${known.join(", ")})` : ""}`)
    }
  } else if (!cfg.enabled) {
    err("tls", `TLS configuration "${l.tls}" is disabled (enabled: false)`)
  } else if (cfg.type !== wanted && cfg.type !== "mirror") {
    err(
      "tls",
      `TLS configuration "${l.tls}" is of type ${cfg.type}, but a ${l.mode}${l.mode === "starttls" ? ` side: ${wanted}` : ""} listener needs type ${wanted}`
    )
  }

  const starttlsOnly = [
    "protocol",
    "side",
    "requireTls",
    "maxCleartextBytes",
    "line",
    "clientName",
    "negotiationTimeout"
  ] as const
  if (l.mode !== "starttls") {
    for (const k of starttlsOnly) if (l[k] !== undefined) err(k, `only applies to mode: starttls`)
  } else if (l.protocol === undefined) {
    err("protocol", "mode: starttls needs a protocol (smtp | imap | pop3 | ldap | postgres | line)")
  } else if (l.protocol === "line" && l.line === undefined) {
    err("line", "protocol: line needs line: { command, reply }")
  } else if (l.protocol !== "line" && l.line !== undefined) {
    err("line", "only applies to protocol: line")
  }
  if (wanted === "server" && (l.serverName !== undefined || l.insecureSkipHostnameVerification !== undefined)) {
    err(
      l.serverName !== undefined ? "serverName" : "insecureSkipHostnameVerification",
      "only applies to client-side TLS"
    )
  }
  // The STARTTLS negotiator's own rules, checked here so that `sleeve check` catches them before
  // any socket opens: what Sleeve sends must be one clean protocol line.
  if (l.clientName !== undefined && !/^[A-Za-z0-9.:[\]-]{1,255}$/.test(l.clientName)) {
    err("clientName", `expected a domain or an address literal, got ${showValue(l.clientName)}`)
  }
  if (l.line !== undefined) {
    for (const key of ["command", "reply"] as const) {
      const value = l.line[key]
      if (value.length > 1000 || /[\r\n\x00]|[^\x00-\xff]/.test(value)) {
        err(`line.${key}`, "expected 1 to 1000 Latin-1 characters without CR, LF or NUL")
      }
    }
  }
  if (l.maxConnections !== undefined && l.maxConnections < 1) {
    err("maxConnections", `expected at least 1, got ${l.maxConnections}`)
  }
  if (l.maxCleartextBytes !== undefined && l.maxCleartextBytes < 64) {
    err("maxCleartextBytes", `expected at least 64, got ${l.maxCleartextBytes}`)
  }
  const dur = (k: "handshakeTimeout" | "idleTimeout" | "connectTimeout", fallback: number) =>
    durationOr(l[k], fallback, k, err)
  const handshakeTimeoutMs = dur("handshakeTimeout", defaults.handshakeTimeoutMs)
  const idleTimeoutMs = dur("idleTimeout", defaults.idleTimeoutMs)
  const connectTimeoutMs = dur("connectTimeout", defaults.connectTimeoutMs)
  const negotiationTimeoutMs = durationOr(
    l.negotiationTimeout,
    defaults.negotiationTimeoutMs,
    "negotiationTimeout",
    err
  )
  if (negotiationTimeoutMs === 0) err("negotiationTimeout", "must be above 0")
  if (handshakeTimeoutMs === 0) err("handshakeTimeout", "must be above 0")
  if (connectTimeoutMs === 0) err("connectTimeout", "must be above 0")

  // PROXY protocol (docs/proxy-protocol.md). The header must be the first bytes the target
  // sees, and it is only worth sending once TLS has told Sleeve who the peer is.
  if (l.proxyProtocol !== undefined) {
    if (wanted === "client") {
      err(
        "proxyProtocol",
        "only applies where the target is the plaintext application: mode terminate, or mode starttls with side: server"
      )
    } else if (
      l.mode === "starttls" &&
      l.protocol !== undefined &&
      l.protocol !== "postgres" &&
      l.protocol !== "ldap"
    ) {
      err(
        "proxyProtocol",
        `not with protocol: ${l.protocol}: its application takes part in the conversation before the TLS upgrade, ` +
          "so the header would have to precede TLS; supported with protocol postgres or ldap, or on a terminate listener"
      )
    } else if (l.mode === "starttls" && l.requireTls === false) {
      err("proxyProtocol", "needs requireTls: true: a client that never upgrades would reach the application first")
    }
  }
  let acceptProxyProtocol: AcceptProxyProtocol | undefined
  if (l.acceptProxyProtocol !== undefined) {
    const trustedSources: Array<Cidr> = []
    const sources = l.acceptProxyProtocol.trustedSources
    if (sources.length === 0) {
      err(
        "acceptProxyProtocol.trustedSources",
        "needs at least one address or CIDR: the load balancers allowed to send a PROXY header"
      )
    }
    sources.forEach((s, i) => {
      const c = parseCidr(s)
      if (Result.isFailure(c)) err(`acceptProxyProtocol.trustedSources[${i}]`, c.failure)
      // Fail closed: trusting everyone lets any client claim any address.
      else if (c.success.prefix === 0) {
        err(
          `acceptProxyProtocol.trustedSources[${i}]`,
          `"${s}" trusts every address, so any client could claim any source address; list the load balancers`
        )
      } else trustedSources.push(c.success)
    })
    const timeoutMs = durationOr(
      l.acceptProxyProtocol.timeout,
      defaults.proxyProtocolTimeoutMs,
      "acceptProxyProtocol.timeout",
      err
    )
    if (timeoutMs === 0) err("acceptProxyProtocol.timeout", "must be above 0")
    acceptProxyProtocol = { trustedSources, timeoutMs }
  }

  if (before.n > 0 || Result.isFailure(listen) || Result.isFailure(target)) return undefined
  const targetAddress = target.success
  return {
    name: l.name,
    mode: l.mode,
    listen: listen.success,
    target: targetAddress,
    tls: l.tls,
    serverName: l.serverName ?? (wanted === "client" && targetAddress._tag === "Tcp" ? targetAddress.host : undefined),
    insecureSkipHostnameVerification: l.insecureSkipHostnameVerification ?? false,
    starttls:
      l.mode === "starttls" && l.protocol !== undefined
        ? {
            protocol: l.protocol,
            side: l.side ?? "server",
            requireTls: l.requireTls ?? true,
            maxCleartextBytes: l.maxCleartextBytes ?? defaults.maxCleartextBytes,
            line: l.line,
            clientName: l.clientName ?? "localhost",
            negotiationTimeoutMs
          }
        : undefined,
    handshakeTimeoutMs,
    idleTimeoutMs,
    connectTimeoutMs,
    maxConnections: l.maxConnections ?? defaults.maxConnections,
    allowPlaintextNetwork: l.allowPlaintextNetwork ?? false,
    proxyProtocol: l.proxyProtocol,
    acceptProxyProtocol
  }
}

/**
 * Names and listen addresses must be unique across listeners and the admin endpoint. Works on the
 * raw listeners so that indices are the file's, and a listener with another problem is still
 * checked against the others.
 */
const checkListenerSet = (
  listeners: ReadonlyArray<RawListener | undefined>,
  admin: SleeveConfig["admin"],
  error: (path: string, rule: string) => void
): void => {
  const names = new Map<string, number>()
  const addresses = new Map<string, number>()
  const adminKey = admin === undefined ? undefined : formatAddress(admin.listen)
  listeners.forEach((l, i) => {
    if (l === undefined) return
    const n = names.get(l.name)
    if (n !== undefined) error(`listeners[${i}].name`, `duplicate listener name "${l.name}" (also listeners[${n}])`)
    else names.set(l.name, i)
    const listen = parseAddress(l.listen)
    // Port 0 asks the system for a free port: never a clash.
    if (Result.isSuccess(listen) && listen.success._tag === "Tcp" && listen.success.port !== 0) {
      const key = formatAddress(listen.success)
      const a = addresses.get(key)
      if (a !== undefined) error(`listeners[${i}].listen`, `address ${key} is also used by listeners[${a}]`)
      else addresses.set(key, i)
      if (key === adminKey)
        error(`listeners[${i}].listen`, `address ${key} is also used by the admin endpoint (admin.listen)`)
    }
  })
}

const decodeAdmin = (raw: RawAdmin, error: (path: string, rule: string) => void): SleeveConfig["admin"] => {
  const listen = raw.listen ?? defaults.adminListen
  const r = parseAddress(listen)
  if (Result.isFailure(r)) {
    error("admin.listen", r.failure)
    return undefined
  }
  if (r.success._tag === "Unix") {
    error("admin.listen", "the admin endpoint listens on host:port")
    return undefined
  }
  return { listen: r.success }
}

const decodeWorkers = (raw: Workers | undefined, error: (path: string, rule: string) => void): Workers => {
  if (raw === undefined) return defaults.workers
  if (raw !== "auto" && (raw < 1 || raw > maxWorkers)) {
    error("workers", `expected 1 to ${maxWorkers} or "auto", got ${raw}`)
    return defaults.workers
  }
  return raw
}

/** Listeners that use a TLS configuration (used to report which listeners a broken configuration affects). */
export const listenersUsing = (config: SleeveConfig, tlsName: string): ReadonlyArray<Listener> =>
  config.listeners.filter((l) => l.tls === tlsName)

/** The TLS role a listener plays on its TLS leg. */
export const tlsRole = (l: Listener): "server" | "client" => roleOf(l.mode, l.starttls?.side)

// ---------------------------------------------------------------------------------------------
// Plaintext guardrails (issue 13 §3; seed: "TLS is required" when data is sensitive)
// ---------------------------------------------------------------------------------------------

/** A side of a listener where application bytes travel unencrypted. */
export interface PlaintextSide {
  readonly field: "listen" | "target"
  readonly address: Address
  /** Why application bytes are in the clear there, for messages. */
  readonly why: string
}

/**
 * The sides of a listener that carry application bytes in plaintext: terminate's `target` (the
 * decrypted stream), originate's `listen` (the application's bytes before encryption), a STARTTLS
 * listener's application leg (`target` on the server side, `listen` on the client side) and, on
 * the server side with `requireTls: false`, also `listen`: a client that never asks for TLS is
 * relayed in plaintext. (The client side always requires the upgrade.) The plaintext negotiation
 * before STARTTLS (greeting, capabilities, the STARTTLS command) is not application data.
 */
export const plaintextSides = (l: Listener): ReadonlyArray<PlaintextSide> => {
  switch (l.mode) {
    case "terminate":
      return [{ field: "target", address: l.target, why: "terminate forwards the decrypted bytes to target" }]
    case "originate":
      return [{ field: "listen", address: l.listen, why: "originate accepts the application's plaintext on listen" }]
    case "starttls": {
      const st = l.starttls
      if (st?.side === "client") {
        return [
          {
            field: "listen",
            address: l.listen,
            why: "a client-side starttls listener accepts the application's plaintext on listen"
          }
        ]
      }
      const app: PlaintextSide = {
        field: "target",
        address: l.target,
        why: "a server-side starttls listener forwards the decrypted bytes to target"
      }
      return st?.requireTls === false
        ? [
            app,
            {
              field: "listen",
              address: l.listen,
              why: "with requireTls: false, a client that never sends STARTTLS is relayed in plaintext from listen"
            }
          ]
        : [app]
    }
  }
}

/** Whether an IP address (text, as Node reports it) is loopback: 127.0.0.0/8, ::1 or ::ffff:127.x.x.x. */
export const isLoopbackIp = (ip: string): boolean => {
  const family = Net.isIPv4(ip) ? "ipv4" : Net.isIPv6(ip) ? "ipv6" : undefined
  return family !== undefined && loopback.check(ip, family)
}

// Node's BlockList also matches IPv4-mapped IPv6 addresses (::ffff:127.0.0.1) against IPv4 rules.
const loopback = new Net.BlockList()
loopback.addSubnet("127.0.0.0", 8, "ipv4")
loopback.addAddress("::1", "ipv6")

/**
 * Whether an address provably stays on this host: a UNIX socket, a loopback IP literal, or the
 * name `localhost` (RFC 6761 §6.3 reserves it for loopback; Sleeve also checks, when it dials a
 * plaintext target by that name, that the connection really went to a loopback address). Any
 * other host name is treated as network: what it resolves to is not known at check time and may
 * change under a running sidecar.
 */
export const staysOnHost = (a: Address): boolean =>
  a._tag === "Unix" || isLoopbackIp(a.host) || a.host.toLowerCase() === "localhost"

const checkPlaintext = (
  l: Listener,
  policy: SleeveConfig["policy"],
  error: (path: string, rule: string) => void
): void => {
  if (policy.requireTls && l.allowPlaintextNetwork) {
    error(
      "allowPlaintextNetwork",
      "policy.requireTls forbids plaintext application bytes off this host, so this override is not allowed; " +
        "put the application on the same host (loopback or unix:/path) or remove policy.requireTls"
    )
  }
  for (const side of plaintextSides(l)) {
    if (staysOnHost(side.address)) continue
    const shown = formatAddress(side.address)
    if (policy.requireTls && side.field === "listen" && l.mode === "starttls") {
      error(
        "requireTls",
        `policy.requireTls forbids requireTls: false here: listen ${shown} is not loopback, so a client that never sends STARTTLS ` +
          "would be relayed in plaintext over the network; set requireTls: true"
      )
    } else if (policy.requireTls) {
      error(
        side.field,
        `plaintext on the network: ${side.why}, and ${shown} is not loopback or a UNIX socket; ` +
          "policy.requireTls forbids that (use 127.0.0.1, [::1], localhost or unix:/path)"
      )
    } else if (!l.allowPlaintextNetwork) {
      error(
        side.field,
        `plaintext on the network: ${side.why}, and ${shown} is not loopback or a UNIX socket ` +
          "(a host name other than localhost counts as network); use 127.0.0.1, [::1], localhost or unix:/path, " +
          "or set allowPlaintextNetwork: true on this listener to accept it (logged as a warning at every start)"
      )
    }
  }
}

/**
 * The warnings a valid configuration still deserves: one for each listener that uses
 * `allowPlaintextNetwork` for a plaintext side off the host. `sleeve check` prints them; `sleeve run`
 * logs them at every start and reload.
 */
export const plaintextWarnings = (config: SleeveConfig): ReadonlyArray<Problem> =>
  config.listeners.flatMap((l) => {
    if (!l.allowPlaintextNetwork) return []
    const i = config.listeners.indexOf(l)
    const off = plaintextSides(l).filter((s) => !staysOnHost(s.address))
    return [
      {
        file: config.file,
        path: `listeners[${i}].allowPlaintextNetwork`,
        rule:
          off.length === 0
            ? `listener "${l.name}" allows plaintext on the network, but none of its plaintext sides leaves this host`
            : `listener "${l.name}" carries application bytes in plaintext over the network: ${off
                .map((s) => `${s.field} ${formatAddress(s.address)}`)
                .join(", ")}`,
        severity: "warning" as const
      }
    ]
  })
