/**
 * The PROXY protocol codec: golden bytes written out by hand from HAProxy's proxy-protocol.txt,
 * the refusals the spec demands, and fast-check properties (every header round-trips, every
 * strict prefix of one is `Incomplete`, trailing application bytes are never eaten, IPv6 text
 * matches what Node's own `inet_ntop` prints).
 */
import { assert, describe, it } from "@effect/vitest"
import * as fc from "fast-check"
import * as Net from "node:net"
import * as PP from "../src/ProxyProtocol.ts"

const hex = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ""), "hex"))
const ascii = (s: string) => Uint8Array.from(Buffer.from(s, "latin1"))
const complete = (d: PP.Decoded) => {
  if (d._tag !== "Complete") assert.fail(`expected Complete, got ${JSON.stringify(d)}`)
  return d
}
const invalidDetail = (d: PP.Decoded) => {
  if (d._tag !== "Invalid") assert.fail(`expected Invalid, got ${JSON.stringify(d)}`)
  return d.detail
}

describe("version 2, golden bytes", () => {
  const addresses: PP.Addresses = {
    family: "IPv4",
    transport: "stream",
    source: { address: "192.168.0.1", port: 56324 },
    destination: { address: "192.168.0.11", port: 443 }
  }
  // signature, ver/cmd 0x21 (v2 PROXY), fam 0x11 (TCP over IPv4), length 12 + (3 + 9) + (3 + 3) = 0x1e
  const golden = hex(`
    0d0a0d0a000d0a515549540a 21 11 001e
    c0a80001 c0a8000b dc04 01bb
    02 0009 6c6f63616c686f7374
    e0 0003 434e3d`)

  it("encodes TCP over IPv4 with TLVs byte for byte as the spec lays them out", () => {
    const bytes = PP.encodeV2({
      command: "proxy",
      addresses,
      tlvs: [PP.textTlv(PP.tlvType.authority, "localhost"), PP.textTlv(PP.tlvType.subjectDn, "CN=")]
    })
    assert.deepStrictEqual(Buffer.from(bytes).toString("hex"), Buffer.from(golden).toString("hex"))
  })

  it("decodes it back, and leaves the application bytes after it alone", () => {
    const d = complete(PP.decode(new Uint8Array([...golden, ...ascii("GET / HTTP/1.1\r\n")])))
    assert.strictEqual(d.length, golden.length)
    assert.deepStrictEqual(d.header.addresses, addresses)
    assert.strictEqual(d.header.command, "proxy")
    assert.deepStrictEqual(
      d.header.tlvs.map((t) => [t.type, PP.tlvText(t.value)]),
      [
        [0x02, "localhost"],
        [0xe0, "CN="]
      ]
    )
  })

  it("encodes TCP over IPv6 (fam 0x21, 36 address bytes)", () => {
    const bytes = PP.encodeV2({
      command: "proxy",
      addresses: {
        family: "IPv6",
        transport: "stream",
        source: { address: "2001:db8::1", port: 1 },
        destination: { address: "::ffff:10.0.0.1", port: 2 }
      },
      tlvs: []
    })
    assert.strictEqual(
      Buffer.from(bytes).toString("hex"),
      "0d0a0d0a000d0a515549540a" +
        "21" +
        "21" +
        "0024" +
        "20010db8000000000000000000000001" +
        "00000000000000000000ffff0a000001" +
        "0001" +
        "0002"
    )
  })

  it("LOCAL carries no address (ver/cmd 0x20, fam 0x00, length 0)", () => {
    const bytes = PP.encodeV2({ command: "local", addresses: undefined, tlvs: [] })
    assert.strictEqual(Buffer.from(bytes).toString("hex"), "0d0a0d0a000d0a515549540a20000000")
    assert.deepStrictEqual(complete(PP.decode(bytes)).header, {
      version: 2,
      command: "local",
      addresses: undefined,
      tlvs: []
    })
  })

  it("LOCAL with an address block: the length is honoured and the addresses are ignored", () => {
    const bytes = hex("0d0a0d0a000d0a515549540a 20 11 000c 7f000001 7f000001 0001 0002 ff")
    const d = complete(PP.decode(bytes))
    assert.strictEqual(d.length, 28)
    assert.strictEqual(d.header.command, "local")
    assert.strictEqual(d.header.addresses, undefined)
  })

  it("PP2_TYPE_SSL: client flags, 32-bit verify and sub-TLVs", () => {
    const value = PP.encodeSsl({
      client: PP.sslClient.ssl | PP.sslClient.certConn | PP.sslClient.certSess,
      verify: 0,
      tlvs: [PP.textTlv(PP.sslSubtype.version, "TLSv1.3")]
    })
    assert.strictEqual(Buffer.from(value).toString("hex"), `0700000000210007${Buffer.from("TLSv1.3").toString("hex")}`)
    assert.deepStrictEqual(PP.decodeSsl(value), {
      client: 7,
      verify: 0,
      tlvs: [{ type: 0x21, value: ascii("TLSv1.3") }]
    })
    assert.strictEqual(PP.decodeSsl(value.subarray(0, 4)), undefined)
    assert.strictEqual(PP.decodeSsl(value.subarray(0, value.length - 1)), undefined)
  })

  it("tlsTlvs: ALPN, authority, SSL (verify 0 only for a verified certificate), DN, configuration", () => {
    const tlvs = PP.tlsTlvs({
      version: "TLSv1.3",
      cipher: "TLS_AES_256_GCM_SHA384",
      alpn: "h2",
      serverName: "app.example",
      certificateOnConnection: true,
      certificateInSession: true,
      verified: true,
      commonName: "client",
      subjectDn: "CN=client,O=Sleeve Test",
      tlsConfig: "front"
    })
    assert.deepStrictEqual(
      tlvs.map((t) => t.type),
      [0x01, 0x02, 0x20, 0xe0, 0xe1]
    )
    const ssl = PP.decodeSsl(PP.findTlv(tlvs, PP.tlvType.ssl)!.value)!
    assert.strictEqual(ssl.client, 0x07)
    assert.strictEqual(ssl.verify, 0)
    assert.deepStrictEqual(
      ssl.tlvs.map((t) => [t.type, PP.tlvText(t.value)]),
      [
        [0x21, "TLSv1.3"],
        [0x22, "client"],
        [0x23, "TLS_AES_256_GCM_SHA384"]
      ]
    )
    const anonymous = PP.tlsTlvs({
      version: "TLSv1.2",
      cipher: undefined,
      alpn: undefined,
      serverName: undefined,
      certificateOnConnection: false,
      certificateInSession: false,
      verified: false,
      commonName: undefined,
      subjectDn: undefined,
      tlsConfig: "x"
    })
    assert.deepStrictEqual(
      anonymous.map((t) => t.type),
      [0x20, 0xe1]
    )
    const anonymousSsl = PP.decodeSsl(anonymous[0]!.value)!
    assert.strictEqual(anonymousSsl.client, PP.sslClient.ssl)
    assert.notStrictEqual(anonymousSsl.verify, 0)
  })
})

