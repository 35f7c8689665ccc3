/**
 * The PROXY protocol (HAProxy's `doc/proxy-protocol.txt`), versions 1 (one text line) and 2
 * (binary, with TLVs): a header a proxy puts in front of the first byte of a connection it
 * forwards, to tell the receiver who the real client is.
 *
 * Sleeve uses it both ways. Sending (`proxyProtocol` on a listener): the legacy application
 * behind a terminate or STARTTLS listener learns the client's address and, in version 2, what
 * TLS told Sleeve about it — the standard `PP2_TYPE_SSL` TLV (client flags, verify result, TLS
 * version, cipher, CN), `PP2_TYPE_ALPN`, `PP2_TYPE_AUTHORITY` (SNI) — plus two TLVs of the
 * custom range that no other proxy sends: the peer's full subject DN in RFC 4514 form
 * ({@link tlvType.subjectDn}) and the name of the TLS configuration that authorized it
 * ({@link tlvType.tlsConfig}); docs/proxy-protocol.md is their public contract. Receiving
 * (`acceptProxyProtocol`): a load balancer in front of Sleeve tells it the real client's address.
 *
 * Written here rather than taken from npm: the two maintained packages (proxy-protocol-js,
 * @balena/proxy-protocol-parser) encode and decode addresses only, not TLVs, and TLVs are the
 * point of sending the header.
 *
 * `decode` is incremental-friendly: fed the bytes received so far, it says `Incomplete` (read
 * more), `Invalid` (refuse the connection) or `Complete` with the header and its length (the
 * bytes after it belong to the application). It never asks for more than a header can be
 * (107 bytes for version 1, 16 + 65535 for version 2), so a caller that stops at `Invalid` reads
 * a bounded amount. It does not check a `PP2_TYPE_CRC32C` checksum (the spec lets a receiver
 * ignore it) and keeps every TLV, known or not, in order.
 *
 * A pure codec: no sockets, no clock, no Node streams. `ProxyProtocolSession` runs it on
 * sockets; the trust decision (which sources may send a header) belongs to the listener.
 */
import * as Net from "node:net"

// ---------------------------------------------------------------------------------------------
// Constants from the specification
// ---------------------------------------------------------------------------------------------

/** The 12-byte version 2 signature. */
export const v2Signature: Uint8Array = Uint8Array.of(
  0x0d,
  0x0a,
  0x0d,
  0x0a,
  0x00,
  0x0d,
  0x0a,
  0x51,
  0x55,
  0x49,
  0x54,
  0x0a
)

/** The longest version 1 line, CRLF included (`PROXY UNKNOWN <v6> <v6> 65535 65535\r\n`). */
export const v1MaxLength = 107

/** The longest version 2 header: 16 fixed bytes and a 16-bit length. */
export const v2MaxLength = 16 + 0xffff

/** TLV types: the registered ones Sleeve reads or writes, and Sleeve's own in the custom range. */
export const tlvType = {
  /** PP2_TYPE_ALPN: the negotiated ALPN protocol. */
  alpn: 0x01,
  /** PP2_TYPE_AUTHORITY: the host name the client asked for (TLS SNI), UTF-8. */
  authority: 0x02,
  /** PP2_TYPE_CRC32C (not produced, not checked). */
  crc32c: 0x03,
  /** PP2_TYPE_NOOP: padding. */
  noop: 0x04,
  /** PP2_TYPE_UNIQUE_ID. */
  uniqueId: 0x05,
  /** PP2_TYPE_SSL: client flags, verify result and sub-TLVs (see {@link SslInfo}). */
  ssl: 0x20,
  /** PP2_TYPE_NETNS. */
  netns: 0x30,
  /** Sleeve (custom range 0xE0–0xEF): the verified peer certificate's subject DN, RFC 4514, UTF-8. */
  subjectDn: 0xe0,
  /** Sleeve (custom range): the name of the TLS configuration that authorized the peer, UTF-8. */
  tlsConfig: 0xe1
} as const

