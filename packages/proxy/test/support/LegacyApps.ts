/**
 * Tiny plaintext servers standing in for legacy apps in the STARTTLS integration tests: SMTP,
 * IMAP, POP3, LDAP (bind/search/unbind responder), PostgreSQL (startup + terminate) and a line
 * echo server. Each records what it received, so tests can assert what the app never saw.
 * The session functions run on any Duplex, so the STARTTLS-capable remotes reuse them over TLS.
 */
import * as TestNet from "@sleeve/testing/Net"
import * as net from "node:net"
import type { Duplex } from "node:stream"

/** Where a session records what it received. */
export type Recorder = Pick<Array<string>, "push">

/** A listening test server. */
export interface Served {
  readonly port: number
  /** What the sessions recorded, in order (one entry per line or message). */
  readonly received: Array<string>
  /** Resolves when the n-th connection has closed. */
  readonly closed: (n?: number) => Promise<void>
  readonly close: () => Promise<void>
}

/** Listen on 127.0.0.1, port 0; run `session` for each connection. */
export const listen = async (session: (socket: net.Socket, received: Array<string>) => void): Promise<Served> => {
  const received: Array<string> = []
  const connections = TestNet.makeConnections()
  const server = net.createServer((socket) => {
    connections.track(socket)
    session(socket, received)
  })
  const port = await TestNet.listen(server)
  return { port, received, closed: connections.closed, close: () => TestNet.close(server, connections.sockets) }
}

/** Call `onLine` for each received line (terminator stripped); returns a detach function. */
export const onLines = (stream: Duplex, onLine: (line: string) => void): (() => void) => {
  let buffer = ""
  const listener = (chunk: Buffer) => {
    buffer += chunk.toString("latin1")
    for (let i = buffer.indexOf("\n"); i >= 0; i = buffer.indexOf("\n")) {
      const line = buffer.slice(0, i).replace(/\r$/, "")
      buffer = buffer.slice(i + 1)
      onLine(line)
    }
  }
  stream.on("data", listener)
  return () => stream.off("data", listener)
}

/** A legacy SMTP server. `advertiseStarttls` makes it (wrongly) list STARTTLS in its EHLO reply. */
export const smtpSession = (
  s: Duplex,
  received: Recorder,
  options: { readonly greet?: boolean; readonly name?: string; readonly advertiseStarttls?: boolean } = {}
): void => {
  const name = options.name ?? "app.test"
  if (options.greet !== false) s.write(`220 ${name} ESMTP legacy\r\n`)
  let data = false
  onLines(s, (line) => {
    received.push(line)
    if (data) {
      if (line === ".") {
        data = false
        s.write("250 2.0.0 Queued\r\n")
      }
      return
    }
    const verb = (line.split(" ")[0] ?? "").toUpperCase()
    const reply: Record<string, string> = {
      EHLO: `250-${name}\r\n250-PIPELINING\r\n${options.advertiseStarttls ? "250-STARTTLS\r\n" : ""}250 8BITMIME\r\n`,
      HELO: `250 ${name}\r\n`,
      NOOP: "250 2.0.0 OK\r\n",
      RSET: "250 2.0.0 Reset\r\n",
      MAIL: "250 2.1.0 Sender OK\r\n",
      RCPT: "250 2.1.5 Recipient OK\r\n",
      DATA: "354 End data with <CR><LF>.<CR><LF>\r\n"
    }
    if (verb === "QUIT") s.end("221 2.0.0 Bye\r\n")
    else {
      s.write(reply[verb] ?? "500 5.5.2 Command unrecognized\r\n")
      if (verb === "DATA") data = true
    }
  })
}

/** A legacy IMAP server. */
export const imapSession = (s: Duplex, received: Recorder, options: { readonly greet?: boolean } = {}): void => {
  if (options.greet !== false) s.write("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] legacy IMAP ready\r\n")
  onLines(s, (line) => {
    received.push(line)
    const [tag = "*", verb = ""] = line.split(" ")
    switch (verb.toUpperCase()) {
      case "CAPABILITY":
        return void s.write(`* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n${tag} OK CAPABILITY completed\r\n`)
      case "NOOP":
      case "LOGIN":
        return void s.write(`${tag} OK ${verb.toUpperCase()} completed\r\n`)
      case "LOGOUT":
        s.write("* BYE legacy IMAP logging out\r\n")
        return void s.end(`${tag} OK LOGOUT completed\r\n`)
      default:
        return void s.write(`${tag} BAD unknown command\r\n`)
    }
  })
}

