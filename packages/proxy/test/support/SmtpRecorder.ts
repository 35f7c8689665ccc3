/**
 * A small but honest SMTP server (RFC 5321) for the STARTTLS tests: it runs real mail
 * transactions (`EHLO`/`HELO`, `MAIL`, `RCPT`, `DATA` with dot-unstuffing, `RSET`, `NOOP`, `QUIT`)
 * and records every command line it received and every message it accepted, each marked with
 * whether it arrived over TLS.
 *
 * Two personalities:
 * - plaintext legacy server (no `tls` option): it does not know STARTTLS (`502`), so a test can
 *   prove that Sleeve answered STARTTLS on its behalf and that the command never reached it;
 * - STARTTLS-requiring server (`tls` given): it advertises STARTTLS before TLS, refuses a mail
 *   transaction before TLS with `530` (RFC 3207 §4), upgrades with a real handshake, discards
 *   plaintext pipelined after STARTTLS (recorded as `injected`) and forgets the pre-TLS session
 *   state, as RFC 3207 §4.2 requires.
 *
 * Test-only; it listens on 127.0.0.1, port 0.
 */
import { close, listen, makeConnections } from "@sleeve/testing/Net"
import * as Net from "node:net"
import type { Duplex } from "node:stream"
import * as Tls from "node:tls"

/** One command line as received (CRLF stripped; message content is not a command). */
export interface Command {
  readonly line: string
  /** True when it arrived over TLS. */
  readonly secure: boolean
  /** Which connection (1-based, in accept order). */
  readonly connection: number
}

/** One accepted message. */
export interface Mail {
  readonly connection: number
  /** The EHLO/HELO argument in force when the message was sent. */
  readonly helo: string | undefined
  /** The reverse-path, without angle brackets. */
  readonly from: string
  /** The forward-paths, without angle brackets. */
  readonly to: ReadonlyArray<string>
  /** The content, dot-unstuffed, lines joined with CRLF (without the final `.` line). */
  readonly data: string
  readonly secure: boolean
  /** The TLS protocol version when `secure` (e.g. `TLSv1.3`). */
  readonly tlsVersion: string | undefined
}

/** Options of {@link start}. */
export interface Options {
  /** The name in the greeting and the EHLO reply; default `recorder.test`. */
  readonly name?: string
  /** Offer STARTTLS with this certificate and key, and require it before a mail transaction. */
  readonly tls?: { readonly certPem: string; readonly keyPem: string }
}

/** A running recorder. */
export interface SmtpRecorder {
  readonly port: number
  /** Every command line received, in order. */
  readonly commands: ReadonlyArray<Command>
  /** Every message accepted, in order. */
  readonly mails: ReadonlyArray<Mail>
  /** Plaintext bytes received after STARTTLS and before the handshake (discarded, never served). */
  readonly injected: ReadonlyArray<string>
  /** Connections accepted so far. */
  readonly connections: () => number
  /** Resolves once `n` connections have closed (default 1). */
  readonly closed: (n?: number) => Promise<void>
  /** Stops listening and destroys every open connection. */
  readonly close: () => Promise<void>
}

const angle = (arg: string): string | undefined => /^<([^>]*)>/.exec(arg.trim())?.[1]

