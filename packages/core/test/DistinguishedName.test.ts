import { assert, describe, expect, it } from "@effect/vitest"
import { Option, Result } from "effect"
import * as fc from "fast-check"
import * as Dn from "../src/DistinguishedName.ts"

const parseOk = (s: string): Dn.DistinguishedName => {
  const r = Dn.parse(s)
  if (Result.isFailure(r)) throw new Error(`parse(${JSON.stringify(s)}) failed: ${r.failure.message}`)
  return r.success
}

const parseErr = (s: string): Dn.DnParseError => {
  const r = Dn.parse(s)
  if (Result.isSuccess(r)) throw new Error(`parse(${JSON.stringify(s)}) unexpectedly gave ${JSON.stringify(r.success)}`)
  return r.failure
}

const eq = (a: string, b: string): boolean => Dn.equals(parseOk(a), parseOk(b))

/** Single-AVA value of a one-RDN DN. */
const singleValue = (s: string): string => {
  const dn = parseOk(s)
  expect(dn.rdns).toHaveLength(1)
  expect(dn.rdns[0]).toHaveLength(1)
  return dn.rdns[0]?.[0]?.value ?? ""
}

const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s.replaceAll(" ", ""), "hex"))

describe("parse: structure and attribute types", () => {
  it("splits RDNs on ',' and AVAs on '+', in string order", () => {
    const dn = parseOk("CN=a+OU=b,O=c,C=DE")
    expect(dn.rdns).toEqual([
      [
        { type: "2.5.4.3", value: "a" },
        { type: "2.5.4.11", value: "b" }
      ],
      [{ type: "2.5.4.10", value: "c" }],
      [{ type: "2.5.4.6", value: "DE" }]
    ])
  })

  it("the empty string is the empty DN", () => {
    expect(parseOk("").rdns).toEqual([])
    expect(Dn.format(parseOk(""))).toBe("")
  })

  it("maps every short name in the issue's table to its OID", () => {
    const table: ReadonlyArray<readonly [string, string]> = [
      ["CN", "2.5.4.3"],
      ["L", "2.5.4.7"],
      ["ST", "2.5.4.8"],
      ["O", "2.5.4.10"],
      ["OU", "2.5.4.11"],
      ["C", "2.5.4.6"],
      ["STREET", "2.5.4.9"],
      ["DC", "0.9.2342.19200300.100.1.25"],
      ["UID", "0.9.2342.19200300.100.1.1"],
      ["emailAddress", "1.2.840.113549.1.9.1"],
      ["serialNumber", "2.5.4.5"],
      ["title", "2.5.4.12"],
      ["GN", "2.5.4.42"],
      ["givenName", "2.5.4.42"],
      ["SN", "2.5.4.4"],
      ["surname", "2.5.4.4"],
      ["initials", "2.5.4.43"],
      ["pseudonym", "2.5.4.65"],
      ["generationQualifier", "2.5.4.44"],
      ["dnQualifier", "2.5.4.46"],
      ["businessCategory", "2.5.4.15"],
      ["postalCode", "2.5.4.17"],
      ["organizationIdentifier", "2.5.4.97"]
    ]
    for (const [name, oid] of table) {
      expect(parseOk(`${name}=x`).rdns[0]?.[0]?.type, name).toBe(oid)
      expect(parseOk(`${name.toLowerCase()}=x`).rdns[0]?.[0]?.type, name).toBe(oid)
      expect(Dn.attributeOid(name.toUpperCase())).toBe(oid)
      expect(eq(`${oid}=x`, `${name}=x`), name).toBe(true)
    }
  })

  it("attribute types are case-insensitive and OIDs are aliases: 2.5.4.3=x == CN=x == cn=X", () => {
    expect(eq("2.5.4.3=x", "CN=x")).toBe(true)
    expect(eq("cn=X", "CN=x")).toBe(true)
    expect(eq("commonName=x", "Cn=x")).toBe(true)
    expect(Dn.format(parseOk("cn=X"))).toBe("CN=X")
    expect(Dn.format(parseOk("2.5.4.3=x"))).toBe("CN=x")
  })

  it("attributeShortName gives the name format prints, undefined for unknown OIDs", () => {
    expect(Dn.attributeShortName("2.5.4.3")).toBe("CN")
    expect(Dn.attributeShortName("2.5.4.9")).toBe("street")
    expect(Dn.attributeShortName("1.2.840.113549.1.9.1")).toBe("emailAddress")
    expect(Dn.attributeShortName("0.9.2342.19200300.100.1.1")).toBe("UID")
    expect(Dn.attributeShortName("1.2.3.4")).toBeUndefined()
    expect(Dn.attributeOid("nosuchname")).toBeUndefined()
  })

  it("UID (any case) is userId, never OpenSSL's lower-case uid (uniqueIdentifier)", () => {
    expect(parseOk("uid=alice").rdns[0]?.[0]?.type).toBe("0.9.2342.19200300.100.1.1")
    expect(parseOk("uniqueIdentifier=x").rdns[0]?.[0]?.type).toBe("0.9.2342.19200300.100.1.44")
  })

  it("keeps any dotted OID and prints an unknown one as #DER", () => {
    const dn = parseOk("1.2.3.4=foo")
    expect(dn.rdns[0]?.[0]).toEqual({ type: "1.2.3.4", value: "foo" })
    expect(Dn.format(dn)).toBe("1.2.3.4=#0C03666F6F")
    expect(Dn.equals(parseOk(Dn.format(dn)), dn)).toBe(true)
  })

  it("ignores spaces around separators (RFC 2253-style input)", () => {
    expect(eq(" CN = x , O = y ", "CN=x,O=y")).toBe(true)
    expect(Dn.format(parseOk("CN=x, O=y + OU=z"))).toBe("CN=x,O=y+OU=z")
  })
})

