/**
 * STARTTLS negotiators: for each protocol (SMTP, IMAP, POP3, LDAP, PostgreSQL and a generic
 * line trigger) and each side, an incremental state machine that is fed the plaintext bytes of
 * the two legs of a connection and answers with actions (bytes to send, "upgrade now", "refuse").
 *
 * Sides. On the `server` side Sleeve sits in front of a legacy plaintext server (the "app"):
 * remote clients (the "peer") talk plaintext to Sleeve, which relays the conversation to the app,
 * advertises the upgrade on the app's behalf, answers the STARTTLS command itself and then runs
 * TLS towards the peer while the app keeps talking plaintext. On the `client` side Sleeve sits
 * beside a legacy plaintext client (the "app") and connects to a remote server (the "peer") that
 * requires STARTTLS: Sleeve runs the negotiation itself, upgrades, and replays what the app
 * expects to see first (the server's greeting), so the app works unchanged.
 *
 * Security choices, each enforced here so that every runner gets them:
 * - bytes the peer pipelines after the STARTTLS command (or after the server's "go ahead") are
 *   discarded and counted, never relayed after the upgrade (STARTTLS command injection,
 *   CVE-2011-0411 and its PostgreSQL cousins CVE-2021-23214/23222);
 * - with `requireTls` (the server-side default) application commands before the upgrade are
 *   answered with the protocol's own error and never reach the app;
 * - all cleartext before the upgrade (both directions, plus Sleeve's own answers) is capped by
 *   `maxCleartextBytes`; past it the connection is refused with reason `cleartext_limit`;
 * - a server that does not offer STARTTLS, or refuses it, is a refusal (`not_offered`): there is
 *   no fallback to plaintext.
 *
 * Relaying before the upgrade is lock-step for SMTP, IMAP and POP3: the next command of the peer
 * is looked at only when the app has finished answering the previous one, so Sleeve's own answers
 * (refusals, the STARTTLS go-ahead) are always correctly ordered with the app's. This costs only
 * latency, and only before the upgrade.
 *
 * This module is a pure codec: it never opens a socket, never touches a Node stream and never
 * reads a clock. `StarttlsSession` runs it on sockets; timeouts belong to the caller.
 */
import { Data } from "effect"

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

/** The protocols whose STARTTLS dialect Sleeve speaks. */
export type Protocol = "smtp" | "imap" | "pop3" | "ldap" | "postgres" | "line"

/** Every {@link Protocol}, in a stable order. */
export const protocols: ReadonlyArray<Protocol> = ["smtp", "imap", "pop3", "ldap", "postgres", "line"]

/** `server`: Sleeve fronts a plaintext server. `client`: Sleeve fronts a plaintext client. */
export type Side = "server" | "client"

/** Why a negotiation was refused; used directly as a metric label. */
export type RefuseReason = "starttls_required" | "cleartext_limit" | "protocol_error" | "not_offered"

/** Send bytes on the peer leg (the remote side: a remote client, or the remote server). */
export interface ToPeer {
  readonly _tag: "ToPeer"
  readonly bytes: Uint8Array
}

/** Send bytes to the local legacy app. */
export interface ToApp {
  readonly _tag: "ToApp"
  readonly bytes: Uint8Array
}

/**
 * Start TLS on the peer leg now. Always the last action of a batch. `discarded` counts the bytes
 * the peer sent after the upgrade point that were buffered here and thrown away.
 */
export interface Upgrade {
  readonly _tag: "Upgrade"
  readonly discarded: number
}

/** Close both legs after flushing the bytes of the preceding actions. Always the last action. */
export interface Refuse {
  readonly _tag: "Refuse"
  readonly reason: RefuseReason
  readonly detail: string
}

/** What a negotiator asks its runner to do. */
export type Action = ToPeer | ToApp | Upgrade | Refuse

/** Where a negotiator is in its life. */
export type Phase = "negotiating" | "upgrading" | "upgraded" | "refused"

/** Counters of one negotiation, for metrics and logs. */
export interface Stats {
  /** Cleartext bytes seen before the upgrade (both legs) plus Sleeve's own answers. */
  readonly cleartextBytes: number
  /** Peer bytes received after the upgrade point and thrown away. */
  readonly discardedBytes: number
  /** Commands answered with an error because TLS was required and not active yet. */
  readonly refusedCommands: number
}

/** An incremental rewrite of one direction of a stream: feed chunks, get bytes to forward. */
export interface StreamFilter {
  readonly push: (chunk: Uint8Array) => Uint8Array
  /** The bytes still held back, at the end of the stream. */
  readonly flush: () => Uint8Array
}

/** What to do once the TLS handshake on the peer leg has succeeded. */
export interface Upgraded {
  /** Bytes to write now: the replayed greeting to the app, app bytes held during negotiation. */
  readonly actions: ReadonlyArray<ToPeer | ToApp>
  /** A rewrite for the app→peer direction from now on, or undefined to relay verbatim. */
  readonly appToPeer: StreamFilter | undefined
}

/** The generic `line` trigger: the command line and its go-ahead reply (no line terminator). */
export interface LineOptions {
  readonly command: string
  readonly reply: string
  /** Terminator of the lines Sleeve sends on the client side; default CRLF. */
  readonly lineEnding?: "\r\n" | "\n" | undefined
}

/** Options of {@link makeNegotiator}. */
export interface NegotiatorOptions {
  readonly protocol: Protocol
  readonly side: Side
  /**
   * Server side: refuse application commands before the upgrade (default true). With false the
   * plaintext conversation is relayed until the peer asks for TLS (still capped by
   * `maxCleartextBytes`). The client side always requires the upgrade and ignores this.
   */
  readonly requireTls?: boolean | undefined
  /** Cap on cleartext bytes before the upgrade; default {@link defaultMaxCleartextBytes}. */
  readonly maxCleartextBytes?: number | undefined
  /** Required for protocol `line`. */
  readonly line?: LineOptions | undefined
  /** SMTP client side: the name Sleeve sends in its EHLO; default "localhost". */
  readonly clientName?: string | undefined
}

/**
 * One negotiation. Feed it the bytes of both legs in arrival order and perform the returned
 * actions in order. After `Upgrade`, run the TLS handshake, then call `onUpgraded` (or
 * `onUpgradeFailed`) and relay the two legs directly. After `Refuse`, stop.
 */
export interface Negotiator {
  readonly protocol: Protocol
  readonly side: Side
  readonly phase: Phase
  readonly stats: Stats
  /** Actions to perform as soon as both legs are connected (client side: the first command). */
  readonly start: () => ReadonlyArray<Action>
  /** Bytes received from the peer. In phase `upgrading` they are counted as discarded. */
  readonly onPeer: (chunk: Uint8Array) => ReadonlyArray<Action>
  /** Bytes received from the app. In phase `upgrading` they are held for after the handshake. */
  readonly onApp: (chunk: Uint8Array) => ReadonlyArray<Action>
  /** The handshake succeeded: what to write now, and the app→peer rewrite if any. */
  readonly onUpgraded: () => Upgraded
  /** The handshake failed: the notice owed to the app (client side), never a plaintext fallback. */
  readonly onUpgradeFailed: () => ReadonlyArray<ToPeer | ToApp>
}

/** Invalid {@link NegotiatorOptions}; configuration decoding is expected to have caught it. */
export class NegotiatorOptionsError extends Data.TaggedError("NegotiatorOptionsError")<{
  readonly message: string
}> {}

/** Default of `maxCleartextBytes`: 64 KiB is far more than any honest pre-TLS exchange needs. */
export const defaultMaxCleartextBytes = 64 * 1024

/** The LDAP StartTLS extended operation (RFC 4511 §4.14). */
export const ldapStartTlsOid = "1.3.6.1.4.1.1466.20037"

/** The LDAP Notice of Disconnection unsolicited notification (RFC 4511 §4.4.1). */
export const ldapNoticeOfDisconnectionOid = "1.3.6.1.4.1.1466.20036"