/** Start a recorder on 127.0.0.1, port 0. */
export const start = async (options: Options = {}): Promise<SmtpRecorder> => {
  const name = options.name ?? "recorder.test"
  const secureContext =
    options.tls === undefined
      ? undefined
      : Tls.createSecureContext({ cert: options.tls.certPem, key: options.tls.keyPem })
  const commands: Array<Command> = []
  const mails: Array<Mail> = []
  const injected: Array<string> = []
  const connections = makeConnections()
  let accepted = 0

  const serve = (raw: Net.Socket, connection: number) => {
    let stream: Duplex = raw
    let secure = false
    let tlsVersion: string | undefined
    let helo: string | undefined
    let from: string | undefined
    let to: Array<string> = []
    let data: Array<string> | undefined
    let buffer = ""
    let upgrading = false

    const reply = (text: string) => void stream.write(`${text}\r\n`)
    const resetTransaction = () => {
      from = undefined
      to = []
      data = undefined
    }

    const startTls = () => {
      upgrading = true
      raw.off("data", onData)
      raw.pause()
      // Whatever followed STARTTLS in cleartext was sent before our go-ahead: drop it
      // (RFC 3207 §4.2 and CVE-2011-0411), and keep it for the test to look at.
      const rest = raw.read() as Buffer | null
      const early = buffer + (rest === null ? "" : rest.toString("latin1"))
      buffer = ""
      if (early.length > 0) injected.push(early)
      const tls = new Tls.TLSSocket(raw, { isServer: true, secureContext: secureContext! })
      tls.on("error", () => tls.destroy())
      tls.once("secure", () => {
        stream = tls
        secure = true
        upgrading = false
        tlsVersion = tls.getProtocol() ?? undefined
        helo = undefined
        resetTransaction()
        tls.on("data", onData)
      })
    }

    const command = (line: string) => {
      commands.push({ line, secure, connection })
      const verb = (/^\S*/.exec(line)?.[0] ?? "").toUpperCase()
      const arg = line.slice(verb.length).trim()
      switch (verb) {
        case "EHLO":
          helo = arg
          resetTransaction()
          return reply(
            [name, "8BITMIME", "SIZE 10485760", ...(secureContext !== undefined && !secure ? ["STARTTLS"] : [])]
              .map((item, i, all) => `250${i === all.length - 1 ? " " : "-"}${item}`)
              .join("\r\n")
          )
        case "HELO":
          helo = arg
          resetTransaction()
          return reply(`250 ${name}`)
        case "STARTTLS":
          if (secureContext === undefined) return reply("502 5.5.1 STARTTLS not supported")
          if (secure) return reply("503 5.5.1 TLS already active")
          reply("220 2.0.0 Ready to start TLS")
          return startTls()
        case "MAIL": {
          if (secureContext !== undefined && !secure) return reply("530 5.7.0 Must issue a STARTTLS command first")
          if (helo === undefined) return reply("503 5.5.1 Send EHLO first")
          const path = /^FROM:/i.test(arg) ? angle(arg.slice(5)) : undefined
          if (path === undefined) return reply("501 5.5.4 Syntax: MAIL FROM:<address>")
          resetTransaction()
          from = path
          return reply("250 2.1.0 Sender OK")
        }
        case "RCPT": {
          if (from === undefined) return reply("503 5.5.1 Need MAIL first")
          const path = /^TO:/i.test(arg) ? angle(arg.slice(3)) : undefined
          if (path === undefined || path === "") return reply("501 5.5.4 Syntax: RCPT TO:<address>")
          to.push(path)
          return reply("250 2.1.5 Recipient OK")
        }
        case "DATA":
          if (from === undefined || to.length === 0) return reply("503 5.5.1 Need RCPT first")
          data = []
          return reply("354 End data with <CR><LF>.<CR><LF>")
        case "RSET":
          resetTransaction()
          return reply("250 2.0.0 Reset")
        case "NOOP":
          return reply("250 2.0.0 OK")
        case "QUIT":
          reply("221 2.0.0 Bye")
          return void stream.end()
        default:
          return reply("502 5.5.2 Command not recognized")
      }
    }

    const content = (line: string) => {
      if (line !== ".") return void data!.push(line.startsWith(".") ? line.slice(1) : line)
      mails.push({ connection, helo, from: from!, to, data: data!.join("\r\n"), secure, tlsVersion })
      resetTransaction()
      reply(`250 2.0.0 Queued as ${mails.length}`)
    }

    const onData = (chunk: Buffer) => {
      buffer += chunk.toString("latin1")
      for (let i = buffer.indexOf("\n"); i >= 0; i = buffer.indexOf("\n")) {
        const line = buffer.slice(0, i).replace(/\r$/, "")
        buffer = buffer.slice(i + 1)
        if (data !== undefined) content(line)
        else command(line)
        if (upgrading) return // STARTTLS: the rest of the buffer was dropped
      }
    }

    raw.on("data", onData)
    reply(`220 ${name} ESMTP SmtpRecorder`)
  }

  const server = Net.createServer((raw) => {
    connections.track(raw)
    serve(raw, ++accepted)
  })
  const port = await listen(server)
  return {
    port,
    commands,
    mails,
    injected,
    connections: () => accepted,
    closed: connections.closed,
    close: () => close(server, connections.sockets)
  }
}