describe("parse: escaping", () => {
  it.each([
    ["CN=a\\,b", "a,b"],
    ["CN=a\\+b", "a+b"],
    ['CN=a\\"b', 'a"b'],
    ["CN=a\\\\b", "a\\b"],
    ["CN=a\\<b", "a<b"],
    ["CN=a\\>b", "a>b"],
    ["CN=a\\;b", "a;b"],
    ["CN=a\\=b", "a=b"],
    ["CN=a=b", "a=b"],
    ["CN=\\#a", "#a"],
    ["CN=a#b", "a#b"],
    ["CN=\\ a", " a"],
    ["CN=a\\ ", "a "],
    ["CN=\\ ", " "],
    ["CN=a\\ b", "a b"],
    ["CN=\\c3\\a9", "é"],
    ["CN=\\C3\\A9t\\C3\\A9", "été"],
    ["CN=\\E6\\97\\A5\\E6\\9C\\AC", "日本"],
    ["CN=\\F0\\9F\\98\\80", "😀"],
    ["CN=\\2C", ","],
    ["CN=\\00", "\u0000"],
    ["CN=é日本", "é日本"],
    ["CN=#", "#"],
    ["CN=", ""]
  ])("%s has the value %j", (input, value) => {
    expect(singleValue(input)).toBe(value)
  })

  it("unescaped leading and trailing spaces are not part of the value; escaped ones are", () => {
    expect(singleValue("CN=  a b  ")).toBe("a b")
    expect(singleValue("CN=\\  a\\  ")).toBe("  a ")
    expect(singleValue("CN=a \\ ")).toBe("a  ")
  })

  it("#hex is the DER of the value: a string type decodes, anything else stays DER", () => {
    expect(parseOk("CN=#0C03666F6F").rdns[0]?.[0]).toEqual({ type: "2.5.4.3", value: "foo" })
    expect(parseOk("CN=#1303666f6f").rdns[0]?.[0]).toEqual({ type: "2.5.4.3", value: "foo" })
    expect(parseOk("CN=#020101").rdns[0]?.[0]).toEqual({ type: "2.5.4.3", value: "#020101", der: "020101" })
    expect(parseOk("1.2.3.4=#0C03666F6F").rdns[0]?.[0]).toEqual({ type: "1.2.3.4", value: "foo", der: "0c03666f6f" })
    // Equal by bytes, and (for a string type) by value.
    expect(eq("CN=#020101", "CN=#020101")).toBe(true)
    expect(eq("CN=#020101", "CN=#020102")).toBe(false)
    expect(eq("CN=#0C03666F6F", "CN=FOO")).toBe(true)
    expect(eq("CN=#020101", "CN=\\#020101")).toBe(false)
  })

  it("the CN=node1\\,O=Trusted trap: an escaped comma never makes a second RDN", () => {
    const trap = parseOk("CN=node1\\,O=Trusted")
    const real = parseOk("CN=node1,O=Trusted")
    expect(trap.rdns).toHaveLength(1)
    expect(real.rdns).toHaveLength(2)
    expect(Dn.equals(trap, real)).toBe(false)
    expect(Dn.equals(parseOk("CN=a\\+O=b"), parseOk("CN=a+O=b"))).toBe(false)
    expect(Dn.format(trap)).toBe("CN=node1\\,O=Trusted")
  })
})