describe("version 2, refusals", () => {
  const sig = "0d0a0d0a000d0a515549540a"
  it("a bad signature byte", () => {
    assert.match(invalidDetail(PP.decode(hex("0d0a0d0a000d0a515549540b21110000"))), /signature/)
  })
  it("a version other than 2", () => {
    assert.match(invalidDetail(PP.decode(hex(`${sig}31110000`))), /version 3/)
  })
  it("an unassigned command", () => {
    assert.match(invalidDetail(PP.decode(hex(`${sig}22110000`))), /command 2/)
  })
  it("an unassigned family or transport", () => {
    assert.match(invalidDetail(PP.decode(hex(`${sig}21410000`))), /family 4/)
    assert.match(invalidDetail(PP.decode(hex(`${sig}21130000`))), /transport/)
  })
  it("an address block shorter than its family needs", () => {
    assert.match(invalidDetail(PP.decode(hex(`${sig}2111000b${"00".repeat(11)}`))), /needs 12/)
  })
  it("a TLV that overruns the header", () => {
    assert.match(invalidDetail(PP.decode(hex(`${sig}2111000f${"00".repeat(12)}020005`))), /overruns/)
  })
  it("the encoder refuses what no header can carry", () => {
    assert.throws(
      () =>
        PP.encodeV2({ command: "proxy", addresses: undefined, tlvs: [{ type: 0xe0, value: new Uint8Array(0xffff) }] }),
      RangeError
    )
    assert.throws(
      () =>
        PP.encodeV2({
          command: "proxy",
          addresses: {
            family: "IPv4",
            transport: "stream",
            source: { address: "::1", port: 1 },
            destination: { address: "127.0.0.1", port: 1 }
          },
          tlvs: []
        }),
      RangeError
    )
  })
})