/** A legacy POP3 server. */
export const pop3Session = (
  s: Duplex,
  received: Recorder,
  options: { readonly greet?: boolean; readonly greeting?: string } = {}
): void => {
  if (options.greet !== false) s.write(`${options.greeting ?? "+OK legacy POP3 ready"}\r\n`)
  onLines(s, (line) => {
    received.push(line)
    const verb = (line.split(" ")[0] ?? "").toUpperCase()
    if (verb === "QUIT") return void s.end("+OK legacy POP3 bye\r\n")
    if (verb === "CAPA") return void s.write("+OK Capability list follows\r\nUSER\r\nUIDL\r\n.\r\n")
    if (verb === "STAT") return void s.write("+OK 0 0\r\n")
    if (verb === "USER" || verb === "PASS" || verb === "NOOP") return void s.write("+OK\r\n")
    s.write("-ERR unknown command\r\n")
  })
}

/** Cut complete BER TLVs (short or long length form) off `buffer`. */
export const berFrames = (buffer: Buffer): { readonly frames: Array<Buffer>; readonly rest: Buffer } => {
  const frames: Array<Buffer> = []
  let b = buffer
  for (;;) {
    if (b.length < 2) break
    const l0 = b[1]!
    let header = 2
    let length = l0
    if (l0 >= 0x80) {
      const n = l0 & 0x7f
      if (b.length < 2 + n) break
      length = b.readUIntBE(2, n)
      header += n
    }
    if (b.length < header + length) break
    frames.push(b.subarray(0, header + length))
    b = b.subarray(header + length)
  }
  return { frames, rest: b }
}

/** messageID (one-byte form only, enough for tests) and protocolOp tag of an LDAPMessage. */
export const ldapInfo = (frame: Buffer): { readonly id: number; readonly op: number } => {
  const header = frame[1]! < 0x80 ? 2 : 2 + (frame[1]! & 0x7f)
  const idLength = frame[header + 1]!
  return { id: frame.readUIntBE(header + 2, idLength), op: frame[header + 2 + idLength]! }
}

/** An LDAPResult-shaped response with a one-byte messageID and empty DN and message. */
export const ldapResponse = (id: number, op: number, code: number, extra = Buffer.alloc(0)): Buffer => {
  const body = Buffer.concat([Buffer.from([0x0a, 0x01, code, 0x04, 0x00, 0x04, 0x00]), extra])
  const inner = Buffer.concat([Buffer.from([op, body.length]), body])
  return Buffer.concat([Buffer.from([0x30, inner.length + 3, 0x02, 0x01, id]), inner])
}

const ldapOpNames: Record<number, string> = { 96: "bind", 99: "search", 66: "unbind", 119: "extended" }

/** A legacy LDAP server: binds and searches succeed (no entries), unbind closes. */
export const ldapSession = (s: Duplex, received: Recorder): void => {
  let buffer: Buffer = Buffer.alloc(0)
  s.on("data", (chunk: Buffer) => {
    const { frames, rest } = berFrames(Buffer.concat([buffer, chunk]))
    buffer = rest
    for (const frame of frames) {
      const { id, op } = ldapInfo(frame)
      received.push(`${ldapOpNames[op] ?? `op 0x${op.toString(16)}`} #${id}`)
      if (op === 0x60) s.write(ldapResponse(id, 0x61, 0))
      else if (op === 0x63) s.write(ldapResponse(id, 0x65, 0))
      else if (op === 0x42) s.end()
      else if (op === 0x77) s.write(ldapResponse(id, 0x78, 2))
    }
  })
}

/** AuthenticationOk followed by ReadyForQuery (idle). */
export const pgReady = Buffer.from("R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I", "latin1")

/** A legacy PostgreSQL server: records the StartupMessage, answers "ready", closes on Terminate. */
export const pgSession = (s: Duplex, received: Recorder): void => {
  let buffer: Buffer = Buffer.alloc(0)
  let started = false
  s.on("data", (chunk: Buffer) => {
    buffer = Buffer.concat([buffer, chunk])
    for (;;) {
      if (!started) {
        if (buffer.length < 8) return
        const length = buffer.readUInt32BE(0)
        if (buffer.length < length) return
        const code = buffer.readUInt32BE(4)
        const params = buffer.subarray(8, length).toString("latin1").split("\0").filter(Boolean)
        received.push(code === 80877103 ? "SSLRequest" : `startup ${code >>> 16}.${code & 0xffff} ${params.join(" ")}`)
        buffer = buffer.subarray(length)
        if (code === 80877103) s.write("N")
        else {
          started = true
          s.write(pgReady)
        }
        continue
      }
      if (buffer.length < 5) return
      const length = buffer.readUInt32BE(1)
      if (buffer.length < length + 1) return
      const type = String.fromCharCode(buffer[0]!)
      received.push(`message ${type}`)
      buffer = buffer.subarray(length + 1)
      if (type === "X") return void s.end()
    }
  })
}

/** A line echo server ("QUIT" ends the session). */
export const lineSession = (s: Duplex, received: Recorder, options: { readonly banner?: string } = {}): void => {
  if (options.banner !== undefined) s.write(`${options.banner}\r\n`)
  onLines(s, (line) => {
    received.push(line)
    if (line === "QUIT") s.end("bye\r\n")
    else s.write(`echo: ${line}\r\n`)
  })
}