describe("parse: errors carry a position", () => {
  it.each([
    ["CN", 2, "expected '='"],
    ["=x", 0, "expected an attribute type"],
    ["CN=x,", 5, "expected an attribute type"],
    ["CN=x,,O=y", 5, "expected an attribute type"],
    ["CN=x+", 5, "expected an attribute type"],
    ["CN=\\zz", 3, "invalid escape"],
    ["CN=\\", 3, "unterminated escape"],
    ["CN=abc\\", 6, "unterminated escape"],
    ["CN=\\4", 3, "invalid hex escape"],
    ["CN=\\4x", 3, "invalid hex escape"],
    ["CN=\\c3", 3, "not valid UTF-8"],
    ["CN=\\ff\\fe", 3, "not valid UTF-8"],
    ["CN=a;b", 4, "must be escaped"],
    ['CN="quoted"', 3, "must be escaped"],
    ["CN=a<b", 4, "must be escaped"],
    ["CN=a\u0000", 4, "NUL"],
    ["FOO=x", 0, "unknown attribute type 'FOO'"],
    ["1.2.=x", 0, "malformed OID"],
    ["01.2=x", 0, "malformed OID"],
    ["CN=#abc", 3, "even number of hex digits"],
    ["CN=#0C05666F", 3, "one BER/DER element"],
    ["CN=#0C01660000", 3, "one BER/DER element"],
    ["CN=#0C zz", 7, "in a #hex value"],
    ["CN=\ud800", 3, "surrogate"]
  ])("%j fails at %i (%s)", (input, position, message) => {
    const e = parseErr(input)
    expect(e._tag).toBe("DnParseError")
    expect(e.input).toBe(input)
    expect(e.position).toBe(position)
    expect(e.message).toContain(message)
    expect(e.message).toContain(`position ${position}`)
  })
})

describe("format", () => {
  it("escapes like openssl -nameopt RFC2253", () => {
    const dn: Dn.DistinguishedName = {
      rdns: [
        [{ type: "2.5.4.3", value: 'a,b+c"d\\e<f>g;h=i#j' }],
        [{ type: "2.5.4.10", value: "#lead" }],
        [{ type: "2.5.4.11", value: " both " }],
        [{ type: "2.5.4.7", value: "é 日本" }],
        [{ type: "2.5.4.8", value: "tab\there\u007f\u0001" }],
        [{ type: "2.5.4.6", value: "#" }],
        [{ type: "2.5.4.12", value: " " }]
      ]
    }
    expect(Dn.format(dn)).toBe(
      'CN=a\\,b\\+c\\"d\\\\e\\<f\\>g\\;h=i#j,O=\\#lead,OU=\\ both\\ ,L=\\C3\\A9 \\E6\\97\\A5\\E6\\9C\\AC,ST=tab\\09here\\7F\\01,C=#,title=\\ '
    )
  })

  it("formatUnicode keeps non-ASCII characters", () => {
    expect(Dn.formatUnicode(parseOk("CN=\\C3\\A9 \\E6\\97\\A5,O=a\\,b"))).toBe("CN=é 日,O=a\\,b")
    expect(Dn.equals(parseOk(Dn.formatUnicode(parseOk("CN=\\C3\\A9"))), parseOk("CN=é"))).toBe(true)
  })

  it("prints a DER-only value of a known type as #HEX and formatRdn joins with '+'", () => {
    expect(Dn.format(parseOk("CN=#020101"))).toBe("CN=#020101")
    expect(Dn.formatRdn(parseOk("CN=a+OU=b").rdns[0] ?? [])).toBe("CN=a+OU=b")
  })
})