describe("version 1", () => {
  it("encodes the spec's example line", () => {
    const bytes = PP.encodeV1({
      command: "proxy",
      addresses: {
        family: "IPv4",
        transport: "stream",
        source: { address: "192.168.0.1", port: 56324 },
        destination: { address: "192.168.0.11", port: 443 }
      }
    })
    assert.strictEqual(Buffer.from(bytes).toString("latin1"), "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n")
  })

  it("decodes TCP6 and stops at the CRLF", () => {
    const d = complete(PP.decode(ascii("PROXY TCP6 2001:DB8::0:1 ::1 65535 0\r\nHELO x\r\n")))
    assert.strictEqual(d.length, "PROXY TCP6 2001:DB8::0:1 ::1 65535 0\r\n".length)
    assert.deepStrictEqual(d.header.addresses, {
      family: "IPv6",
      transport: "stream",
      source: { address: "2001:db8::1", port: 65535 },
      destination: { address: "::1", port: 0 }
    })
  })

  it("UNKNOWN, with or without addresses, is local", () => {
    for (const line of ["PROXY UNKNOWN\r\n", "PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n"]) {
      const d = complete(PP.decode(ascii(line)))
      assert.strictEqual(d.header.command, "local")
      assert.strictEqual(d.length, line.length)
    }
    assert.strictEqual(
      Buffer.from(PP.encodeV1({ command: "local", addresses: undefined })).toString(),
      "PROXY UNKNOWN\r\n"
    )
  })

  it("refuses what does not match exactly", () => {
    const cases: ReadonlyArray<readonly [string, RegExp]> = [
      ["PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", /CRLF/],
      ["PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", /not IPv4/],
      ["PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", /bad port/],
      ["PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", /bad port/],
      ["PROXY TCP4 ::1 ::1 1 2\r\n", /not IPv4/],
      ["PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", /expected/],
      ["PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", /unknown protocol/],
      ["PROXZ TCP4 1.2.3.4 5.6.7.8 1 2\r\n", /not a PROXY/],
      ["GET / HTTP/1.1\r\n", /not a PROXY/],
      [`PROXY UNKNOWN ${"x".repeat(120)}\r\n`, /longer than 107/]
    ]
    for (const [line, rule] of cases) assert.match(invalidDetail(PP.decode(ascii(line))), rule, line)
  })

  it("waits for the CRLF, but no further than 107 bytes", () => {
    assert.strictEqual(PP.decode(ascii("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"))._tag, "Incomplete")
    assert.strictEqual(PP.decode(ascii("PROX"))._tag, "Incomplete")
    assert.strictEqual(PP.decode(ascii(`PROXY UNKNOWN ${"x".repeat(91)}`))._tag, "Incomplete")
    assert.strictEqual(PP.decode(ascii(`PROXY UNKNOWN ${"x".repeat(93)}`))._tag, "Invalid")
  })
})

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

const ipv4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((b) => b.join("."))
const ipv6 = fc
  .uint8Array({ minLength: 16, maxLength: 16 })
  .chain((b) =>
    fc.constantFrom(
      b,
      // runs of zero groups and mapped addresses, where the text form is tricky
      Uint8Array.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b[0]!, b[1]!, b[2]!, b[3]!]),
      Uint8Array.from([b[0]!, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b[1]!]),
      Uint8Array.from([0, 1, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, b[0]!])
    )
  )
  .map(PP.formatIpv6)