/** Sub-TLV types inside PP2_TYPE_SSL. */
export const sslSubtype = {
  /** PP2_SUBTYPE_SSL_VERSION: e.g. `TLSv1.3`. */
  version: 0x21,
  /** PP2_SUBTYPE_SSL_CN: the client certificate's Common Name. */
  cn: 0x22,
  /** PP2_SUBTYPE_SSL_CIPHER: e.g. `ECDHE-RSA-AES128-GCM-SHA256`. */
  cipher: 0x23,
  /** PP2_SUBTYPE_SSL_SIG_ALG. */
  sigAlg: 0x24,
  /** PP2_SUBTYPE_SSL_KEY_ALG. */
  keyAlg: 0x25
} as const

/** Bits of the `client` field of PP2_TYPE_SSL. */
export const sslClient = {
  /** PP2_CLIENT_SSL: the client connected over TLS. */
  ssl: 0x01,
  /** PP2_CLIENT_CERT_CONN: it presented a certificate on this connection. */
  certConn: 0x02,
  /** PP2_CLIENT_CERT_SESS: it presented one at least once in this TLS session. */
  certSess: 0x04
} as const

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

/** One endpoint of a TCP (or UDP) connection; `address` in Node's text form. */
export interface Endpoint {
  readonly address: string
  readonly port: number
}

/** The addresses a header carries. */
export type Addresses =
  | {
      readonly family: "IPv4" | "IPv6"
      readonly transport: "stream" | "dgram"
      readonly source: Endpoint
      readonly destination: Endpoint
    }
  | {
      readonly family: "unix"
      readonly transport: "stream" | "dgram"
      /** Socket paths (at most 108 bytes each, UTF-8). */
      readonly source: string
      readonly destination: string
    }

/** One type-length-value entry of a version 2 header. */
export interface Tlv {
  readonly type: number
  readonly value: Uint8Array
}

/** A PROXY protocol header. */
export interface Header {
  readonly version: 1 | 2
  /**
   * `proxy`: relayed on behalf of `addresses`' source. `local`: the sender's own connection (a
   * health check), or a version 1 `UNKNOWN` line; the receiver uses the real endpoints.
   */
  readonly command: "proxy" | "local"
  /** Undefined for `local`, for `UNKNOWN` and for the unspecified family. */
  readonly addresses: Addresses | undefined
  /** Version 2 TLVs, in wire order; always empty for version 1. */
  readonly tlvs: ReadonlyArray<Tlv>
}

/** The PP2_TYPE_SSL value. */
export interface SslInfo {
  /** Bit field of {@link sslClient}. */
  readonly client: number
  /** 0 when the client presented a certificate and it verified; non-zero otherwise. */
  readonly verify: number
  /** Sub-TLVs, in wire order. */
  readonly tlvs: ReadonlyArray<Tlv>
}

/** What `decode` found. */
export type Decoded =
  | { readonly _tag: "Incomplete" }
  | { readonly _tag: "Invalid"; readonly detail: string }
  | { readonly _tag: "Complete"; readonly header: Header; readonly length: number }

// ---------------------------------------------------------------------------------------------
// Addresses: text <-> bytes
// ---------------------------------------------------------------------------------------------