describe("equals: caseIgnoreMatch and RDN structure", () => {
  it.each([
    ["CN=Foo", "CN=foo", true],
    ["CN=foo", "CN=  foo  ", true],
    ["CN=foo bar", "CN=foo   bar", true],
    ["CN=foo bar", "CN=\\ foo bar\\ ", true],
    ["CN=foo\\09bar", "CN=foo bar", true],
    ["CN=ÉTÉ", "CN=été", true],
    ["CN=\\EF\\AC\\81le", "CN=file", true], // NFKC: the ﬁ ligature is "fi"
    ["CN=Ω", "CN=ω", true],
    ["CN=ΟΔΟΣ", "CN=οδοσ", true],
    ["CN=foobar", "CN=foo bar", false],
    ["CN=foo", "CN=fo", false],
    ["CN=admın", "CN=admin", false], // dotless i is not i
    ["CN=a\\00", "CN=a", false], // control characters stay significant
    ["CN=a,O=b", "O=b,CN=a", false], // RDN order is significant
    ["CN=a+O=b", "O=b+CN=a", true], // AVAs in an RDN are a set
    ["CN=a+O=b", "CN=a,O=b", false],
    ["CN=a+CN=a", "CN=a", false],
    ["CN=a", "OU=a", false],
    ["1.2.3.4=Foo", "1.2.3.4=foo", false], // unknown types: exact strings
    ["1.2.3.4=foo", "1.2.3.4=#0C03666F6F", true],
    ["1.2.3.4=foo", "1.2.3.4=#1303666F6F", true],
    ["CN=\\EE\\80\\80A", "CN=\\EE\\80\\80a", false] // prohibited (private use): exact
  ])("%s vs %s: %s", (a, b, expected) => {
    expect(eq(a, b)).toBe(expected)
    expect(eq(b, a)).toBe(expected)
    expect(Dn.toKey(parseOk(a)) === Dn.toKey(parseOk(b))).toBe(expected)
  })

  it("normalizeCaseIgnore trims, collapses and folds", () => {
    expect(Dn.normalizeCaseIgnore("  Hello \u00a0  World\n")).toBe("hello world")
    expect(Dn.normalizeCaseIgnore("Straße")).toBe("straße")
    expect(Dn.normalizeCaseIgnore("a\uE000")).toBeUndefined()
    expect(Dn.normalizeCaseIgnore("a\uFFFD")).toBeUndefined()
  })
})