const port = fc.nat(0xffff)
const endpoint = (address: fc.Arbitrary<string>) => fc.record({ address, port })
const transport = fc.constantFrom("stream" as const, "dgram" as const)
const inet: fc.Arbitrary<PP.Addresses> = fc.oneof(
  fc.record({
    family: fc.constant("IPv4" as const),
    transport,
    source: endpoint(ipv4),
    destination: endpoint(ipv4)
  }),
  fc.record({
    family: fc.constant("IPv6" as const),
    transport,
    source: endpoint(ipv6),
    destination: endpoint(ipv6)
  })
)
const path = fc.string({ maxLength: 40 }).filter((s) => !s.includes("\u0000") && Buffer.byteLength(s) <= 108)
const unix: fc.Arbitrary<PP.Addresses> = fc.record({
  family: fc.constant("unix" as const),
  transport,
  source: path,
  destination: path
})
const tlv: fc.Arbitrary<PP.Tlv> = fc.record({ type: fc.nat(255), value: fc.uint8Array({ maxLength: 64 }) })
const v2Header: fc.Arbitrary<PP.Header> = fc.oneof(
  fc.record({
    version: fc.constant(2 as const),
    command: fc.constant("proxy" as const),
    addresses: fc.oneof(inet, unix),
    tlvs: fc.array(tlv, { maxLength: 6 })
  }),
  fc.record({
    version: fc.constant(2 as const),
    command: fc.constant("local" as const),
    addresses: fc.constant(undefined),
    tlvs: fc.array(tlv, { maxLength: 3 })
  })
)
const v1Header: fc.Arbitrary<PP.Header> = inet
  .map((a): PP.Addresses => ({ ...a, transport: "stream" }))
  .map((addresses) => ({ version: 1 as const, command: "proxy" as const, addresses, tlvs: [] }))
const header = fc.oneof(v2Header, v1Header)

describe("properties", () => {
  it("every header round-trips, and bytes after it are left for the application", () => {
    fc.assert(
      fc.property(header, fc.uint8Array({ maxLength: 32 }), (h, rest) => {
        const bytes = PP.encode(h)
        const d = complete(PP.decode(new Uint8Array([...bytes, ...rest])))
        assert.deepStrictEqual(d.header, h)
        assert.strictEqual(d.length, bytes.length)
        assert.isAtMost(bytes.length, h.version === 1 ? PP.v1MaxLength : PP.v2MaxLength)
      }),
      { numRuns: 500 }
    )
  })

  it("every strict prefix of a header is Incomplete (a header split across reads is waited for)", () => {
    fc.assert(
      fc.property(header, (h) => {
        const bytes = PP.encode(h)
        for (let n = 0; n < bytes.length; n++) assert.strictEqual(PP.decode(bytes.subarray(0, n))._tag, "Incomplete")
      }),
      { numRuns: 200 }
    )
  })

  it("arbitrary bytes never throw, and a Complete never claims more than was given", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 300 }),
          fc.uint8Array({ maxLength: 300 }).map((b) => new Uint8Array([...PP.v2Signature, 0x21, ...b])),
          fc.string({ maxLength: 120 }).map((s) => ascii(`PROXY ${s}`))
        ),
        (bytes) => {
          const d = PP.decode(bytes)
          if (d._tag === "Complete") assert.isAtMost(d.length, bytes.length)
        }
      ),
      { numRuns: 2000 }
    )
  })

  it("IPv6 text is what Node prints (inet_ntop), and parses back to the same bytes", () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), ipv6, (raw, text) => {
        for (const b of [raw, PP.ipv6Bytes(text)!]) {
          const mine = PP.formatIpv6(b)
          assert.strictEqual(mine, new Net.SocketAddress({ address: mine, family: "ipv6" }).address)
          assert.deepStrictEqual(PP.ipv6Bytes(mine), b)
        }
      }),
      { numRuns: 1000 }
    )
  })
})

describe("tcpAddresses", () => {
  it("unmaps IPv4-mapped ends, and maps IPv4 into IPv6 when the families differ", () => {
    assert.deepStrictEqual(
      PP.tcpAddresses({ address: "::ffff:127.0.0.1", port: 1 }, { address: "::ffff:127.0.0.2", port: 2 }),
      {
        family: "IPv4",
        transport: "stream",
        source: { address: "127.0.0.1", port: 1 },
        destination: { address: "127.0.0.2", port: 2 }
      }
    )
    assert.deepStrictEqual(PP.tcpAddresses({ address: "10.0.0.1", port: 1 }, { address: "::1", port: 2 })?.source, {
      address: "::ffff:10.0.0.1",
      port: 1
    })
    assert.strictEqual(PP.tcpAddresses({ address: "", port: 1 }, { address: "::1", port: 2 }), undefined)
  })
})