/** The 16 bytes of an IPv6 address in text form (as Node and RFC 4291 write it), or undefined. */
export const ipv6Bytes = (text: string): Uint8Array | undefined => {
  if (!Net.isIPv6(text) || text.includes("%")) return undefined
  let hexText = text
  // An embedded IPv4 tail (`::ffff:1.2.3.4`) stands for the last two groups.
  const lastColon = text.lastIndexOf(":")
  const last = text.slice(lastColon + 1)
  if (last.includes(".")) {
    const v4 = ipv4Bytes(last)
    if (v4 === undefined) return undefined
    const pair = `${((v4[0]! << 8) | v4[1]!).toString(16)}:${((v4[2]! << 8) | v4[3]!).toString(16)}`
    hexText = text.slice(0, lastColon + 1) + pair
  }
  const halves = hexText.split("::")
  if (halves.length > 2) return undefined
  const groups = (s: string | undefined) => (s === undefined || s === "" ? [] : s.split(":"))
  const l = groups(halves[0])
  const r = groups(halves[1])
  const fill = halves.length === 2 ? 8 - l.length - r.length : 0
  if (fill < 0) return undefined
  const all = [...l, ...new Array<string>(fill).fill("0"), ...r]
  if (all.length !== 8) return undefined
  const out = new Uint8Array(16)
  for (let i = 0; i < 8; i++) {
    const g = all[i]!
    if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return undefined
    const n = Number.parseInt(g, 16)
    out[2 * i] = n >> 8
    out[2 * i + 1] = n & 0xff
  }
  return out
}

/** The 4 bytes of a dotted-quad IPv4 address, or undefined (leading zeros are refused, as the spec says). */
export const ipv4Bytes = (text: string): Uint8Array | undefined => {
  const parts = text.split(".")
  if (parts.length !== 4) return undefined
  const out = new Uint8Array(4)
  for (let i = 0; i < 4; i++) {
    const p = parts[i]!
    if (!/^(?:0|[1-9]\d{0,2})$/.test(p) || Number(p) > 255) return undefined
    out[i] = Number(p)
  }
  return out
}

/** Dotted-quad text of 4 bytes. */
export const formatIpv4 = (b: Uint8Array): string => `${b[0]}.${b[1]}.${b[2]}.${b[3]}`

/**
 * RFC 5952 text of 16 bytes, as Node prints peer addresses: lower case, the longest run of two
 * or more zero groups shortened to `::` (the first on a tie), and an IPv4-mapped address as
 * `::ffff:a.b.c.d`.
 */
export const formatIpv6 = (b: Uint8Array): string => {
  const g: Array<number> = []
  for (let i = 0; i < 8; i++) g.push((b[2 * i]! << 8) | b[2 * i + 1]!)
  if (g[0] === 0 && g[1] === 0 && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0xffff) {
    return `::ffff:${formatIpv4(b.subarray(12, 16))}`
  }
  let bestStart = -1
  let bestLength = 1
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++
      continue
    }
    let j = i
    while (j < 8 && g[j] === 0) j++
    if (j - i > bestLength) {
      bestStart = i
      bestLength = j - i
    }
    i = j
  }
  const hex = (xs: ReadonlyArray<number>) => xs.map((x) => x.toString(16)).join(":")
  if (bestStart < 0) return hex(g)
  return `${hex(g.slice(0, bestStart))}::${hex(g.slice(bestStart + bestLength))}`
}

/** `::ffff:a.b.c.d` as `a.b.c.d`; any other address unchanged. */
export const unmapIpv4 = (address: string): string =>
  address.toLowerCase().startsWith("::ffff:") && Net.isIPv4(address.slice(7)) ? address.slice(7) : address

/**
 * The TCP addresses of a connection for a header: IPv4-mapped addresses are written as IPv4,
 * and when the two ends are of different families (an IPv4 client reaching an IPv6 listener
 * through a proxy) the IPv4 one is mapped into IPv6, since a header has one family. Undefined
 * when an address is not an IP address.
 */