/** PostgreSQL SSLRequest code (a startup packet of length 8). */
export const pgSslRequestCode = 80877103
/** PostgreSQL GSSENCRequest code. */
export const pgGssEncRequestCode = 80877104
/** PostgreSQL CancelRequest code. */
export const pgCancelRequestCode = 80877102

// ---------------------------------------------------------------------------------------------
// Bytes
// ---------------------------------------------------------------------------------------------

const empty = new Uint8Array(0)

const concat = (parts: ReadonlyArray<Uint8Array>): Uint8Array => {
  if (parts.length === 0) return empty
  if (parts.length === 1) return parts[0]!
  let n = 0
  for (const p of parts) n += p.length
  const out = new Uint8Array(n)
  let o = 0
  for (const p of parts) {
    out.set(p, o)
    o += p.length
  }
  return out
}

/** Latin-1 encoding: one byte per char code, so rewritten lines keep their 8-bit bytes. */
const encode = (s: string): Uint8Array => {
  const out = new Uint8Array(s.length)
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i) & 0xff
  return out
}

const decode = (b: Uint8Array, start = 0, end = b.length): string => {
  let s = ""
  for (let i = start; i < end; i += 4096) {
    s += String.fromCharCode(...b.subarray(i, Math.min(end, i + 4096)))
  }
  return s
}

/** The text of a line without its terminator (LF, or CRLF). */
const lineText = (line: Uint8Array): string => {
  let end = line.length
  if (end > 0 && line[end - 1] === 0x0a) end--
  if (end > 0 && line[end - 1] === 0x0d) end--
  return decode(line, 0, end)
}

/** A peer-provided string made safe for a log line or an error detail. */
const printable = (s: string): string => {
  const clean = s.replace(/[\x00-\x1f\x7f-\xff]/g, "?")
  return clean.length > 120 ? `${clean.slice(0, 120)}...` : clean
}

const firstWord = (text: string): string => {
  const m = /^\s*(\S*)/.exec(text)
  return m?.[1] ?? ""
}

/**
 * A FIFO of received chunks. Lines are found without re-scanning bytes already scanned, so a
 * peer dribbling one byte at a time costs linear, not quadratic, work.
 */
class ByteQueue {
  #chunks: Array<Uint8Array> = []
  #head = 0
  #length = 0
  #scanned = 0

