/**
 * A minimal Sleeve for the STARTTLS integration tests: a listener that runs
 * `StarttlsSession.runServerSide` / `runClientSide` on each connection with real TLS upgrades,
 * then relays both ways. Plus what the clients of those tests need, with a listener of the real
 * runtime as with this one: an `openssl s_client -starttls` runner and its arguments, a TLS
 * client on an already-negotiated socket, the raw LDAP and PostgreSQL messages a legacy client
 * sends, and a buffered socket reader.
 */
import { close, listen, makeConnections } from "@sleeve/testing/Net"
import * as Process from "@sleeve/testing/Process"
import * as net from "node:net"
import type { Duplex } from "node:stream"
import * as tls from "node:tls"
import * as Starttls from "../../src/Starttls.ts"
import * as StarttlsSession from "../../src/StarttlsSession.ts"
import type { Pki } from "./StarttlsPki.ts"

/** How one proxied connection's negotiation ended. */
export type Outcome =
  | { readonly ok: true; readonly discarded: number; readonly stats: Starttls.Stats }
  | { readonly ok: false; readonly error: StarttlsSessionError }

type StarttlsSessionError = StarttlsSession.StarttlsSessionError

/** The server-role upgrade: wrap synchronously, resolve on 'secure'. */
export const serverUpgrade =
  (pki: Pki) =>
  (raw: net.Socket): Promise<tls.TLSSocket> => {
    const secure = new tls.TLSSocket(raw, { isServer: true, secureContext: pki.serverContext })
    return new Promise((resolve, reject) => {
      secure.once("secure", () => resolve(secure))
      secure.on("error", reject)
      secure.once("close", () => reject(new Error("connection closed during the TLS handshake")))
    })
  }

/**
 * A TLS client on an already-negotiated raw socket, verifying the server against `caPem` as
 * "localhost"; rejects when the handshake fails or the connection closes first.
 */
export const secureClient =
  (caPem: string) =>
  (raw: net.Socket): Promise<tls.TLSSocket> => {
    const secure = tls.connect({ socket: raw, ca: caPem, servername: "localhost" })
    return new Promise((resolve, reject) => {
      secure.once("secureConnect", () => resolve(secure))
      secure.on("error", reject)
      secure.once("close", () => reject(new Error("connection closed during the TLS handshake")))
    })
  }

/** The client-role upgrade: verify the server against the test CA as "localhost". */
export const clientUpgrade = (pki: Pki): ((raw: net.Socket) => Promise<tls.TLSSocket>) => secureClient(pki.caPem)

/** A running test Sleeve. */
export interface Sleeve {
  readonly port: number
  /** One per accepted connection. */
  readonly sessions: Array<Promise<Outcome>>
  readonly close: () => Promise<void>
}

/** Start a Sleeve in front of (server side) or beside (client side) `target`. */
export const startSleeve = async (options: {
  readonly side: Starttls.Side
  readonly target: number
  readonly pki: Pki
  readonly negotiator: Omit<Starttls.NegotiatorOptions, "side">
}): Promise<Sleeve> => {
  const sessions: Array<Promise<Outcome>> = []
  const connections = makeConnections()
  const track = connections.track
  const handle = async (inbound: net.Socket): Promise<Outcome> => {
    const outbound = net.connect(options.target, "127.0.0.1")
    track(outbound)
    await new Promise<void>((resolve, reject) => {
      outbound.once("connect", resolve)
      outbound.once("error", reject)
    })
    const negotiator = Starttls.makeNegotiator({ ...options.negotiator, side: options.side })
    try {
      const upgraded =
        options.side === "server"
          ? await StarttlsSession.runServerSide({
              peer: inbound,
              app: outbound,
              negotiator,
              upgrade: serverUpgrade(options.pki)
            })
          : await StarttlsSession.runClientSide({
              peer: outbound,
              app: inbound,
              negotiator,
              upgrade: clientUpgrade(options.pki)
            })
      track(upgraded.peer)
      relay(upgraded)
      return { ok: true, discarded: upgraded.discarded, stats: upgraded.stats }
    } catch (error) {
      if (error instanceof StarttlsSession.StarttlsSessionError) return { ok: false, error }
      throw error
    }
  }
  const server = net.createServer((inbound) => {
    track(inbound)
    sessions.push(handle(inbound))
  })
  const port = await listen(server)
  return { port, sessions, close: () => close(server, connections.sockets) }
}

/** Relay both ways with end propagation; an error on either side tears both down. */
const relay = ({ peer, app, appToPeer }: StarttlsSession.Upgraded) => {
  const teardown = () => {
    peer.destroy()
    app.destroy()
  }
  peer.on("error", teardown)
  app.on("error", teardown)
  peer.pipe(app)
  if (appToPeer === undefined) app.pipe(peer)
  else app.pipe(appToPeer).pipe(peer)
}

