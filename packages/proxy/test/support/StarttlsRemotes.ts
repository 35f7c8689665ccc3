/**
 * Small STARTTLS-capable servers for the client-side integration tests: each speaks its protocol
 * in plaintext up to the upgrade, does a real TLS handshake (as server, with the test PKI) and
 * then serves the legacy session over TLS. What they receive is recorded as `plain: ...` before
 * the upgrade and `tls: ...` after it.
 */
import type * as net from "node:net"
import * as tls from "node:tls"
import type * as Starttls from "../../src/Starttls.ts"
import {
  berFrames,
  imapSession,
  ldapInfo,
  ldapResponse,
  ldapSession,
  lineSession,
  listen,
  onLines,
  pgSession,
  pop3Session,
  type Recorder,
  type Served,
  smtpSession
} from "./LegacyApps.ts"
import type { Pki } from "./StarttlsPki.ts"

/** Options of {@link startRemote}. */
export interface RemoteOptions {
  readonly pki: Pki
  /** false: the server does not offer (or refuses) STARTTLS. */
  readonly offer?: boolean
  /** Plaintext sent right after the go-ahead, before the handshake (a man-in-the-middle injection). */
  readonly inject?: string
}

const secure = (
  socket: net.Socket,
  pki: Pki,
  received: Array<string>,
  serve: (s: tls.TLSSocket, r: Recorder) => void
) => {
  const tlsSocket = new tls.TLSSocket(socket, { isServer: true, secureContext: pki.serverContext })
  tlsSocket.on("error", () => {})
  tlsSocket.once("secure", () => serve(tlsSocket, { push: (line: string) => received.push(`tls: ${line}`) }))
}

type LineStep = { readonly reply: string; readonly upgrade?: boolean }

const lineRemote = (
  o: RemoteOptions,
  greeting: string,
  step: (line: string) => LineStep,
  serve: (s: tls.TLSSocket, r: Recorder) => void
) =>
  listen((socket, received) => {
    socket.write(greeting)
    const detach = onLines(socket, (line) => {
      received.push(`plain: ${line}`)
      const next = step(line)
      if (next.upgrade === true && o.offer !== false) {
        detach()
        socket.pause()
        socket.write(next.reply + (o.inject ?? ""))
        secure(socket, o.pki, received, serve)
      } else socket.write(next.reply)
    })
  })

/** Start a STARTTLS-capable remote server for `protocol`. */
export const startRemote = (protocol: Starttls.Protocol, o: RemoteOptions): Promise<Served> => {
  const offer = o.offer !== false
  switch (protocol) {
    case "smtp":
      return lineRemote(
        o,
        "220 remote.test ESMTP\r\n",
        (line) => {
          const verb = (line.split(" ")[0] ?? "").toUpperCase()
          if (verb === "EHLO") {
            return { reply: `250-remote.test\r\n${offer ? "250-STARTTLS\r\n" : ""}250 SIZE 1000\r\n` }
          }
          if (verb === "STARTTLS")
            return offer
              ? { reply: "220 2.0.0 Ready to start TLS\r\n", upgrade: true }
              : { reply: "502 5.5.1 Not implemented\r\n" }
          if (verb === "QUIT") return { reply: "221 2.0.0 Bye\r\n" }
          return { reply: "503 5.5.1 EHLO first\r\n" }
        },
        (s, r) => smtpSession(s, r, { greet: false, name: "remote.test" })
      )
    case "imap":
      return lineRemote(
        o,
        `* OK [CAPABILITY IMAP4rev1 ${offer ? "STARTTLS " : ""}LOGINDISABLED] remote IMAP ready\r\n`,
        (line) => {
          const [tag = "*", verb = ""] = line.split(" ")
          if (verb.toUpperCase() === "STARTTLS")
            return { reply: `${tag} OK Begin TLS negotiation now\r\n`, upgrade: true }
          return { reply: `${tag} BAD unexpected\r\n` }
        },
        (s, r) => imapSession(s, r, { greet: false })
      )
    case "pop3":
      return lineRemote(
        o,
        "+OK remote POP3 ready <4711.1@remote.test>\r\n",
        (line) => {
          if (line.toUpperCase() === "STLS")
            return offer ? { reply: "+OK Begin TLS\r\n", upgrade: true } : { reply: "-ERR unknown command\r\n" }
          return { reply: "+OK\r\n" }
        },
        (s, r) => pop3Session(s, r, { greet: false })
      )
    case "line":
      return lineRemote(
        o,
        "",
        (line) =>
          line === "STARTTLS" && offer ? { reply: "OK STARTTLS\r\n", upgrade: true } : { reply: "ERR unknown\r\n" },
        (s, r) => lineSession(s, r)
      )
    case "ldap":
      return listen((socket, received) => {
        let buffer: Buffer = Buffer.alloc(0)
        const onData = (chunk: Buffer) => {
          const { frames, rest } = berFrames(Buffer.concat([buffer, chunk]))
          buffer = rest
          for (const frame of frames) {
            const { id, op } = ldapInfo(frame)
            received.push(`plain: op 0x${op.toString(16)} #${id}`)
            const isStartTls = op === 0x77 && frame.includes("1.3.6.1.4.1.1466.20037")
            if (!isStartTls || !offer) {
              socket.write(ldapResponse(id, op === 0x77 ? 0x78 : 0x61, 2))
              continue
            }
            socket.off("data", onData)
            socket.pause()
            const oid = Buffer.from("1.3.6.1.4.1.1466.20037")
            socket.write(ldapResponse(id, 0x78, 0, Buffer.concat([Buffer.from([0x8a, oid.length]), oid])))
            if (o.inject !== undefined) socket.write(o.inject)
            secure(socket, o.pki, received, (s, r) => ldapSession(s, r))
            return
          }
        }
        socket.on("data", onData)
      })
    case "postgres":
      return listen((socket, received) => {
        let buffer: Buffer = Buffer.alloc(0)
        const onData = (chunk: Buffer) => {
          buffer = Buffer.concat([buffer, chunk])
          if (buffer.length < 8) return
          const isSslRequest = buffer.readUInt32BE(0) === 8 && buffer.readUInt32BE(4) === 80877103
          received.push(isSslRequest ? "plain: SSLRequest" : "plain: other")
          socket.off("data", onData)
          socket.pause()
          if (!isSslRequest || !offer) return void socket.end("N")
          socket.write(`S${o.inject ?? ""}`)
          secure(socket, o.pki, received, (s, r) => pgSession(s, r))
        }
        socket.on("data", onData)
      })
  }
}