describe("decodeDer / fromDer", () => {
  // Tiny DER builders (all lengths here are below 128).
  const tlv = (tag: number, body: ReadonlyArray<number>) => [tag, body.length, ...body]
  const ava = (oidHex: string, valueHex: string) => tlv(0x30, [...tlv(0x06, [...hex(oidHex)]), ...hex(valueHex)])
  const rdn = (...avas: ReadonlyArray<ReadonlyArray<number>>) => tlv(0x31, avas.flat())
  const name = (...rdns: ReadonlyArray<ReadonlyArray<number>>) => Uint8Array.from(tlv(0x30, rdns.flat()))

  it("decodes string types and reverses DER order into string order", () => {
    const der = name(
      rdn(ava("550406", "13 02 44 45")),
      rdn(ava("55040a", "0c 02 c3 a9"), ava("55040b", "1e 02 65 e5")),
      rdn(ava("550403", "14 01 e9"))
    )
    const r = Dn.decodeDer(der)
    assert(Result.isSuccess(r), Result.isFailure(r) ? r.failure.message : "")
    expect(r.success.rdns).toEqual([
      [{ type: "2.5.4.3", value: "é" }],
      [
        { type: "2.5.4.11", value: "日" },
        { type: "2.5.4.10", value: "é" }
      ],
      [{ type: "2.5.4.6", value: "DE" }]
    ])
    expect(Dn.format(r.success)).toBe("CN=\\C3\\A9,OU=\\E6\\97\\A5+O=\\C3\\A9,C=DE")
  })

  it("decodes UniversalString, IA5String and keeps unknown OIDs and non-string values as DER", () => {
    const der = name(
      rdn(ava("550403", "1c 08 00 00 00 e9 00 01 f6 00")),
      rdn(ava("2a03", "0c 01 78")),
      rdn(ava("550403", "02 01 05")),
      rdn(ava("2a864886f70d010901", "16 03 61 40 62"))
    )
    const dn = Dn.fromDer(der)
    expect(dn.rdns).toEqual([
      [{ type: "1.2.840.113549.1.9.1", value: "a@b" }],
      [{ type: "2.5.4.3", value: "#020105", der: "020105" }],
      [{ type: "1.2.3", value: "x", der: "0c0178" }],
      [{ type: "2.5.4.3", value: "é\u{1f600}" }]
    ])
    expect(Dn.format(dn)).toBe("emailAddress=a@b,CN=#020105,1.2.3=#0C0178,CN=\\C3\\A9\\F0\\9F\\98\\80")
    expect(Dn.equals(parseOk(Dn.format(dn)), dn)).toBe(true)
  })

  it("keeps undecodable string encodings as DER (bad UTF-8, odd BMP length, surrogates)", () => {
    const dn = Dn.fromDer(
      name(rdn(ava("550403", "0c 01 ff")), rdn(ava("550403", "1e 03 00 41 00")), rdn(ava("550403", "1e 02 d8 00")))
    )
    expect(dn.rdns.map((r) => r[0]?.der)).toEqual(["1e02d800", "1e03004100", "0c01ff"])
  })

  it("decodes large OID arcs exactly", () => {
    // 2.25.329800735698586629295641978511506172918 (a UUID OID)
    const arc = 329800735698586629295641978511506172918n
    const bytes: Array<number> = []
    for (let v = arc; v > 0n; v >>= 7n) bytes.unshift(Number(v & 0x7fn) | (bytes.length === 0 ? 0 : 0x80))
    const oid = [0x69, ...bytes]
    const avaBody = [0x06, oid.length, ...oid, 0x0c, 0x01, 0x78]
    const der = Uint8Array.from([0x30, avaBody.length + 4, 0x31, avaBody.length + 2, 0x30, avaBody.length, ...avaBody])
    expect(Dn.fromDer(der).rdns[0]?.[0]?.type).toBe(`2.25.${arc}`)
  })

  it.each([
    ["", "unexpected end"],
    ["3100", "must be a SEQUENCE"],
    ["3000 00", "trailing bytes"],
    ["3002 3100", "must not be empty"],
    ["3080 0000", "indefinite length"],
    ["3081 00", "non-minimal length"],
    ["3005 3103 3001 06", "unexpected end"],
    ["300a 3108 3006 0c01 78 0c01 78".replace(/ /g, ""), "OBJECT IDENTIFIER"],
    ["3009 3107 3005 0603 550403", "unexpected end"],
    ["300c 310a 3008 0603 550403 0c01", "runs past"],
    ["3004 3102 0400", "AttributeTypeAndValue must be a SEQUENCE"]
  ])("rejects %s (%s)", (input, message) => {
    const r = Dn.decodeDer(hex(input))
    assert(Result.isFailure(r))
    expect(r.failure._tag).toBe("DnDecodeError")
    expect(r.failure.message).toContain(message)
    expect(() => Dn.fromDer(hex(input))).toThrow()
  })

  it("decodeCertificateNames finds issuer and subject with and without the [0] version", () => {
    const issuer = name(rdn(ava("55040a", "0c 02 43 41")))
    const subject = name(rdn(ava("550403", "0c 04 6c 65 61 66")))
    const alg = tlv(0x30, [...hex("06 08 2a 86 48 ce 3d 04 03 02")])
    const validity = tlv(0x30, [
      ...tlv(0x17, [...Buffer.from("250101000000Z")]),
      ...tlv(0x17, [...Buffer.from("350101000000Z")])
    ])
    const spki = tlv(0x30, [])
    const cert = (version: ReadonlyArray<number>) =>
      Uint8Array.from(
        tlv(0x30, [
          ...tlv(0x30, [...version, ...tlv(0x02, [1]), ...alg, ...issuer, ...validity, ...subject, ...spki]),
          ...alg
        ])
      )
    for (const c of [cert(tlv(0xa0, tlv(0x02, [2]))), cert([])]) {
      const r = Dn.decodeCertificateNames(c)
      assert(Result.isSuccess(r), Result.isFailure(r) ? r.failure.message : "")
      expect(Dn.format(r.success.issuer)).toBe("O=CA")
      expect(Dn.format(r.success.subject)).toBe("CN=leaf")
      expect(Buffer.from(r.success.subjectDer).equals(Buffer.from(subject))).toBe(true)
    }
    const truncated = Dn.decodeCertificateNames(Uint8Array.from(tlv(0x30, tlv(0x30, [...tlv(0x02, [1]), ...alg]))))
    assert(Result.isFailure(truncated))
    expect(truncated.failure.message).toContain("missing fields")
  })

  it("the empty Name is the empty DN", () => {
    expect(Dn.fromDer(hex("3000")).rdns).toEqual([])
  })
})

