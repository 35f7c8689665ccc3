/**
 * Runs the `ProxyProtocol` codec on Node sockets, for a listener: reading the header a trusted
 * load balancer puts in front of a connection (`acceptProxyProtocol`), and building the header
 * Sleeve writes to the target before the first application byte (`proxyProtocol`).
 *
 * Reading is bounded twice: by the codec, which never waits for more than a header can be
 * (107 bytes for version 1, 16 + 65535 for version 2) and refuses anything else at its first
 * wrong byte, and by a timeout. Bytes that arrived with the header but follow it (a TLS
 * ClientHello, a STARTTLS greeting) are put back with `unshift`, so the next stage reads them
 * first: Node's TLSSocket feeds a wrapped socket's buffered bytes to OpenSSL, and a relay reads
 * them before anything new. Whether the source may send a header at all is the listener's
 * decision, made before this is called.
 *
 * Plain Node callbacks and Promises, like the rest of the data path; nothing here logs or
 * counts (the listener does, once per connection).
 */
import { type Certificate, DistinguishedName } from "@sleeve/core"
import type * as Net from "node:net"
import type * as Tls from "node:tls"
import * as PP from "./ProxyProtocol.ts"

/** Why a header could not be read; `reason` is a `sleeve_proxy_protocol_refused_total` label. */
export interface ReadFailure {
  readonly reason: "malformed" | "timeout" | "closed"
  readonly detail: string
}

/** Outcome of {@link readHeader}. */
export type ReadResult =
  | { readonly _tag: "Header"; readonly header: PP.Header }
  | { readonly _tag: "Failed"; readonly failure: ReadFailure }

/**
 * Reads one PROXY protocol header (either version) from the start of `socket`, within
 * `timeoutMs`. On success the socket is paused with whatever followed the header put back; on
 * failure the caller closes it. Never rejects.
 */
export const readHeader = (socket: Net.Socket, timeoutMs: number): Promise<ReadResult> =>
  new Promise((resolve) => {
    let received: Uint8Array = new Uint8Array(0)
    const finish = (r: ReadResult) => {
      clearTimeout(timer)
      socket.off("data", onData).off("end", onEnd).off("close", onEnd).off("error", onError)
      socket.pause()
      resolve(r)
    }
    const fail = (reason: ReadFailure["reason"], detail: string) =>
      finish({ _tag: "Failed", failure: { reason, detail } })
    const onData = (chunk: Buffer) => {
      const all = new Uint8Array(received.length + chunk.length)
      all.set(received, 0)
      all.set(chunk, received.length)
      received = all
      const d = PP.decode(received)
      if (d._tag === "Incomplete") return
      if (d._tag === "Invalid") return fail("malformed", d.detail)
      finish({ _tag: "Header", header: d.header })
      if (d.length < received.length) socket.unshift(Buffer.from(received.subarray(d.length)))
    }
    const onEnd = () => fail("closed", `the source closed the connection after ${received.length} header bytes`)
    const onError = (e: Error) => fail("closed", `connection error before the whole header: ${e.message}`)
    const timer = setTimeout(
      () => fail("timeout", `no whole PROXY protocol header within ${timeoutMs} ms (${received.length} bytes so far)`),
      timeoutMs
    )
    socket.on("data", onData).on("end", onEnd).on("close", onEnd).on("error", onError)
    socket.resume()
  })

/**
 * The client as the listener should see it: the addresses a trusted header carried (a `proxy`
 * command over TCP/IP), otherwise the socket's own endpoints. Undefined when neither is an IP
 * address pair (then a header sent onward says `LOCAL` / `UNKNOWN`).
 */
export const originOf = (socket: Net.Socket, received: PP.Header | undefined): PP.Addresses | undefined => {
  const a = received?.command === "proxy" ? received.addresses : undefined
  if (a !== undefined && a.family !== "unix" && a.transport === "stream") {
    return PP.tcpAddresses(a.source, a.destination)
  }
  if (socket.remoteAddress === undefined || socket.localAddress === undefined) return undefined
  return PP.tcpAddresses(
    { address: socket.remoteAddress, port: socket.remotePort ?? 0 },
    { address: socket.localAddress, port: socket.localPort ?? 0 }
  )
}

/** `address:port` for logs (as the listener logs a socket's remote end). */
export const formatSource = (a: PP.Addresses | undefined, fallback: string): string =>
  a === undefined || a.family === "unix" ? fallback : `${a.source.address}:${a.source.port}`

const commonNameOid = "2.5.4.3"

/** What TLS established about a secured client, read from its socket and authorized certificate. */
export const tlsFactsOf = (
  socket: Tls.TLSSocket,
  peer: Certificate.Certificate | undefined,
  tlsConfig: string
): PP.TlsFacts => {
  const servername = (socket as unknown as { servername?: unknown }).servername
  const alpn = socket.alpnProtocol
  // The most specific CN (RFC 4514 order puts it first).
  const cn = peer?.subject.rdns.flat().find((ava) => ava.type === commonNameOid && ava.der === undefined)
  return {
    version: socket.getProtocol() ?? undefined,
    cipher: socket.getCipher()?.name,
    alpn: typeof alpn === "string" && alpn !== "" ? alpn : undefined,
    serverName: typeof servername === "string" && servername !== "" ? servername : undefined,
    certificateInSession: peer !== undefined,
    certificateOnConnection: peer !== undefined && !socket.isSessionReused(),
    verified: peer !== undefined && socket.authorized,
    commonName: cn?.value,
    subjectDn: peer === undefined ? undefined : DistinguishedName.format(peer.subject),
    tlsConfig
  }
}

/**
 * The header to write to the target: the client's addresses and, for version 2, the TLS TLVs.
 * A connection without a usable address pair is sent as `LOCAL` (v2) / `UNKNOWN` (v1).
 */
export const makeHeader = (
  version: "v1" | "v2",
  origin: PP.Addresses | undefined,
  tls: PP.TlsFacts | undefined
): Uint8Array =>
  version === "v1"
    ? PP.encodeV1({ command: origin === undefined ? "local" : "proxy", addresses: origin })
    : PP.encodeV2({
        command: origin === undefined ? "local" : "proxy",
        addresses: origin,
        tlvs: tls === undefined ? [] : PP.tlsTlvs(tls)
      })