  get length(): number {
    return this.#length
  }

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return
    this.#chunks.push(chunk)
    this.#length += chunk.length
  }

  at(index: number): number {
    let i = index + this.#head
    for (const c of this.#chunks) {
      if (i < c.length) return c[i]!
      i -= c.length
    }
    return -1
  }

  /** Big-endian unsigned 32-bit integer at `index`. */
  u32(index: number): number {
    return ((this.at(index) << 24) | (this.at(index + 1) << 16) | (this.at(index + 2) << 8) | this.at(index + 3)) >>> 0
  }

  take(n: number): Uint8Array {
    const count = Math.min(n, this.#length)
    this.#scanned = 0
    if (count === 0) return empty
    const first = this.#chunks[0]!
    if (first.length - this.#head >= count) {
      const out = first.subarray(this.#head, this.#head + count)
      this.#advance(count)
      return out
    }
    const out = new Uint8Array(count)
    let o = 0
    while (o < count) {
      const c = this.#chunks[0]!
      const n2 = Math.min(c.length - this.#head, count - o)
      out.set(c.subarray(this.#head, this.#head + n2), o)
      o += n2
      this.#advance(n2)
    }
    return out
  }

  takeAll(): Uint8Array {
    return this.take(this.#length)
  }

  /** The next line including its LF terminator, or undefined if no complete line is queued. */
  takeLine(): Uint8Array | undefined {
    let pos = 0
    let skip = this.#scanned + this.#head
    for (const c of this.#chunks) {
      if (skip >= c.length) {
        skip -= c.length
        pos += c.length
        continue
      }
      const i = c.indexOf(0x0a, skip)
      if (i >= 0) return this.take(pos + i + 1 - this.#head)
      pos += c.length
      skip = 0
    }
    this.#scanned = this.#length
    return undefined
  }

  #advance(n: number): void {
    this.#head += n
    this.#length -= n
    while (this.#chunks.length > 0 && this.#head >= this.#chunks[0]!.length) {
      this.#head -= this.#chunks[0]!.length
      this.#chunks.shift()
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Negotiator core
// ---------------------------------------------------------------------------------------------

interface Resolved {
  readonly protocol: Protocol
  readonly side: Side
  readonly requireTls: boolean
  readonly maxCleartextBytes: number
  readonly line: { readonly command: string; readonly reply: string; readonly lineEnding: string }
  readonly clientName: string
}

/** What a protocol driver may do; shared by all drivers. */
interface Ctx {
  readonly opts: Resolved
  readonly peer: ByteQueue
  readonly app: ByteQueue
  readonly negotiating: () => boolean
  /** Relay bytes to the peer. */
  readonly toPeer: (bytes: Uint8Array) => void
  /** Relay bytes to the app. */
  readonly toApp: (bytes: Uint8Array) => void
  /** Send an answer Sleeve makes up itself; it counts against the cleartext cap. */
  readonly say: (to: "peer" | "app", text: string | Uint8Array) => void
  readonly countRefused: () => void
  readonly upgrade: () => void
  /** Send the protocol's closing notice (see Driver.notice), then refuse. */
  readonly fail: (reason: RefuseReason, detail: string) => void
}

type NoticeReason = RefuseReason | "handshake_failed"

interface Driver {
  readonly start?: () => void
  /** Consume the queued input of both legs as far as the protocol allows. */
  readonly pump: () => void
  /** Client side: the greeting to replay to the app after the upgrade. */
  readonly greeting?: () => Uint8Array | undefined
  /** Server side: app bytes the driver took off the queue but has not relayed yet. */
  readonly leftover?: () => Uint8Array
  /** Emit the protocol's "closing now" message (server side: to the peer; client side: to the app). */
  readonly notice: (reason: NoticeReason) => void
  readonly appFilter?: () => StreamFilter
}

const noticeText: Record<NoticeReason, string> = {
  starttls_required: "TLS is required",
  cleartext_limit: "Too much cleartext before TLS",
  protocol_error: "Protocol error before TLS",
  not_offered: "The server does not offer STARTTLS",
  handshake_failed: "The TLS handshake with the server failed"
}

const resolve = (o: NegotiatorOptions): Resolved => {
  const bad = (message: string) => new NegotiatorOptionsError({ message })
  if (!protocols.includes(o.protocol)) throw bad(`unknown STARTTLS protocol ${JSON.stringify(o.protocol)}`)
  if (o.side !== "server" && o.side !== "client") throw bad(`side must be "server" or "client"`)
  const max = o.maxCleartextBytes ?? defaultMaxCleartextBytes
  if (!Number.isSafeInteger(max) || max < 1) throw bad(`maxCleartextBytes must be a positive integer, got ${max}`)
  const clientName = o.clientName ?? "localhost"
  if (!/^[A-Za-z0-9.:[\]-]{1,255}$/.test(clientName)) {
    throw bad(`clientName must be a domain or an address literal, got ${JSON.stringify(clientName)}`)
  }
  let line = { command: "", reply: "", lineEnding: "\r\n" }
  if (o.protocol === "line") {
    if (o.line === undefined) throw bad(`protocol "line" needs line.command and line.reply`)
    for (const [key, value] of [
      ["command", o.line.command],
      ["reply", o.line.reply]
    ] as const) {
      if (value.length === 0 || value.length > 1000 || /[\r\n\x00]|[^\x00-\xff]/.test(value)) {
        throw bad(`line.${key} must be 1 to 1000 Latin-1 characters without CR, LF or NUL`)
      }
    }
    line = { command: o.line.command, reply: o.line.reply, lineEnding: o.line.lineEnding ?? "\r\n" }
  }
  return {
    protocol: o.protocol,
    side: o.side,
    requireTls: o.requireTls ?? true,
    maxCleartextBytes: max,
    line,
    clientName
  }
}

/**
 * Make the negotiator for one connection. Throws {@link NegotiatorOptionsError} on invalid
 * options (a bug: the configuration schema validates them first).
 */
export const makeNegotiator = (options: NegotiatorOptions): Negotiator => {
  const opts = resolve(options)
  const peer = new ByteQueue()
  const app = new ByteQueue()
  let out: Array<Action> = []
  let phase: Phase = "negotiating"
  let started = false
  let cleartextBytes = 0
  let discardedBytes = 0
  let refusedCommands = 0

  // True while the driver writes its closing notice: the only output allowed once refused.
  let closing = false
  const emit = (action: ToPeer | ToApp) => {
    if (action.bytes.length > 0 && (phase === "negotiating" || closing)) out.push(action)
  }
  const limitDetail = () => `more than ${opts.maxCleartextBytes} cleartext bytes before the TLS upgrade`

  const ctx: Ctx = {
    opts,
    peer,
    app,
    negotiating: () => phase === "negotiating",
    toPeer: (bytes) => emit({ _tag: "ToPeer", bytes }),
    toApp: (bytes) => emit({ _tag: "ToApp", bytes }),
    say: (to, text) => {
      const bytes = typeof text === "string" ? encode(text) : text
      cleartextBytes += bytes.length
      // Sleeve's own answers count too, so a peer cannot make it write more than the cap.
      if (phase === "negotiating" && !closing && cleartextBytes > opts.maxCleartextBytes) {
        return ctx.fail("cleartext_limit", limitDetail())
      }
      emit({ _tag: to === "peer" ? "ToPeer" : "ToApp", bytes })
    },
    countRefused: () => {
      refusedCommands++
    },
    upgrade: () => {
      if (phase !== "negotiating") return
      const discarded = peer.length
      peer.take(discarded)
      // Those bytes lie past the upgrade point: discarded, not part of the cleartext exchange.
      cleartextBytes -= discarded
      discardedBytes += discarded
      phase = "upgrading"
      out.push({ _tag: "Upgrade", discarded })
    },
    fail: (reason, detail) => {
      if (phase !== "negotiating") return
      phase = "refused"
      closing = true
      driver.notice(reason)
      closing = false
      out.push({ _tag: "Refuse", reason, detail })
    }
  }
  const driver = drivers[opts.protocol][opts.side](ctx)

  const drain = (): ReadonlyArray<Action> => {
    const actions = out
    out = []
    return actions
  }
  const ensureStarted = () => {
    if (started) return
    started = true
    driver.start?.()
  }
  const overLimit = () => {
    if (phase === "negotiating" && cleartextBytes > opts.maxCleartextBytes) {
      ctx.fail("cleartext_limit", limitDetail())
    }
  }
  const feed = (queue: ByteQueue, chunk: Uint8Array, leg: "peer" | "app"): ReadonlyArray<Action> => {
    ensureStarted()
    switch (phase) {
      case "refused":
        return drain()
      case "upgraded":
        throw new Error(`Starttls: on${leg === "peer" ? "Peer" : "App"} after the upgrade; relay the legs directly`)
      case "upgrading":
        // Peer bytes between the go-ahead and the handshake are the injection this module exists
        // to stop: count them and drop them. App bytes are legitimate and wait for the handshake.
        if (leg === "peer") discardedBytes += chunk.length
        else app.push(chunk)
        return drain()
      case "negotiating":
        cleartextBytes += chunk.length
        overLimit()
        if (phase !== "negotiating") return drain()
        queue.push(chunk)
        driver.pump()
        overLimit()
        return drain()
    }
  }

  return {
    protocol: opts.protocol,
    side: opts.side,
    get phase() {
      return phase
    },
    get stats() {
      return { cleartextBytes, discardedBytes, refusedCommands }
    },
    start: () => {
      ensureStarted()
      return drain()
    },
    onPeer: (chunk) => feed(peer, chunk, "peer"),
    onApp: (chunk) => feed(app, chunk, "app"),
    onUpgraded: () => {
      if (phase !== "upgrading") throw new Error(`Starttls: onUpgraded in phase ${phase}`)
      phase = "upgraded"
      const actions: Array<ToPeer | ToApp> = []
      const greeting = opts.side === "client" ? driver.greeting?.() : undefined
      if (greeting !== undefined && greeting.length > 0) actions.push({ _tag: "ToApp", bytes: greeting })
      const filter = opts.side === "server" ? driver.appFilter?.() : undefined
      const held = concat([driver.leftover?.() ?? empty, app.takeAll()])
      const forward = filter === undefined ? held : filter.push(held)
      if (forward.length > 0) actions.push({ _tag: "ToPeer", bytes: forward })
      return { actions, appToPeer: filter }
    },
    onUpgradeFailed: () => {
      if (phase !== "upgrading") throw new Error(`Starttls: onUpgradeFailed in phase ${phase}`)
      phase = "refused"
      // A server-side handshake failure owes the peer nothing in cleartext; the client side
      // tells the app, in its own protocol, that the server could not be reached securely.
      closing = true
      if (opts.side === "client") driver.notice("handshake_failed")
      closing = false
      return drain().filter((a): a is ToPeer | ToApp => a._tag === "ToPeer" || a._tag === "ToApp")
    }
  }
}

// ---------------------------------------------------------------------------------------------
// SMTP (RFC 5321, RFC 3207)
// ---------------------------------------------------------------------------------------------

const smtpFinal = (text: string): boolean => text.length < 4 || text[3] !== "-"
const smtpCode = (text: string): number => (/^\d{3}/.test(text) ? Number(text.slice(0, 3)) : -1)
const smtpKeyword = (text: string): string => firstWord(text.slice(4)).toUpperCase()

/**
 * Rebuild an EHLO reply without its STARTTLS lines, optionally adding one at the end.
 * The first line (the server's name) is kept whatever it says.
 */
const rewriteEhlo = (lines: ReadonlyArray<Uint8Array>, addStarttls: boolean): Uint8Array => {
  const texts = lines.map(lineText)
  const code = texts[0]!.slice(0, 3)
  const items = [texts[0]!.slice(4)]
  for (const t of texts.slice(1)) if (smtpKeyword(t) !== "STARTTLS") items.push(t.slice(4))
  if (addStarttls) items.push("STARTTLS")
  return encode(items.map((t, i) => `${code}${i === items.length - 1 ? " " : "-"}${t}\r\n`).join(""))
}

/**
 * The SMTP server-side filter for the app→peer direction after the upgrade: removes STARTTLS
 * from EHLO replies (RFC 3207 §4.2: it must not be offered again once TLS is active). Every other
 * reply passes byte for byte; multi-line replies are held until their last line (at most
 * `maxReplyBytes`; a longer "reply" cannot be an EHLO reply and passes through unchanged).
 */
export const makeSmtpEhloFilter = (maxReplyBytes = 64 * 1024): StreamFilter => {
  const queue = new ByteQueue()
  let lines: Array<Uint8Array> = []
  let held = 0
  let passthrough = false
  const emit = (parts: Array<Uint8Array>) => {
    if (lines.length === 0) return
    const texts = lines.map(lineText)
    const hasStarttls = smtpCode(texts[0]!) === 250 && texts.slice(1).some((t) => smtpKeyword(t) === "STARTTLS")
    parts.push(hasStarttls ? rewriteEhlo(lines, false) : concat(lines))
    lines = []
    held = 0
  }
  return {
    push: (chunk) => {
      queue.push(chunk)
      const parts: Array<Uint8Array> = []
      for (let line = queue.takeLine(); line !== undefined; line = queue.takeLine()) {
        const final = smtpFinal(lineText(line))
        if (passthrough) {
          parts.push(line)
          if (final) passthrough = false
          continue
        }
        lines.push(line)
        held += line.length
        if (final) emit(parts)
        else if (held > maxReplyBytes) {
          parts.push(concat(lines))
          lines = []
          held = 0
          passthrough = true
        }
      }
      if (queue.length + held > maxReplyBytes) {
        parts.push(concat(lines), queue.takeAll())
        lines = []
        held = 0
        passthrough = true
      }
      return concat(parts)
    },
    flush: () => {
      const rest = concat([...lines, queue.takeAll()])
      lines = []
      held = 0
      return rest
    }
  }
}

type SmtpAwaiting = "greeting" | "ehlo" | "data" | "auth" | "other"
type SmtpPeerMode =
  | { readonly _tag: "command" }
  | { readonly _tag: "data" }
  | { readonly _tag: "sasl" }
  | { readonly _tag: "bdat"; remaining: number }

/** Commands an SMTP client may send before TLS when TLS is required (RFC 3207 §4). */
const smtpAllowedBeforeTls = new Set(["EHLO", "HELO", "NOOP", "RSET", "QUIT"])

const smtpServer = (ctx: Ctx): Driver => {
  let awaiting: SmtpAwaiting | undefined = "greeting"
  let mode: SmtpPeerMode = { _tag: "command" }
  let reply: Array<Uint8Array> = []

  const onReply = (lines: Array<Uint8Array>) => {
    const code = smtpCode(lineText(lines[0]!))
    const was = awaiting
    awaiting = undefined
    if (was === "ehlo" && code === 250) return ctx.toPeer(rewriteEhlo(lines, true))
    ctx.toPeer(concat(lines))
    if (was === "data" && code === 354) mode = { _tag: "data" }
    if (was === "auth" && code === 334) mode = { _tag: "sasl" }
  }

  const command = (line: Uint8Array) => {
    const text = lineText(line)
    const verb = firstWord(text).toUpperCase()
    const args = text.trim().slice(verb.length).trim()
    if (verb === "STARTTLS") {
      if (args !== "") return ctx.say("peer", "501 5.5.4 Syntax error (no parameters allowed)\r\n")
      ctx.say("peer", "220 2.0.0 Ready to start TLS\r\n")
      return ctx.upgrade()
    }
    // requireTls: only the commands RFC 3207 lets through before TLS reach the app.
    if (ctx.opts.requireTls && !smtpAllowedBeforeTls.has(verb)) {
      ctx.countRefused()
      return ctx.say("peer", "530 5.7.0 Must issue a STARTTLS command first\r\n")
    }
    ctx.toApp(line)
    if (verb === "EHLO") awaiting = "ehlo"
    else if (verb === "DATA") awaiting = "data"
    else if (verb === "AUTH") awaiting = "auth"
    else if (verb === "BDAT") {
      const size = /^(\d{1,15})(?:\s+LAST)?$/i.exec(args)
      const n = size === null ? 0 : Number(size[1])
      if (n > 0) mode = { _tag: "bdat", remaining: n }
      else awaiting = "other"
    } else awaiting = "other"
  }

  const pumpApp = (): boolean => {
    let progressed = false
    while (ctx.negotiating()) {
      const line = ctx.app.takeLine()
      if (line === undefined) break
      progressed = true
      reply.push(line)
      if (!smtpFinal(lineText(line))) continue
      const lines = reply
      reply = []
      onReply(lines)
    }
    return progressed
  }

  const pumpPeer = (): boolean => {
    let progressed = false
    while (ctx.negotiating() && awaiting === undefined) {
      if (mode._tag === "bdat") {
        const chunk = ctx.peer.take(mode.remaining)
        if (chunk.length === 0) break
        progressed = true
        ctx.toApp(chunk)
        mode.remaining -= chunk.length
        if (mode.remaining === 0) {
          mode = { _tag: "command" }
          awaiting = "other"
        }
        continue
      }
      const line = ctx.peer.takeLine()
      if (line === undefined) break
      progressed = true
      if (mode._tag === "data") {
        ctx.toApp(line)
        if (lineText(line) === ".") {
          mode = { _tag: "command" }
          awaiting = "other"
        }
      } else if (mode._tag === "sasl") {
        ctx.toApp(line)
        mode = { _tag: "command" }
        awaiting = "auth"
      } else command(line)
    }
    return progressed
  }

  return {
    pump: () => {
      while (ctx.negotiating() && (pumpApp() || pumpPeer())) {
        // keep going: an app reply may unblock a queued peer command and vice versa
      }
    },
    notice: (reason) => ctx.say("peer", `421 4.7.0 ${noticeText[reason]}, closing connection\r\n`),
    leftover: () => {
      const lines = reply
      reply = []
      return concat(lines)
    },
    appFilter: () => makeSmtpEhloFilter()
  }
}

const smtpClient = (ctx: Ctx): Driver => {
  let state: "greeting" | "ehlo" | "starttls" = "greeting"
  let reply: Array<Uint8Array> = []
  let greeting: Uint8Array | undefined

  const onReply = (lines: Array<Uint8Array>) => {
    const texts = lines.map(lineText)
    const code = smtpCode(texts[0]!)
    switch (state) {
      case "greeting":
        if (code !== 220) return ctx.fail("protocol_error", `server greeting is not 220: ${printable(texts[0]!)}`)
        greeting = concat(lines)
        ctx.say("peer", `EHLO ${ctx.opts.clientName}\r\n`)
        state = "ehlo"
        return
      case "ehlo":
        // Fail closed: no advertised STARTTLS means no upgrade, and never a plaintext session.
        if (code !== 250 || !texts.slice(1).some((t) => smtpKeyword(t) === "STARTTLS")) {
          ctx.say("peer", "QUIT\r\n")
          return ctx.fail("not_offered", `server did not advertise STARTTLS: ${printable(texts[0]!)}`)
        }
        ctx.say("peer", "STARTTLS\r\n")
        state = "starttls"
        return
      case "starttls":
        if (code !== 220) {
          ctx.say("peer", "QUIT\r\n")
          return ctx.fail("not_offered", `server refused STARTTLS: ${printable(texts[0]!)}`)
        }
        return ctx.upgrade()
    }
  }

  return {
    pump: () => {
      while (ctx.negotiating()) {
        const line = ctx.peer.takeLine()
        if (line === undefined) return
        const text = lineText(line)
        if (!/^\d{3}(?:[ -]|$)/.test(text)) return ctx.fail("protocol_error", `invalid SMTP reply: ${printable(text)}`)
        reply.push(line)
        if (!smtpFinal(text)) continue
        const lines = reply
        reply = []
        onReply(lines)
      }
    },
    greeting: () => greeting,
    notice: (reason) => ctx.say("app", `421 4.7.0 ${noticeText[reason]}, closing connection\r\n`)
  }
}

// ---------------------------------------------------------------------------------------------
// IMAP (RFC 3501 §6.2.1, RFC 9051)
// ---------------------------------------------------------------------------------------------

/** A literal announced at the end of a line: `{n}` (synchronizing) or `{n+}` (LITERAL+). */
const imapLiteral = (text: string): { readonly size: number; readonly sync: boolean } | undefined => {
  const m = /\{(\d{1,15})(\+?)\}$/.exec(text)
  return m === null ? undefined : { size: Number(m[1]), sync: m[2] === "" }
}

const hasToken = (list: string, token: string): boolean =>
  list.split(/\s+/).some((t) => t.toUpperCase() === token.toUpperCase())

/** Commands an IMAP client may send before TLS when TLS is required. */
const imapAllowedBeforeTls = new Set(["CAPABILITY", "NOOP", "LOGOUT"])

interface ImapCommand {
  readonly tag: string
  readonly forward: boolean
  /** For a refused command carrying literals: the answer, sent once the command is complete. */
  readonly answer: string
  literal: number
  literalSize: number
  sync: boolean
}

/**
 * RFC 3501 §9: `tag = 1*<any ASTRING-CHAR except "+">`: printable ASCII without SP, CTL,
 * `(`, `)`, `{`, `%`, `*`, `"`, `\` (so `*` and `+` are never tags).
 */
const isImapTag = (s: string): boolean => /^[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]+$/.test(s)

const imapServer = (ctx: Ctx): Driver => {
  let greeted = false
  let authenticated = false
  let outstanding: { readonly tag: string; readonly verb: string } | undefined
  let credits = 0
  let cmd: ImapCommand | undefined
  let appLiteral = 0
  let appInResponse = false

  const addCaps = (list: string): string => {
    const tokens = list.split(" ").filter((t) => t !== "")
    if (!hasToken(list, "STARTTLS")) tokens.push("STARTTLS")
    // RFC 3501 §6.2.3: a server that refuses LOGIN before TLS advertises LOGINDISABLED.
    if (ctx.opts.requireTls && !hasToken(list, "LOGINDISABLED")) tokens.push("LOGINDISABLED")
    return tokens.join(" ")
  }

  /** Advertise STARTTLS in `* CAPABILITY` responses and in `[CAPABILITY ...]` response codes. */
  const advertise = (line: Uint8Array, text: string): Uint8Array => {
    const untagged = /^(\* CAPABILITY)(?: (.*))?$/i.exec(text)
    if (untagged !== null) return encode(`${untagged[1]} ${addCaps(untagged[2] ?? "")}\r\n`)
    const code = /^(\S+ (?:OK|PREAUTH) \[CAPABILITY)(?: ([^\]]*))?\]/i.exec(text)
    if (code !== null) return encode(`${code[1]} ${addCaps(code[2] ?? "")}]${text.slice(code[0].length)}\r\n`)
    return line
  }

  const pumpApp = (): boolean => {
    let progressed = false
    while (ctx.negotiating()) {
      if (appLiteral > 0) {
        const chunk = ctx.app.take(appLiteral)
        if (chunk.length === 0) break
        progressed = true
        ctx.toPeer(chunk)
        appLiteral -= chunk.length
        continue
      }
      const line = ctx.app.takeLine()
      if (line === undefined) break
      progressed = true
      const text = lineText(line)
      const literal = imapLiteral(text)
      const continued = appInResponse
      appInResponse = literal !== undefined
      if (literal !== undefined) appLiteral = literal.size
      if (continued) {
        ctx.toPeer(line)
        continue
      }
      const tag = firstWord(text)
      if (!greeted) {
        greeted = true
        if (/^\* PREAUTH\b/i.test(text)) authenticated = true
        ctx.toPeer(advertise(line, text))
      } else if (tag === "+") {
        // A continuation after a complete command lets one raw line through (SASL, IDLE's DONE);
        // one in the middle of a command is the go-ahead for its literal.
        if (outstanding !== undefined && cmd === undefined) credits++
        ctx.toPeer(line)
      } else if (tag === "*") {
        ctx.toPeer(advertise(line, text))
      } else if (outstanding !== undefined && tag === outstanding.tag) {
        const ok = /^\S+ OK\b/i.test(text)
        if (ok && (outstanding.verb === "LOGIN" || outstanding.verb === "AUTHENTICATE")) authenticated = true
        // The app refused the command instead of accepting its literal: the client abandons it.
        if (cmd !== undefined && cmd.tag === tag && cmd.sync && cmd.literal === cmd.literalSize) cmd = undefined
        outstanding = undefined
        credits = 0
        ctx.toPeer(advertise(line, text))
      } else ctx.toPeer(line)
    }
    return progressed
  }

  const refuse = (tag: string, answer: string, literal: ReturnType<typeof imapLiteral>) => {
    ctx.countRefused()
    // RFC 3501 §7.5: a synchronizing literal is not sent once the command is answered; a
    // non-synchronizing one is already on its way and is consumed before answering.
    if (literal === undefined || literal.sync) return ctx.say("peer", answer)
    cmd = { tag, forward: false, answer, literal: literal.size, literalSize: literal.size, sync: false }
  }

  const command = (line: Uint8Array) => {
    const text = lineText(line)
    const literal = imapLiteral(text)
    const m = /^(\S+)(?: +(\S+))?(.*)$/.exec(text)
    // A tag that is not an RFC 3501 tag (binary junk, a TLS record sent to the plaintext port)
    // gets the untagged answer: Sleeve's tagged answers echo the tag, and junk is never
    // reflected back to the peer.
    if (m === null || !isImapTag(m[1]!)) {
      if (!ctx.opts.requireTls) return ctx.toApp(line)
      return refuse("*", "* BAD Invalid command\r\n", literal)
    }
    const tag = m[1]!
    const verb = (m[2] ?? "").toUpperCase()
    if (verb === "STARTTLS") {
      if ((m[3] ?? "").trim() !== "") return refuse(tag, `${tag} BAD STARTTLS takes no arguments\r\n`, literal)
      if (authenticated) return ctx.say("peer", `${tag} BAD STARTTLS is only valid before authentication\r\n`)
      ctx.say("peer", `${tag} OK Begin TLS negotiation now\r\n`)
      return ctx.upgrade()
    }
    if (ctx.opts.requireTls && !imapAllowedBeforeTls.has(verb)) {
      const answer =
        verb === "LOGIN" || verb === "AUTHENTICATE"
          ? `${tag} NO [PRIVACYREQUIRED] ${verb} is not permitted before STARTTLS\r\n`
          : `${tag} BAD Must issue a STARTTLS command first\r\n`
      return refuse(tag, answer, literal)
    }
    ctx.toApp(line)
    outstanding = { tag, verb }
    if (literal !== undefined) {
      cmd = { tag, forward: true, answer: "", literal: literal.size, literalSize: literal.size, sync: literal.sync }
    }
  }

  const pumpPeer = (): boolean => {
    let progressed = false
    while (ctx.negotiating()) {
      if (cmd !== undefined && cmd.literal > 0) {
        const chunk = ctx.peer.take(cmd.literal)
        if (chunk.length === 0) break
        progressed = true
        cmd.literal -= chunk.length
        if (cmd.forward) ctx.toApp(chunk)
        continue
      }
      if (cmd !== undefined) {
        // The rest of a command after a literal.
        const line = ctx.peer.takeLine()
        if (line === undefined) break
        progressed = true
        const current: ImapCommand = cmd
        if (current.forward) ctx.toApp(line)
        const literal = imapLiteral(lineText(line))
        if (literal === undefined || (!current.forward && literal.sync)) {
          cmd = undefined
          if (!current.forward) ctx.say("peer", current.answer)
        } else {
          current.literal = literal.size
          current.literalSize = literal.size
          current.sync = literal.sync
        }
        continue
      }
      if (!greeted) break
      if (outstanding !== undefined) {
        if (credits === 0) break
        const line = ctx.peer.takeLine()
        if (line === undefined) break
        progressed = true
        credits--
        ctx.toApp(line)
        continue
      }
      const line = ctx.peer.takeLine()
      if (line === undefined) break
      progressed = true
      command(line)
    }
    return progressed
  }

  return {
    pump: () => {
      while (ctx.negotiating() && (pumpApp() || pumpPeer())) {
        // lock-step relay
      }
    },
    notice: (reason) => ctx.say("peer", `* BYE ${noticeText[reason]}\r\n`)
  }
}

const imapClientTag = "A0"

const imapClient = (ctx: Ctx): Driver => {
  let state: "greeting" | "starttls" = "greeting"
  let skip = 0
  let greeting: Uint8Array | undefined

  const logout = () => ctx.say("peer", `${imapClientTag} LOGOUT\r\n`)

  return {
    pump: () => {
      while (ctx.negotiating()) {
        if (skip > 0) {
          const chunk = ctx.peer.take(skip)
          if (chunk.length === 0) return
          skip -= chunk.length
          continue
        }
        const line = ctx.peer.takeLine()
        if (line === undefined) return
        const text = lineText(line)
        if (state === "greeting") {
          if (/^\* PREAUTH\b/i.test(text)) {
            return ctx.fail("not_offered", "server greeted with PREAUTH, where STARTTLS is not possible")
          }
          if (!/^\* OK\b/i.test(text)) return ctx.fail("protocol_error", `unexpected IMAP greeting: ${printable(text)}`)
          const caps = /\[CAPABILITY ([^\]]*)\]/i.exec(text)
          if (caps !== null && !hasToken(caps[1]!, "STARTTLS")) {
            logout()
            return ctx.fail("not_offered", "server capabilities do not include STARTTLS")
          }
          // The pre-TLS capabilities are stale after the upgrade (RFC 3501 §6.2.1): the app gets
          // the greeting without them and asks again over TLS.
          const stripped = text.replace(/ ?\[CAPABILITY [^\]]*\] ?/i, " ").trimEnd()
          greeting = encode(`${/^\* OK$/i.test(stripped) ? `${stripped} ready` : stripped}\r\n`)
          ctx.say("peer", `${imapClientTag} STARTTLS\r\n`)
          state = "starttls"
          continue
        }
        if (text.startsWith("* ")) {
          skip = imapLiteral(text)?.size ?? 0
          continue
        }
        const status = /^(\S+) (OK|NO|BAD)\b/i.exec(text)
        if (status === null || status[1] !== imapClientTag) {
          return ctx.fail("protocol_error", `unexpected IMAP response: ${printable(text)}`)
        }
        if (status[2]!.toUpperCase() !== "OK") {
          logout()
          return ctx.fail("not_offered", `server refused STARTTLS: ${printable(text)}`)
        }
        return ctx.upgrade()
      }
    },
    greeting: () => greeting,
    notice: (reason) => ctx.say("app", `* BYE ${noticeText[reason]}\r\n`)
  }
}

// ---------------------------------------------------------------------------------------------
// POP3 (RFC 1939, RFC 2449, RFC 2595 §4)
// ---------------------------------------------------------------------------------------------

/** Commands a POP3 client may send before TLS when TLS is required. */
const pop3AllowedBeforeTls = new Set(["CAPA", "QUIT"])

const pop3MultiLine = (verb: string, args: string): boolean =>
  verb === "CAPA" ||
  verb === "RETR" ||
  verb === "TOP" ||
  ((verb === "LIST" || verb === "UIDL" || verb === "AUTH") && args === "")

const pop3Server = (ctx: Ctx): Driver => {
  let greeted = false
  let authenticated = false
  let awaiting: { readonly verb: string; readonly multi: boolean } | undefined
  let inBody = false
  let sawStls = false
  let credit = false

  const pumpApp = (): boolean => {
    let progressed = false
    while (ctx.negotiating()) {
      const line = ctx.app.takeLine()
      if (line === undefined) break
      progressed = true
      const text = lineText(line)
      if (!greeted) {
        greeted = true
        ctx.toPeer(line)
      } else if (awaiting === undefined) {
        ctx.toPeer(line)
      } else if (inBody) {
        if (text === ".") {
          if (awaiting.verb === "CAPA" && !sawStls) ctx.say("peer", "STLS\r\n")
          inBody = false
          awaiting = undefined
        } else if (awaiting.verb === "CAPA" && firstWord(text).toUpperCase() === "STLS") sawStls = true
        ctx.toPeer(line)
      } else if (/^\+OK\b/i.test(text)) {
        ctx.toPeer(line)
        if (awaiting.multi) {
          inBody = true
          sawStls = false
        } else {
          if (awaiting.verb === "PASS" || awaiting.verb === "APOP" || awaiting.verb === "AUTH") authenticated = true
          awaiting = undefined
        }
      } else if (awaiting.verb === "AUTH" && (text === "+" || text.startsWith("+ "))) {
        ctx.toPeer(line)
        credit = true
      } else {
        ctx.toPeer(line)
        awaiting = undefined
      }
    }
    return progressed
  }

  const command = (line: Uint8Array) => {
    const text = lineText(line)
    const verb = firstWord(text).toUpperCase()
    const args = text.trim().slice(verb.length).trim()
    if (verb === "STLS") {
      if (args !== "") return ctx.say("peer", "-ERR STLS takes no arguments\r\n")
      if (authenticated) return ctx.say("peer", "-ERR STLS is only valid in the AUTHORIZATION state\r\n")
      ctx.say("peer", "+OK Begin TLS negotiation\r\n")
      return ctx.upgrade()
    }
    if (ctx.opts.requireTls && !pop3AllowedBeforeTls.has(verb)) {
      ctx.countRefused()
      return ctx.say("peer", "-ERR Must issue a STLS command first\r\n")
    }
    ctx.toApp(line)
    awaiting = { verb, multi: pop3MultiLine(verb, args) }
  }

  const pumpPeer = (): boolean => {
    let progressed = false
    while (ctx.negotiating() && greeted) {
      if (awaiting !== undefined && !credit) break
      const line = ctx.peer.takeLine()
      if (line === undefined) break
      progressed = true
      if (awaiting !== undefined) {
        credit = false
        ctx.toApp(line)
      } else command(line)
    }
    return progressed
  }

  return {
    pump: () => {
      while (ctx.negotiating() && (pumpApp() || pumpPeer())) {
        // lock-step relay
      }
    },
    notice: (reason) => ctx.say("peer", `-ERR ${noticeText[reason]}\r\n`)
  }
}

const pop3Client = (ctx: Ctx): Driver => {
  let state: "greeting" | "stls" = "greeting"
  let greeting: Uint8Array | undefined
  return {
    pump: () => {
      while (ctx.negotiating()) {
        const line = ctx.peer.takeLine()
        if (line === undefined) return
        const text = lineText(line)
        const ok = /^\+OK\b/i.test(text)
        if (state === "greeting") {
          if (!ok) return ctx.fail("protocol_error", `unexpected POP3 greeting: ${printable(text)}`)
          greeting = line
          ctx.say("peer", "STLS\r\n")
          state = "stls"
          continue
        }
        if (ok) return ctx.upgrade()
        if (/^-ERR\b/i.test(text)) {
          ctx.say("peer", "QUIT\r\n")
          return ctx.fail("not_offered", `server refused STLS: ${printable(text)}`)
        }
        return ctx.fail("protocol_error", `unexpected POP3 response: ${printable(text)}`)
      }
    },
    greeting: () => greeting,
    notice: (reason) => ctx.say("app", `-ERR ${noticeText[reason]}\r\n`)
  }
}

// ---------------------------------------------------------------------------------------------
// LDAP (RFC 4511: BER, definite lengths only)
// ---------------------------------------------------------------------------------------------

interface Tlv {
  readonly tag: number
  readonly start: number
  readonly end: number
}

/** One BER TLV inside `b[offset, limit)`: single-byte tags, short or long (1 to 4 bytes) form. */
const readTlv = (b: Uint8Array, offset: number, limit: number): Tlv | undefined => {
  if (offset + 2 > limit) return undefined
  const tag = b[offset]!
  if ((tag & 0x1f) === 0x1f) return undefined
  const first = b[offset + 1]!
  let length = first
  let start = offset + 2
  if (first >= 0x80) {
    const n = first & 0x7f
    if (n === 0 || n > 4 || start + n > limit) return undefined
    length = 0
    for (let i = 0; i < n; i++) length = length * 256 + b[start + i]!
    start += n
  }
  if (start + length > limit) return undefined
  return { tag, start, end: start + length }
}

const readUint = (b: Uint8Array, t: Tlv): number | undefined => {
  const n = t.end - t.start
  if (n < 1 || n > 4 || (b[t.start]! & 0x80) !== 0) return undefined
  let v = 0
  for (let i = t.start; i < t.end; i++) v = v * 256 + b[i]!
  return v
}

interface LdapMessage {
  readonly id: number
  /** The protocolOp tag byte, e.g. 0x77 for ExtendedRequest. */
  readonly op: number
  readonly body: Tlv
  readonly bytes: Uint8Array
}

const ldapParse = (bytes: Uint8Array): LdapMessage | undefined => {
  const seq = readTlv(bytes, 0, bytes.length)
  if (seq === undefined || seq.tag !== 0x30 || seq.end !== bytes.length) return undefined
  const idTlv = readTlv(bytes, seq.start, seq.end)
  if (idTlv === undefined || idTlv.tag !== 0x02) return undefined
  const id = readUint(bytes, idTlv)
  const body = readTlv(bytes, idTlv.end, seq.end)
  if (id === undefined || body === undefined || (body.tag & 0xc0) !== 0x40) return undefined
  return { id, op: body.tag, body, bytes }
}

type Frame =
  | { readonly _tag: "Need" }
  | { readonly _tag: "Frame"; readonly bytes: Uint8Array }
  | { readonly _tag: "Invalid"; readonly reason: "protocol_error" | "cleartext_limit"; readonly detail: string }

/** Cut one LDAPMessage off the queue, using only its outer length. */
const ldapFrame = (q: ByteQueue, max: number): Frame => {
  if (q.length < 2) return { _tag: "Need" }
  const invalid = (detail: string): Frame => ({ _tag: "Invalid", reason: "protocol_error", detail })
  if (q.at(0) !== 0x30) return invalid("not an LDAPMessage (expected a SEQUENCE)")
  const first = q.at(1)
  let length = first
  let header = 2
  if (first === 0x80) return invalid("indefinite BER length is not allowed in LDAP")
  if (first > 0x80) {
    const n = first & 0x7f
    if (n > 4) return invalid("BER length longer than 4 bytes")
    if (q.length < 2 + n) return { _tag: "Need" }
    length = 0
    for (let i = 0; i < n; i++) length = length * 256 + q.at(2 + i)
    header += n
  }
  if (header + length > max) {
    return { _tag: "Invalid", reason: "cleartext_limit", detail: `LDAP message of ${header + length} bytes` }
  }
  if (q.length < header + length) return { _tag: "Need" }
  return { _tag: "Frame", bytes: q.take(header + length) }
}

const berLength = (n: number): Array<number> => {
  if (n < 0x80) return [n]
  const bytes: Array<number> = []
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff)
  return [0x80 | bytes.length, ...bytes]
}

const ber = (tag: number, ...parts: ReadonlyArray<Uint8Array>): Uint8Array => {
  const content = concat(parts)
  return concat([Uint8Array.from([tag, ...berLength(content.length)]), content])
}

const berUint = (tag: number, n: number): Uint8Array => {
  const bytes: Array<number> = []
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff)
  if (bytes.length === 0 || (bytes[0]! & 0x80) !== 0) bytes.unshift(0)
  return ber(tag, Uint8Array.from(bytes))
}

/** An LDAPMessage carrying an LDAPResult-shaped response; `name` is an ExtendedResponse's responseName. */
const ldapResult = (id: number, opTag: number, resultCode: number, message: string, name?: string): Uint8Array =>
  ber(
    0x30,
    berUint(0x02, id),
    ber(
      opTag,
      berUint(0x0a, resultCode),
      ber(0x04),
      ber(0x04, encode(message)),
      ...(name === undefined ? [] : [ber(0x8a, encode(name))])
    )
  )

const ldapCode = {
  success: 0,
  operationsError: 1,
  protocolError: 2,
  confidentialityRequired: 13,
  unavailable: 52
} as const

/** The StartTLS ExtendedRequest Sleeve sends on the client side. */
const ldapStartTlsRequest = (id: number): Uint8Array =>
  ber(0x30, berUint(0x02, id), ber(0x77, ber(0x80, encode(ldapStartTlsOid))))

/** Request op number → response op number (RFC 4511 §4.2 to §4.12). */
const ldapResponseOp: ReadonlyMap<number, number> = new Map([
  [0, 1], // bind
  [3, 5], // search → SearchResultDone
  [6, 7], // modify
  [8, 9], // add
  [10, 11], // delete
  [12, 13], // modify DN
  [14, 15], // compare
  [23, 24] // extended
])

/** Response ops after which more responses to the same request follow. */
const ldapIntermediateOps = new Set([4, 19, 25])

/** requestName (and whether a requestValue is present) of an ExtendedRequest. */
const ldapExtended = (m: LdapMessage): { readonly name: string; readonly hasValue: boolean } | undefined => {
  if (m.op !== 0x77) return undefined
  const name = readTlv(m.bytes, m.body.start, m.body.end)
  if (name === undefined || name.tag !== 0x80) return undefined
  return { name: decode(m.bytes, name.start, name.end), hasValue: name.end < m.body.end }
}

const ldapNotice = (resultCode: number, message: string): Uint8Array =>
  ldapResult(0, 0x78, resultCode, message, ldapNoticeOfDisconnectionOid)

const ldapServer = (ctx: Ctx): Driver => {
  const outstanding = new Set<number>()

  const pumpPeer = () => {
    while (ctx.negotiating()) {
      const frame = ldapFrame(ctx.peer, ctx.opts.maxCleartextBytes)
      if (frame._tag === "Need") return
      if (frame._tag === "Invalid") return ctx.fail(frame.reason, frame.detail)
      const m = ldapParse(frame.bytes)
      if (m === undefined) return ctx.fail("protocol_error", "malformed LDAPMessage")
      const ext = ldapExtended(m)
      if (ext?.name === ldapStartTlsOid) {
        const answer = (code: number, text: string) => ldapResult(m.id, 0x78, code, text, ldapStartTlsOid)
        if (ext.hasValue) {
          ctx.say("peer", answer(ldapCode.protocolError, "StartTLS takes no requestValue"))
          continue
        }
        // RFC 4511 §4.14.1: StartTLS with operations outstanding is an operationsError.
        if (outstanding.size > 0) {
          ctx.say("peer", answer(ldapCode.operationsError, "operations are outstanding"))
          continue
        }
        ctx.say("peer", answer(ldapCode.success, ""))
        return ctx.upgrade()
      }
      const opNumber = m.op & 0x1f
      const isUnbind = m.op === 0x42
      const isAbandon = m.op === 0x50
      if (ctx.opts.requireTls) {
        ctx.countRefused()
        if (isUnbind || isAbandon) continue // no response exists; the client closes after unbind
        const responseOp = ldapResponseOp.get(opNumber)
        if (responseOp === undefined) return ctx.fail("protocol_error", `unexpected LDAP operation ${m.op}`)
        ctx.say(
          "peer",
          ldapResult(
            m.id,
            0x60 | responseOp,
            ldapCode.confidentialityRequired,
            "StartTLS is required before this operation"
          )
        )
        continue
      }
      ctx.toApp(m.bytes)
      if (isAbandon) {
        const target = readUint(m.bytes, m.body)
        if (target !== undefined) outstanding.delete(target)
      } else if (!isUnbind) outstanding.add(m.id)
    }
  }

  const pumpApp = () => {
    while (ctx.negotiating()) {
      const frame = ldapFrame(ctx.app, Number.MAX_SAFE_INTEGER)
      if (frame._tag === "Need") return
      const m = frame._tag === "Frame" ? ldapParse(frame.bytes) : undefined
      if (m === undefined) return ctx.fail("protocol_error", "the app sent a malformed LDAPMessage")
      ctx.toPeer(m.bytes)
      if (!ldapIntermediateOps.has(m.op & 0x1f)) outstanding.delete(m.id)
    }
  }

  return {
    pump: () => {
      pumpApp()
      pumpPeer()
    },
    notice: (reason) =>
      ctx.say(
        "peer",
        ldapNotice(
          reason === "starttls_required" ? ldapCode.confidentialityRequired : ldapCode.protocolError,
          noticeText[reason]
        )
      )
  }
}

/** The messageID of Sleeve's StartTLS request; it completes before the app's first request. */
const ldapClientMessageId = 1

const ldapClient = (ctx: Ctx): Driver => ({
  start: () => ctx.say("peer", ldapStartTlsRequest(ldapClientMessageId)),
  pump: () => {
    if (!ctx.negotiating()) return
    const frame = ldapFrame(ctx.peer, ctx.opts.maxCleartextBytes)
    if (frame._tag === "Need") return
    if (frame._tag === "Invalid") return ctx.fail(frame.reason, frame.detail)
    const m = ldapParse(frame.bytes)
    if (m === undefined || m.op !== 0x78) return ctx.fail("protocol_error", "expected an LDAP ExtendedResponse")
    const code = readTlv(m.bytes, m.body.start, m.body.end)
    const dn = code && readTlv(m.bytes, code.end, m.body.end)
    const diag = dn && readTlv(m.bytes, dn.end, m.body.end)
    const resultCode = code?.tag === 0x0a ? readUint(m.bytes, code) : undefined
    if (resultCode === undefined) return ctx.fail("protocol_error", "malformed LDAP ExtendedResponse")
    const text = diag?.tag === 0x04 ? printable(decode(m.bytes, diag.start, diag.end)) : ""
    if (m.id === 0) return ctx.fail("not_offered", `server disconnected (resultCode ${resultCode}) ${text}`.trim())
    if (m.id !== ldapClientMessageId) return ctx.fail("protocol_error", `unexpected LDAP messageID ${m.id}`)
    if (resultCode !== ldapCode.success) {
      return ctx.fail("not_offered", `server refused StartTLS (resultCode ${resultCode}) ${text}`.trim())
    }
    ctx.upgrade()
  },
  notice: () => ctx.say("app", ldapNotice(ldapCode.unavailable, "Sleeve: TLS to the server is not available"))
})

// ---------------------------------------------------------------------------------------------
// PostgreSQL (protocol 3, "SSL Session Encryption")
// ---------------------------------------------------------------------------------------------

/** The longest startup packet PostgreSQL accepts (MAX_STARTUP_PACKET_LENGTH). */
const pgMaxStartupPacket = 10000

const u32 = (n: number): Array<number> => [(n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff]

/** The 8-byte SSLRequest. */
const pgSslRequest = Uint8Array.from([...u32(8), ...u32(pgSslRequestCode)])

/** An ErrorResponse with severity FATAL. */
const pgFatal = (sqlstate: string, message: string): Uint8Array => {
  const fields = encode(`SFATAL\0VFATAL\0C${sqlstate}\0M${message}\0\0`)
  return concat([Uint8Array.from([0x45, ...u32(fields.length + 4)]), fields])
}

const pgNotice = (reason: NoticeReason): Uint8Array =>
  reason === "starttls_required"
    ? pgFatal("28000", "SSL required: this server only accepts SSL connections (use sslmode=require or stronger)")
    : pgFatal("08P01", noticeText[reason])

const postgresServer = (ctx: Ctx): Driver => {
  let passthrough = false
  return {
    pump: () => {
      while (ctx.negotiating() && !passthrough) {
        if (ctx.peer.length < 4) return
        const length = ctx.peer.u32(0)
        if (length < 8 || length > pgMaxStartupPacket) {
          const detail =
            ctx.peer.at(0) === 0x16
              ? "direct TLS (sslnegotiation=direct) is not accepted in starttls mode"
              : `invalid startup packet length ${length}`
          return ctx.fail("protocol_error", detail)
        }
        if (ctx.peer.length < length) return
        const code = ctx.peer.u32(4)
        if ((code === pgSslRequestCode || code === pgGssEncRequestCode) && length !== 8) {
          return ctx.fail("protocol_error", `invalid length ${length} for an SSLRequest or GSSENCRequest`)
        }
        if (code === pgSslRequestCode) {
          ctx.peer.take(8)
          ctx.say("peer", "S")
          return ctx.upgrade()
        }
        if (code === pgGssEncRequestCode) {
          // No GSSAPI encryption here; libpq then falls back to an SSLRequest.
          ctx.peer.take(8)
          ctx.say("peer", "N")
          continue
        }
        if (ctx.opts.requireTls) {
          ctx.countRefused()
          return ctx.fail(
            "starttls_required",
            code === pgCancelRequestCode ? "CancelRequest without SSL" : "StartupMessage without SSL"
          )
        }
        passthrough = true
      }
      if (passthrough) {
        ctx.toApp(ctx.peer.takeAll())
        ctx.toPeer(ctx.app.takeAll())
      }
    },
    // A CancelRequest gets no answer in PostgreSQL; the notice is harmless to such a client.
    notice: (reason) => ctx.say("peer", pgNotice(reason))
  }
}

const postgresClient = (ctx: Ctx): Driver => {
  let appStartup = true
  return {
    start: () => ctx.say("peer", pgSslRequest),
    pump: () => {
      // The legacy app's own SSLRequest / GSSENCRequest is answered "N" locally: the encryption
      // is Sleeve's job, and the app goes on with its StartupMessage, held until the upgrade.
      while (ctx.negotiating() && appStartup && ctx.app.length >= 8) {
        const length = ctx.app.u32(0)
        const code = ctx.app.u32(4)
        if (length < 8 || length > pgMaxStartupPacket) {
          return ctx.fail("protocol_error", `the app sent an invalid startup packet length ${length}`)
        }
        if (length === 8 && (code === pgSslRequestCode || code === pgGssEncRequestCode)) {
          ctx.app.take(8)
          ctx.say("app", "N")
        } else appStartup = false
      }
      if (!ctx.negotiating() || ctx.peer.length === 0) return
      const answer = ctx.peer.at(0)
      if (answer === 0x53) {
        ctx.peer.take(1)
        return ctx.upgrade()
      }
      if (answer === 0x4e) return ctx.fail("not_offered", "server does not support SSL (answered N to SSLRequest)")
      if (answer === 0x45) return ctx.fail("not_offered", "server answered SSLRequest with an ErrorResponse")
      return ctx.fail("protocol_error", `unexpected answer 0x${answer.toString(16)} to SSLRequest`)
    },
    notice: (reason) => ctx.say("app", pgFatal("08001", `Sleeve: ${noticeText[reason]}`))
  }
}

// ---------------------------------------------------------------------------------------------
// Line trigger (custom protocols)
// ---------------------------------------------------------------------------------------------

const lineServer = (ctx: Ctx): Driver => ({
  pump: () => {
    ctx.toPeer(ctx.app.takeAll())
    while (ctx.negotiating()) {
      const line = ctx.peer.takeLine()
      if (line === undefined) return
      if (lineText(line) === ctx.opts.line.command) {
        const crlf = line.length >= 2 && line[line.length - 2] === 0x0d
        ctx.say("peer", `${ctx.opts.line.reply}${crlf ? "\r\n" : "\n"}`)
        return ctx.upgrade()
      }
      if (ctx.opts.requireTls) {
        ctx.countRefused()
        return ctx.fail("starttls_required", `line before ${printable(ctx.opts.line.command)}`)
      }
      ctx.toApp(line)
    }
  },
  notice: () => {}
})

const lineClient = (ctx: Ctx): Driver => ({
  start: () => ctx.say("peer", `${ctx.opts.line.command}${ctx.opts.line.lineEnding}`),
  pump: () => {
    if (!ctx.negotiating()) return
    const line = ctx.peer.takeLine()
    if (line === undefined) return
    const text = lineText(line)
    if (text === ctx.opts.line.reply) return ctx.upgrade()
    ctx.fail("not_offered", `expected ${JSON.stringify(ctx.opts.line.reply)}, got ${JSON.stringify(printable(text))}`)
  },
  notice: () => {}
})

const drivers: Record<Protocol, Record<Side, (ctx: Ctx) => Driver>> = {
  smtp: { server: smtpServer, client: smtpClient },
  imap: { server: imapServer, client: imapClient },
  pop3: { server: pop3Server, client: pop3Client },
  ldap: { server: ldapServer, client: ldapClient },
  postgres: { server: postgresServer, client: postgresClient },
  line: { server: lineServer, client: lineClient }
}