describe("diff and nearest", () => {
  it("diff is empty for equal DNs and names the differing RDN", () => {
    expect(Dn.diff(parseOk("CN=a,O=b"), parseOk("cn=A,o=B"))).toEqual([])
    const d = Dn.diff(parseOk("CN=node1,O=Acme,C=DE"), parseOk("CN=node2,O=Acme,C=DE"))
    expect(d).toHaveLength(1)
    expect(d[0]?.index).toBe(0)
    expect(Dn.formatRdn(d[0]?.expected ?? [])).toBe("CN=node1")
    expect(Dn.formatRdn(d[0]?.actual ?? [])).toBe("CN=node2")
  })

  it("a missing or extra RDN is one difference, not a shift", () => {
    const missing = Dn.diff(parseOk("CN=a,OU=x,O=b"), parseOk("CN=a,O=b"))
    expect(missing).toEqual([{ index: 1, expected: [{ type: "2.5.4.11", value: "x" }], actual: undefined }])
    const extra = Dn.diff(parseOk("CN=a,O=b"), parseOk("CN=a,OU=x,O=b"))
    expect(extra).toEqual([{ index: 1, expected: undefined, actual: [{ type: "2.5.4.11", value: "x" }] }])
    expect(Dn.distance(parseOk("CN=a,O=b"), parseOk("CN=a,OU=x,O=b"))).toBe(1)
  })

  it("nearest picks the closest candidate, preferring a value change over a structural one", () => {
    const actual = parseOk("CN=node2,O=Acme,C=DE")
    const candidates = ["CN=x,OU=y,O=Other", "CN=node1,O=Acme,C=DE", "CN=node2,OU=ops,O=Acme,C=DE", "O=Acme,C=DE"].map(
      parseOk
    )
    const n = Dn.nearest(actual, candidates)
    assert(Option.isSome(n))
    expect(n.value.index).toBe(1)
    expect(n.value.distance).toBe(0.5)
    expect(n.value.differences).toHaveLength(1)
    expect(Option.isNone(Dn.nearest(actual, []))).toBe(true)
    const exact = Dn.nearest(actual, [...candidates, parseOk("cn=NODE2,o=acme,c=de")])
    assert(Option.isSome(exact))
    expect(exact.value.index).toBe(4)
    expect(exact.value.distance).toBe(0)
  })
})

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

const knownTypes = [
  "2.5.4.3",
  "2.5.4.7",
  "2.5.4.8",
  "2.5.4.10",
  "2.5.4.11",
  "2.5.4.6",
  "2.5.4.9",
  "0.9.2342.19200300.100.1.25",
  "0.9.2342.19200300.100.1.1",
  "1.2.840.113549.1.9.1",
  "2.5.4.5",
  "2.5.4.12",
  "2.5.4.42",
  "2.5.4.4",
  "2.5.4.43",
  "2.5.4.65",
  "2.5.4.44",
  "2.5.4.46",
  "2.5.4.15",
  "2.5.4.17",
  "2.5.4.97",
  "0.9.2342.19200300.100.1.44"
]
const unknownType = fc
  .tuple(
    fc.constantFrom(0, 1, 2),
    fc.nat({ max: 39 }),
    fc.array(fc.bigInt({ min: 0n, max: 1n << 70n }), { maxLength: 4 })
  )
  .map(([a, b, rest]) => [a, b, ...rest].join("."))
  .filter((oid) => Dn.attributeShortName(oid) === undefined)

const specialChars = fc.constantFrom(
  ",",
  "+",
  '"',
  "\\",
  "<",
  ">",
  ";",
  "=",
  "#",
  " ",
  "é",
  "日",
  "😀",
  "\u0000",
  "\u007f",
  "\t"
)
const valueArb = fc
  .array(fc.oneof(fc.string({ unit: "grapheme", maxLength: 3 }), specialChars), { maxLength: 8 })
  .map((parts) => parts.join(""))
const avaArb: fc.Arbitrary<Dn.AttributeTypeAndValue> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ type: fc.constantFrom(...knownTypes), value: valueArb }) },
  { weight: 1, arbitrary: fc.record({ type: unknownType, value: valueArb }) }
)
const dnArb: fc.Arbitrary<Dn.DistinguishedName> = fc
  .array(fc.array(avaArb, { minLength: 1, maxLength: 3 }), { maxLength: 5 })
  .map((rdns) => ({ rdns }))