export const tcpAddresses = (source: Endpoint, destination: Endpoint): Addresses | undefined => {
  let src = unmapIpv4(source.address)
  let dst = unmapIpv4(destination.address)
  const fs = Net.isIP(src)
  const fd = Net.isIP(dst)
  if (fs === 0 || fd === 0 || src.includes("%") || dst.includes("%")) return undefined
  if (fs !== fd) {
    if (fs === 4) src = `::ffff:${src}`
    if (fd === 4) dst = `::ffff:${dst}`
  }
  return {
    family: fs === 4 && fd === 4 ? "IPv4" : "IPv6",
    transport: "stream",
    source: { address: src, port: source.port },
    destination: { address: dst, port: destination.port }
  }
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

const utf8 = new TextEncoder()
const utf8Decoder = new TextDecoder("utf-8", { fatal: true })

/** A TLV whose value is the UTF-8 of `text`. */
export const textTlv = (type: number, text: string): Tlv => ({ type, value: utf8.encode(text) })

/** The UTF-8 text of a TLV value, or undefined when it is not valid UTF-8. */
export const tlvText = (value: Uint8Array): string | undefined => {
  try {
    return utf8Decoder.decode(value)
  } catch {
    return undefined
  }
}

const tlvsLength = (tlvs: ReadonlyArray<Tlv>): number => tlvs.reduce((n, t) => n + 3 + t.value.length, 0)

const writeTlvs = (out: Uint8Array, at: number, tlvs: ReadonlyArray<Tlv>): number => {
  for (const t of tlvs) {
    out[at] = t.type
    out[at + 1] = t.value.length >> 8
    out[at + 2] = t.value.length & 0xff
    out.set(t.value, at + 3)
    at += 3 + t.value.length
  }
  return at
}

/** A checked-argument error of the encoders: a caller bug, never a wire condition. */
const invalid = (what: string): never => {
  throw new RangeError(`PROXY protocol: ${what}`)
}

/** The PP2_TYPE_SSL value bytes. */
export const encodeSsl = (ssl: SslInfo): Uint8Array => {
  const out = new Uint8Array(5 + tlvsLength(ssl.tlvs))
  out[0] = ssl.client & 0xff
  new DataView(out.buffer).setUint32(1, ssl.verify >>> 0)
  writeTlvs(out, 5, ssl.tlvs)
  return out
}

const addressLength = (a: Addresses | undefined): number =>
  a === undefined ? 0 : a.family === "IPv4" ? 12 : a.family === "IPv6" ? 36 : 216

const unixPath = (path: string): Uint8Array => {
  const b = utf8.encode(path)
  if (b.length > 108) invalid(`a UNIX socket path is at most 108 bytes, got ${b.length}`)
  return b
}

/** A version 2 header. Throws a `RangeError` on values no header can carry (a caller bug). */
export const encodeV2 = (header: Omit<Header, "version">): Uint8Array => {
  const a = header.command === "local" ? undefined : header.addresses
  const length = addressLength(a) + tlvsLength(header.tlvs)
  if (length > 0xffff) invalid(`a version 2 header carries at most 65535 bytes after its first 16, got ${length}`)
  for (const t of header.tlvs) {
    if (!Number.isInteger(t.type) || t.type < 0 || t.type > 0xff) invalid(`TLV type ${t.type}`)
  }
  const out = new Uint8Array(16 + length)
  out.set(v2Signature, 0)
  out[12] = 0x20 | (header.command === "proxy" ? 0x1 : 0x0)
  const view = new DataView(out.buffer)
  view.setUint16(14, length)
  if (a === undefined) {
    out[13] = 0x00
  } else if (a.family === "unix") {
    out[13] = 0x30 | (a.transport === "stream" ? 0x1 : 0x2)
    out.set(unixPath(a.source), 16)
    out.set(unixPath(a.destination), 16 + 108)
  } else {
    const v4 = a.family === "IPv4"
    out[13] = (v4 ? 0x10 : 0x20) | (a.transport === "stream" ? 0x1 : 0x2)
    const bytes = (s: string) => (v4 ? ipv4Bytes(s) : ipv6Bytes(s)) ?? invalid(`not an ${a.family} address: "${s}"`)
    const size = v4 ? 4 : 16
    out.set(bytes(a.source.address), 16)
    out.set(bytes(a.destination.address), 16 + size)
    for (const p of [a.source.port, a.destination.port]) {
      if (!Number.isInteger(p) || p < 0 || p > 0xffff) invalid(`port ${p}`)
    }
    view.setUint16(16 + 2 * size, a.source.port)
    view.setUint16(16 + 2 * size + 2, a.destination.port)
  }
  writeTlvs(out, 16 + addressLength(a), header.tlvs)
  return out
}

/**
 * A version 1 line. Only TCP over IPv4 or IPv6 can be written as such; `local` and any other
 * address become `PROXY UNKNOWN\r\n` (the receiver then uses the real endpoints). TLVs do not
 * exist in version 1 and are dropped.
 */
export const encodeV1 = (header: Pick<Header, "command" | "addresses">): Uint8Array => {
  const a = header.addresses
  if (header.command === "local" || a === undefined || a.family === "unix" || a.transport !== "stream") {
    return utf8.encode("PROXY UNKNOWN\r\n")
  }
  const check = a.family === "IPv4" ? ipv4Bytes : ipv6Bytes
  for (const s of [a.source.address, a.destination.address]) {
    if (check(s) === undefined) invalid(`not an ${a.family} address: "${s}"`)
  }
  for (const p of [a.source.port, a.destination.port]) {
    if (!Number.isInteger(p) || p < 0 || p > 0xffff) invalid(`port ${p}`)
  }
  return utf8.encode(
    `PROXY ${a.family === "IPv4" ? "TCP4" : "TCP6"} ${a.source.address} ${a.destination.address} ${a.source.port} ${a.destination.port}\r\n`
  )
}

/** A header in its own version. */
export const encode = (header: Header): Uint8Array => (header.version === 1 ? encodeV1(header) : encodeV2(header))

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

const incomplete: Decoded = { _tag: "Incomplete" }
const bad = (detail: string): Decoded => ({ _tag: "Invalid", detail })

/** Splits a TLV area into entries; undefined when one overruns it. */
export const decodeTlvs = (bytes: Uint8Array): ReadonlyArray<Tlv> | undefined => {
  const out: Array<Tlv> = []
  let at = 0
  while (at < bytes.length) {
    if (at + 3 > bytes.length) return undefined
    const length = (bytes[at + 1]! << 8) | bytes[at + 2]!
    if (at + 3 + length > bytes.length) return undefined
    out.push({ type: bytes[at]!, value: bytes.slice(at + 3, at + 3 + length) })
    at += 3 + length
  }
  return out
}

/** The PP2_TYPE_SSL value, or undefined when it is malformed. */
export const decodeSsl = (value: Uint8Array): SslInfo | undefined => {
  if (value.length < 5) return undefined
  const tlvs = decodeTlvs(value.subarray(5))
  if (tlvs === undefined) return undefined
  const verify = new DataView(value.buffer, value.byteOffset, value.byteLength).getUint32(1)
  return { client: value[0]!, verify, tlvs }
}

const startsWith = (bytes: Uint8Array, prefix: Uint8Array): boolean => {
  const n = Math.min(bytes.length, prefix.length)
  for (let i = 0; i < n; i++) if (bytes[i] !== prefix[i]) return false
  return true
}

const v1Prefix = utf8.encode("PROXY ")

/**
 * Reads a header at the start of `bytes` (both versions; the spec lets a receiver tell them
 * apart by their first bytes). See the module header for the three outcomes.
 */
export const decode = (bytes: Uint8Array): Decoded => {
  if (bytes.length === 0) return incomplete
  if (bytes[0] === v2Signature[0]) {
    if (!startsWith(bytes, v2Signature)) return bad("not a PROXY protocol header (bad version 2 signature)")
    return bytes.length < 16 ? incomplete : decodeV2(bytes)
  }
  if (bytes[0] === v1Prefix[0]) {
    if (!startsWith(bytes, v1Prefix)) return bad("not a PROXY protocol header")
    return decodeV1(bytes)
  }
  return bad("not a PROXY protocol header")
}

const decodeV2 = (bytes: Uint8Array): Decoded => {
  const verCmd = bytes[12]!
  if (verCmd >> 4 !== 2) return bad(`version 2 signature with version ${verCmd >> 4}`)
  const cmd = verCmd & 0x0f
  if (cmd > 1) return bad(`unassigned command ${cmd}`)
  const fam = bytes[13]!
  const family = fam >> 4
  const transport = fam & 0x0f
  if (family > 3) return bad(`unassigned address family ${family}`)
  if (transport > 2) return bad(`unassigned transport protocol ${transport}`)
  const length = (bytes[14]! << 8) | bytes[15]!
  if (bytes.length < 16 + length) return incomplete
  const body = bytes.subarray(16, 16 + length)
  // The address block's size follows from the family; the length says where the header ends
  // (the spec: "receivers MUST always consider this field"), and TLVs fill the rest.
  const size = family === 1 ? 12 : family === 2 ? 36 : family === 3 ? 216 : 0
  if (length < size) return bad(`address block of ${length} bytes, family ${family} needs ${size}`)
  const tlvs = decodeTlvs(body.subarray(size))
  if (tlvs === undefined) return bad("a TLV overruns the header")
  const unspecified = family === 0 || transport === 0
  const t = transport === 1 ? "stream" : "dgram"
  let addresses: Addresses | undefined
  if (cmd === 1 && !unspecified) {
    const view = new DataView(body.buffer, body.byteOffset, body.byteLength)
    if (family === 1) {
      addresses = {
        family: "IPv4",
        transport: t,
        source: { address: formatIpv4(body.subarray(0, 4)), port: view.getUint16(8) },
        destination: { address: formatIpv4(body.subarray(4, 8)), port: view.getUint16(10) }
      }
    } else if (family === 2) {
      addresses = {
        family: "IPv6",
        transport: t,
        source: { address: formatIpv6(body.subarray(0, 16)), port: view.getUint16(32) },
        destination: { address: formatIpv6(body.subarray(16, 32)), port: view.getUint16(34) }
      }
    } else {
      const path = (b: Uint8Array) => {
        const end = b.indexOf(0)
        return tlvText(end < 0 ? b : b.subarray(0, end))
      }
      const source = path(body.subarray(0, 108))
      const destination = path(body.subarray(108, 216))
      if (source === undefined || destination === undefined) return bad("a UNIX socket path is not UTF-8")
      addresses = { family: "unix", transport: t, source, destination }
    }
  }
  return {
    _tag: "Complete",
    header: { version: 2, command: cmd === 1 ? "proxy" : "local", addresses, tlvs },
    length: 16 + length
  }
}

const v1Port = /^(?:0|[1-9]\d{0,4})$/

const decodeV1 = (bytes: Uint8Array): Decoded => {
  const limit = Math.min(bytes.length, v1MaxLength)
  let end = -1
  for (let i = 0; i < limit; i++) {
    if (bytes[i] === 0x0a) {
      // A lone LF (or CR) must not end the line.
      if (i === 0 || bytes[i - 1] !== 0x0d) return bad("version 1 line not ended by CRLF")
      end = i + 1
      break
    }
  }
  if (end < 0) {
    return bytes.length >= v1MaxLength ? bad(`version 1 line longer than ${v1MaxLength} bytes`) : incomplete
  }
  let line = ""
  for (let i = 0; i < end - 2; i++) {
    const c = bytes[i]!
    if (c < 0x20 || c > 0x7e) return bad("version 1 line with a byte that is not printable US-ASCII")
    line += String.fromCharCode(c)
  }
  const parts = line.split(" ")
  const local: Decoded = {
    _tag: "Complete",
    header: { version: 1, command: "local", addresses: undefined, tlvs: [] },
    length: end
  }
  // UNKNOWN: "the receiver must ignore anything presented before the CRLF".
  if (parts[1] === "UNKNOWN") return local
  if (parts.length !== 6) return bad("version 1 line: expected PROXY TCP4|TCP6 <src> <dst> <sport> <dport>")
  const [, proto, src, dst, sport, dport] = parts as [string, string, string, string, string, string]
  if (proto !== "TCP4" && proto !== "TCP6") return bad(`version 1 line: unknown protocol "${proto}"`)
  const family = proto === "TCP4" ? "IPv4" : "IPv6"
  const parse = (s: string) => (family === "IPv4" ? ipv4Bytes(s) : ipv6Bytes(s))
  const srcBytes = parse(src)
  const dstBytes = parse(dst)
  if (srcBytes === undefined || dstBytes === undefined) return bad(`version 1 line: not ${family} addresses`)
  const ports = [sport, dport].map((p) => (v1Port.test(p) && Number(p) <= 0xffff ? Number(p) : undefined))
  if (ports[0] === undefined || ports[1] === undefined) return bad("version 1 line: bad port")
  const text = (b: Uint8Array) => (family === "IPv4" ? formatIpv4(b) : formatIpv6(b))
  return {
    _tag: "Complete",
    header: {
      version: 1,
      command: "proxy",
      addresses: {
        family,
        transport: "stream",
        source: { address: text(srcBytes), port: ports[0] },
        destination: { address: text(dstBytes), port: ports[1] }
      },
      tlvs: []
    },
    length: end
  }
}

// ---------------------------------------------------------------------------------------------
// The TLVs Sleeve sends, and their reading
// ---------------------------------------------------------------------------------------------

/** What TLS established about the client, for the TLVs Sleeve sends. */
export interface TlsFacts {
  /** Negotiated protocol, e.g. `TLSv1.3`. */
  readonly version: string | undefined
  /** OpenSSL cipher name, e.g. `TLS_AES_256_GCM_SHA384`. */
  readonly cipher: string | undefined
  /** The negotiated ALPN protocol. */
  readonly alpn: string | undefined
  /** SNI sent by the client. */
  readonly serverName: string | undefined
  /** Whether the client presented a certificate (this connection / this TLS session). */
  readonly certificateOnConnection: boolean
  readonly certificateInSession: boolean
  /** Whether that certificate's chain was verified. */
  readonly verified: boolean
  /** The certificate's Common Name (most specific), when it has one. */
  readonly commonName: string | undefined
  /** The certificate's subject DN in RFC 4514 form. */
  readonly subjectDn: string | undefined
  /** The TLS configuration that authorized the connection. */
  readonly tlsConfig: string
}

/** The TLVs for a TLS-terminated connection, in the order Sleeve writes them. */
export const tlsTlvs = (facts: TlsFacts): ReadonlyArray<Tlv> => {
  const sub: Array<Tlv> = []
  if (facts.version !== undefined) sub.push(textTlv(sslSubtype.version, facts.version))
  if (facts.commonName !== undefined) sub.push(textTlv(sslSubtype.cn, facts.commonName))
  if (facts.cipher !== undefined) sub.push(textTlv(sslSubtype.cipher, facts.cipher))
  const client =
    sslClient.ssl |
    (facts.certificateOnConnection ? sslClient.certConn : 0) |
    (facts.certificateInSession ? sslClient.certSess : 0)
  const presented = facts.certificateOnConnection || facts.certificateInSession
  const out: Array<Tlv> = []
  if (facts.alpn !== undefined) out.push(textTlv(tlvType.alpn, facts.alpn))
  if (facts.serverName !== undefined) out.push(textTlv(tlvType.authority, facts.serverName))
  out.push({
    type: tlvType.ssl,
    value: encodeSsl({ client, verify: presented && facts.verified ? 0 : 1, tlvs: sub })
  })
  if (facts.subjectDn !== undefined) out.push(textTlv(tlvType.subjectDn, facts.subjectDn))
  out.push(textTlv(tlvType.tlsConfig, facts.tlsConfig))
  return out
}

/** The first TLV of `type`, or undefined. */
export const findTlv = (tlvs: ReadonlyArray<Tlv>, type: number): Tlv | undefined => tlvs.find((t) => t.type === type)