/** Result of an `openssl s_client` run. */
export interface SClientResult {
  readonly code: number | null
  readonly stdout: Buffer
  readonly stderr: string
}

/** Run `openssl s_client` with `args`, feeding `input` on stdin (read after the handshake). */
export const sClient = async (
  args: ReadonlyArray<string>,
  input: string | Buffer,
  timeoutMs = 4000
): Promise<SClientResult> => {
  // latin1 keeps every byte: the binary protocols' answers are compared as bytes.
  const r = await Process.run("openssl", ["s_client", ...args], { input, timeoutMs, encoding: "latin1" })
  return { code: r.code, stdout: Buffer.from(r.stdout, "latin1"), stderr: r.stderr }
}

/**
 * `s_client` arguments for `-starttls <starttls>` to 127.0.0.1:`port`, verifying the chain against
 * `caFile` and the host name `localhost` strictly, and not quitting at the end of stdin.
 */
export const sClientArgs = (
  caFile: string,
  starttls: string,
  port: number,
  extra: ReadonlyArray<string> = []
): Array<string> => [
  "-starttls",
  starttls,
  "-connect",
  `127.0.0.1:${port}`,
  "-CAfile",
  caFile,
  "-verify_return_error",
  "-servername",
  "localhost",
  "-verify_hostname",
  "localhost",
  "-ign_eof",
  ...extra
]

// ---------------------------------------------------------------------------------------------
// What legacy clients send
// ---------------------------------------------------------------------------------------------

/** An LDAP simple BindRequest (`cn=x`, password `pw`) with a one-byte messageID. */
export const ldapBind = (id: number): Buffer =>
  Buffer.from(`30120201${id.toString(16).padStart(2, "0")}600d0201030404636e3d7880027077`, "hex")
/** An LDAP UnbindRequest with a one-byte messageID. */
export const ldapUnbind = (id: number): Buffer => Buffer.from(`30050201${id.toString(16).padStart(2, "0")}4200`, "hex")

/** A PostgreSQL StartupMessage (protocol 3.0) for `user` and database `db`. */
export const pgStartup = (user: string): Buffer => {
  const body = Buffer.concat([Buffer.from("00030000", "hex"), Buffer.from(`user\0${user}\0database\0db\0\0`)])
  const length = Buffer.alloc(4)
  length.writeUInt32BE(body.length + 4)
  return Buffer.concat([length, body])
}
/** The PostgreSQL SSLRequest. */
export const pgSslRequest: Buffer = Buffer.from("0000000804d2162f", "hex")
/** The PostgreSQL Terminate message. */
export const pgTerminate: Buffer = Buffer.from("X\0\0\0\x04", "latin1")

/** A buffered reader over a stream: wait until the received bytes satisfy a condition. */
export interface Reader {
  /** Resolve with everything received so far once it matches, and clear the buffer. */
  readonly until: (match: RegExp | ((b: Buffer) => boolean), timeoutMs?: number) => Promise<Buffer>
  /** Stop reading (pause the stream); returns bytes received and not yet consumed. */
  readonly detach: () => Buffer
}

/** Start buffering what `stream` receives. */
export const makeReader = (stream: Duplex): Reader => {
  let buffer: Buffer = Buffer.alloc(0)
  let check = () => {}
  const onData = (chunk: Buffer) => {
    buffer = Buffer.concat([buffer, chunk])
    check()
  }
  stream.on("data", onData)
  return {
    until: (match, timeoutMs = 1500) =>
      new Promise((resolve, reject) => {
        const test = typeof match === "function" ? match : (b: Buffer) => match.test(b.toString("latin1"))
        const timer = setTimeout(() => {
          check = () => {}
          reject(new Error(`timed out waiting for ${String(match)}; got ${JSON.stringify(buffer.toString("latin1"))}`))
        }, timeoutMs)
        check = () => {
          if (!test(buffer)) return
          clearTimeout(timer)
          check = () => {}
          const got = buffer
          buffer = Buffer.alloc(0)
          resolve(got)
        }
        check()
      }),
    detach: () => {
      stream.off("data", onData)
      stream.pause()
      const rest = buffer
      buffer = Buffer.alloc(0)
      return rest
    }
  }
}

/** Connect to 127.0.0.1:port. */
export const connect = (port: number): Promise<net.Socket> =>
  new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1")
    socket.once("connect", () => resolve(socket))
    socket.once("error", reject)
  })

/** Resolve when `socket` has closed. */
export const closed = (socket: net.Socket | tls.TLSSocket): Promise<void> =>
  socket.destroyed && socket.closed
    ? Promise.resolve()
    : new Promise((resolve) => socket.once("close", () => resolve()))