/** A variant of a DN that must compare equal: other case, other names, extra insignificant spaces, shuffled AVAs. */
const variantArb = (dn: Dn.DistinguishedName): fc.Arbitrary<Dn.DistinguishedName> =>
  fc
    .array(fc.tuple(fc.boolean(), fc.boolean(), fc.nat()), {
      minLength: dn.rdns.length,
      maxLength: dn.rdns.length
    })
    .map((choices) => ({
      rdns: dn.rdns.map((rdn, i) => {
        const [upper, pad, rot] = choices[i] ?? [false, false, 0]
        const avas = rdn.map((ava) => {
          if (Dn.attributeShortName(ava.type) === undefined) return ava
          const prepared = Dn.normalizeCaseIgnore(ava.value)
          // Values with prohibited code points are compared exactly: leave them alone.
          if (prepared === undefined) return ava
          const cased = upper ? ava.value.toUpperCase() : ava.value.toLowerCase()
          // Only use the case variant when it really is equivalent (toUpperCase may expand).
          const value = Dn.normalizeCaseIgnore(cased) === prepared ? cased : ava.value
          return { type: ava.type, value: pad ? `  ${value.replace(/ /g, "   ")} ` : value }
        })
        const k = rot % Math.max(1, avas.length)
        return [...avas.slice(k), ...avas.slice(0, k)]
      })
    }))

describe("properties", () => {
  it("parse(format(dn)) equals dn, and format is a fixed point after one round", () => {
    fc.assert(
      fc.property(dnArb, (dn) => {
        const printed = Dn.format(dn)
        const back = Dn.parse(printed)
        if (Result.isFailure(back)) throw new Error(`${printed}: ${back.failure.message}`)
        expect(Dn.equals(back.success, dn)).toBe(true)
        expect(Dn.format(back.success)).toBe(printed)
        const unicode = Dn.parse(Dn.formatUnicode(dn))
        assert(Result.isSuccess(unicode))
        expect(Dn.equals(unicode.success, dn)).toBe(true)
      }),
      { numRuns: 500 }
    )
  })

  it("equals is reflexive, symmetric and transitive on normalization variants", () => {
    fc.assert(
      fc.property(
        dnArb.chain((dn) => fc.tuple(fc.constant(dn), variantArb(dn), variantArb(dn))),
        ([a, b, c]) => {
          expect(Dn.equals(a, a)).toBe(true)
          expect(Dn.equals(a, b)).toBe(true)
          expect(Dn.equals(b, a)).toBe(true)
          expect(Dn.equals(b, c)).toBe(true)
          expect(Dn.equals(a, c)).toBe(true)
        }
      ),
      { numRuns: 300 }
    )
  })

  it("equality is symmetric and agrees with toKey on arbitrary pairs", () => {
    fc.assert(
      fc.property(dnArb, dnArb, (a, b) => {
        expect(Dn.equals(a, b)).toBe(Dn.equals(b, a))
        expect(Dn.equals(a, b)).toBe(Dn.toKey(a) === Dn.toKey(b))
        expect(Dn.distance(a, b) === 0).toBe(Dn.equals(a, b))
      }),
      { numRuns: 300 }
    )
  })

  it("adding, removing or changing one RDN is never equal", () => {
    fc.assert(
      fc.property(dnArb, avaArb, (dn, ava) => {
        expect(Dn.equals(dn, { rdns: [...dn.rdns, [ava]] })).toBe(false)
        expect(Dn.equals(dn, { rdns: [[ava], ...dn.rdns] })).toBe(false)
      })
    )
  })

  it("parse never throws on arbitrary input", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary", maxLength: 40 }), (s) => {
        const r = Dn.parse(s)
        if (Result.isFailure(r)) expect(r.failure.position).toBeGreaterThanOrEqual(0)
      }),
      { numRuns: 1000 }
    )
  })

  it("decodeDer never throws on arbitrary bytes", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        Dn.decodeDer(Uint8Array.from([0x30, bytes.length < 128 ? bytes.length : 0, ...bytes]))
        Dn.decodeDer(bytes)
      }),
      { numRuns: 1000 }
    )
  })
})
