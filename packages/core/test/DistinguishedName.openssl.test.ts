/**
 * openssl as the oracle: `format(fromDer(subject))` must equal
 * `openssl x509 -noout -subject -nameopt RFC2253` byte for byte, and parsing openssl's output
 * must give back an equal DN. Certificates are made during the run in a temp dir: with
 * `openssl req -x509 -subj ...` for DNs an operator would write, and (for string encodings
 * `openssl req` will not produce: BMPString, TeletexString, UniversalString, unknown OIDs)
 * assembled here around a hand-built subject `Name`; openssl prints it without checking the
 * dummy signature.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Result } from "effect"
import * as fc from "fast-check"
import { execFileSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as Dn from "../src/DistinguishedName.ts"
import { x509 } from "../src/internal/x509.ts"

let dir = ""
let spki = new Uint8Array()
let counter = 0

const openssl = (args: ReadonlyArray<string>, env?: Record<string, string>): string =>
  execFileSync("openssl", args, {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, ...env }
  })

const subjectOf = (certPath: string, inform: "PEM" | "DER"): string => {
  const out = openssl(["x509", "-inform", inform, "-in", certPath, "-noout", "-subject", "-nameopt", "RFC2253"])
  expect(out.startsWith("subject=")).toBe(true)
  return out.slice("subject=".length).replace(/\n$/, "")
}

const bytesOf = (b: ArrayBuffer | Uint8Array): Uint8Array => (b instanceof Uint8Array ? b : new Uint8Array(b))

const contains = (haystack: Uint8Array, needle: Uint8Array): boolean =>
  Buffer.from(haystack).indexOf(Buffer.from(needle)) >= 0

const parseOk = (s: string): Dn.DistinguishedName => {
  const r = Dn.parse(s)
  if (Result.isFailure(r)) throw new Error(`parse(${JSON.stringify(s)}) failed: ${r.failure.message}`)
  return r.success
}

/**
 * The subject `Name` DER of a certificate: @peculiar/x509 turns PEM into DER (`rawData`), and
 * `decodeCertificateNames` takes the subject's own bytes out of the TBSCertificate. (Not
 * `subjectName.toArrayBuffer()`: that re-encodes, and corrupts UniversalString characters
 * outside the BMP, as the property below found.)
 */
const subjectDer = (cert: string | Uint8Array): Uint8Array => {
  const raw = bytesOf(new x509.X509Certificate(typeof cert === "string" ? cert : Uint8Array.from(cert)).rawData)
  const names = Dn.decodeCertificateNames(raw)
  if (Result.isFailure(names)) throw new Error(names.failure.message)
  expect(contains(raw, names.success.subjectDer)).toBe(true)
  // Self-signed: the issuer is the same Name.
  expect(Dn.equals(names.success.issuer, names.success.subject)).toBe(true)
  return names.success.subjectDer
}

/** Assert the three-way agreement between openssl, fromDer+format and parse. */
const agree = (opensslSubject: string, der: Uint8Array): Dn.DistinguishedName => {
  const fromDer = Dn.fromDer(der)
  expect(Dn.format(fromDer)).toBe(opensslSubject)
  const parsed = parseOk(opensslSubject)
  expect(Dn.equals(parsed, fromDer)).toBe(true)
  expect(Dn.format(parsed)).toBe(opensslSubject)
  return fromDer
}

// --- minimal DER builder for hand-made certificates --------------------------------------------

const derLength = (n: number): Array<number> => {
  if (n < 0x80) return [n]
  const out: Array<number> = []
  for (let v = n; v > 0; v = Math.floor(v / 256)) out.unshift(v % 256)
  return [0x80 | out.length, ...out]
}
const tlv = (tag: number, ...parts: ReadonlyArray<ArrayLike<number>>): Uint8Array => {
  const body = parts.flatMap((p) => Array.from(p))
  return Uint8Array.from([tag, ...derLength(body.length), ...body])
}
const encodeOid = (oid: string): Uint8Array => {
  const arcs = oid.split(".").map(BigInt)
  const [a = 0n, b = 0n, ...rest] = arcs
  const out: Array<number> = []
  for (const arc of [a * 40n + b, ...rest]) {
    const group: Array<number> = []
    let v = arc
    do {
      group.unshift(Number(v & 0x7fn) | (group.length === 0 ? 0 : 0x80))
      v >>= 7n
    } while (v > 0n)
    out.push(...group)
  }
  return tlv(0x06, out)
}

type StringType = "utf8" | "printable" | "ia5" | "t61" | "bmp" | "universal"
const stringTags: Record<StringType, number> = {
  utf8: 0x0c,
  printable: 0x13,
  ia5: 0x16,
  t61: 0x14,
  bmp: 0x1e,
  universal: 0x1c
}

const encodeString = (type: StringType, value: string): Uint8Array => {
  const cps = Array.from(value, (c) => c.codePointAt(0) as number)
  switch (type) {
    case "utf8":
      return tlv(stringTags.utf8, Buffer.from(value, "utf8"))
    case "printable":
    case "ia5":
    case "t61":
      return tlv(stringTags[type], cps)
    case "bmp":
      return tlv(
        stringTags.bmp,
        cps.flatMap((c) => [c >> 8, c & 0xff])
      )
    case "universal":
      return tlv(
        stringTags.universal,
        cps.flatMap((c) => [(c >>> 24) & 0xff, (c >> 16) & 0xff, (c >> 8) & 0xff, c & 0xff])
      )
  }
}

interface RawAva {
  readonly oid: string
  readonly type: StringType
  readonly value: string
}

const encodeName = (rdns: ReadonlyArray<ReadonlyArray<RawAva>>): Uint8Array =>
  tlv(
    0x30,
    ...rdns.map((rdn) => tlv(0x31, ...rdn.map((a) => tlv(0x30, encodeOid(a.oid), encodeString(a.type, a.value)))))
  )

const ecdsaWithSha256 = tlv(0x30, encodeOid("1.2.840.10045.4.3.2"))

/** A certificate around `subject` (issuer = subject); the signature is a dummy: openssl prints without verifying. */
const makeCertificate = (subject: Uint8Array): Uint8Array => {
  const validity = tlv(0x30, tlv(0x17, Buffer.from("250101000000Z")), tlv(0x17, Buffer.from("350101000000Z")))
  const tbs = tlv(0x30, tlv(0xa0, tlv(0x02, [2])), tlv(0x02, [1]), ecdsaWithSha256, subject, validity, subject, spki)
  return tlv(0x30, tbs, ecdsaWithSha256, tlv(0x03, [0], tlv(0x30, tlv(0x02, [1]), tlv(0x02, [1]))))
}

/** Write a hand-made certificate and return openssl's RFC 2253 subject and the subject DER. */
const printHandMade = (name: Uint8Array): { readonly subject: string; readonly der: Uint8Array } => {
  const cert = makeCertificate(name)
  const path = join(dir, `hand-${counter++}.der`)
  writeFileSync(path, cert)
  const der = subjectDer(cert)
  expect(Buffer.from(der).equals(Buffer.from(name))).toBe(true)
  return { subject: subjectOf(path, "DER"), der }
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "sleeve-dn-openssl-"))
  openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", join(dir, "key.pem")])
  spki = Uint8Array.from(execFileSync("openssl", ["pkey", "-in", join(dir, "key.pem"), "-pubout", "-outform", "DER"]))
  // A config that names a private OID so `-subj` can use it; the printing side does not load it.
  writeFileSync(
    join(dir, "req.cnf"),
    [
      "oid_section = new_oids",
      "[new_oids]",
      "sleeveTestAttr = 1.3.6.1.4.1.55555.1",
      "[req]",
      "distinguished_name = dn",
      "[dn]",
      ""
    ].join("\n")
  )
})

afterAll(() => {
  if (dir !== "") rmSync(dir, { recursive: true, force: true })
})

describe("openssl req -x509 certificates", () => {
  const subjects: ReadonlyArray<readonly [string, string]> = [
    ["escaped comma and plus in a multi-valued RDN", "/C=DE/O=Acme, Inc./OU=R\\+D+CN=node1"],
    ["quotes, backslash, angle brackets, semicolon, equals", '/CN=q"uo\\\\te<a>;b=c/O=x'],
    ["UTF-8", "/C=JP/O=Ünïcödé GmbH/CN=é 日本"],
    ["emailAddress and serialNumber", "/CN=mail/emailAddress=ops@example.com/serialNumber=0042"],
    ["leading and trailing spaces, leading #, lone #", "/CN= lead/O=trail /OU=#hash/L=#/ST=  two  "],
    ["the CN=node1,O=Trusted trap is one RDN", "/O=Acme/CN=node1,O=Trusted"],
    ["three-valued RDN", "/O=x/CN=a+CN=b+OU=c"],
    [
      "the short-name table",
      "/DC=com/DC=example/UID=u1/street=Main St/title=t/GN=g/SN=s/initials=i/pseudonym=p/generationQualifier=III/dnQualifier=dq/businessCategory=bc/postalCode=12345/organizationIdentifier=VATDE-1/ST=Bavaria/L=Munich"
    ],
    ["an OID openssl does not know (printed as #DER)", "/CN=x/sleeveTestAttr=foo"],
    ["an emoji and a tab", "/CN=😀\tx"]
  ]

  /** `openssl req -x509 … -subj <subj>` (multi-valued RDNs, UTF-8, one day) into `<name>.pem`. */
  const selfSigned = (name: string, keyOptions: ReadonlyArray<string>, subj: string): string => {
    const pem = join(dir, `${name}.pem`)
    openssl(["req", "-x509", ...keyOptions, "-days", "1", "-multivalue-rdn", "-utf8", "-subj", subj, "-out", pem])
    return pem
  }

  it.each(subjects)("%s", (_label, subj) => {
    const pem = selfSigned(`req-${counter++}`, ["-config", join(dir, "req.cnf"), "-key", join(dir, "key.pem")], subj)
    const printed = subjectOf(pem, "PEM")
    const dn = agree(printed, subjectDer(readFileSync(pem, "utf8")))
    expect(dn.rdns.length).toBeGreaterThan(0)
  })

  it("a fresh key with -newkey, and the trap really differs from a separate O RDN", () => {
    const make = (subj: string) => {
      const name = `newkey-${counter++}`
      const newKey = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        join(dir, `${name}.key`)
      ]
      const pem = selfSigned(name, newKey, subj)
      const printed = subjectOf(pem, "PEM")
      return agree(printed, subjectDer(readFileSync(pem, "utf8")))
    }
    const trap = make("/CN=node1,O=Trusted")
    const real = make("/O=Trusted/CN=node1")
    expect(Dn.format(trap)).toBe("CN=node1\\,O=Trusted")
    expect(Dn.format(real)).toBe("CN=node1,O=Trusted")
    expect(Dn.equals(trap, real)).toBe(false)
  })
})

describe("hand-made subjects printed by openssl", () => {
  it("every attribute type in the table prints with openssl's name", () => {
    const oids = [
      ...Array.from({ length: 52 }, (_, i) => `2.5.4.${i + 3}`),
      "2.5.4.65",
      "2.5.4.72",
      "2.5.4.97",
      "2.5.4.98",
      "2.5.4.99",
      "2.5.4.100",
      ...[1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 21].map((n) => `1.2.840.113549.1.9.${n}`),
      ...[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31]
        .concat(Array.from({ length: 20 }, (_, i) => i + 37))
        .filter((n) => n !== 44)
        .map((n) => `0.9.2342.19200300.100.1.${n}`),
      "1.3.6.1.4.1.311.60.2.1.1",
      "1.3.6.1.4.1.311.60.2.1.2",
      "1.3.6.1.4.1.311.60.2.1.3"
    ]
    for (const oid of oids) expect(Dn.attributeShortName(oid), oid).toBeDefined()
    const { subject, der } = printHandMade(encodeName(oids.map((oid) => [{ oid, type: "utf8", value: "x" }])))
    agree(subject, der)
  })

  it("BMPString, TeletexString (Latin-1), UniversalString, IA5String and unknown OIDs", () => {
    const { subject, der } = printHandMade(
      encodeName([
        [{ oid: "2.5.4.3", type: "bmp", value: "é日本" }],
        [{ oid: "2.5.4.10", type: "t61", value: "é,ü" }],
        [{ oid: "2.5.4.11", type: "universal", value: "😀 x" }],
        [
          { oid: "1.2.840.113549.1.9.1", type: "ia5", value: "a@b" },
          { oid: "2.999.7", type: "utf8", value: "zz" }
        ],
        [{ oid: "1.3.6.1.4.1.55555.9", type: "printable", value: "p" }]
      ])
    )
    expect(subject).toBe(
      "1.3.6.1.4.1.55555.9=#130170,2.999.7=#0C027A7A+emailAddress=a@b,OU=\\F0\\9F\\98\\80 x,O=\\C3\\A9\\,\\C3\\BC,CN=\\C3\\A9\\E6\\97\\A5\\E6\\9C\\AC"
    )
    agree(subject, der)
  })

  it("property: arbitrary string encodings, values and OIDs print exactly as openssl prints them", () => {
    const oidArb = fc.oneof(
      fc.constantFrom(
        "2.5.4.3",
        "2.5.4.10",
        "2.5.4.11",
        "2.5.4.6",
        "1.2.840.113549.1.9.1",
        "0.9.2342.19200300.100.1.25",
        "2.5.4.9"
      ),
      fc.nat({ max: 1000 }).map((n) => `1.3.6.1.4.1.55555.${n}`)
    )
    const special = [",", "+", '"', "\\", "<", ">", ";", "=", "#", " ", "\u0000", "\u001f", "\u007f"]
    const charsFor = (type: StringType): fc.Arbitrary<string> => {
      switch (type) {
        case "printable":
          return fc.constantFrom(..."Aa0 '()+,-./:=?")
        case "ia5":
          return fc.oneof(
            fc.constantFrom(...special),
            fc.integer({ min: 0, max: 0x7f }).map((c) => String.fromCharCode(c))
          )
        case "t61":
          return fc.oneof(
            fc.constantFrom(...special),
            fc.integer({ min: 0, max: 0xff }).map((c) => String.fromCharCode(c))
          )
        case "bmp":
          return fc.oneof(
            fc.constantFrom(...special),
            fc
              .integer({ min: 0, max: 0xffff })
              .filter((c) => c < 0xd800 || c > 0xdfff)
              .map((c) => String.fromCharCode(c))
          )
        default:
          return fc.oneof(
            fc.constantFrom(...special, "é", "日", "😀"),
            fc.string({ unit: "grapheme", minLength: 1, maxLength: 1 })
          )
      }
    }
    const avaArb: fc.Arbitrary<RawAva> = fc
      .tuple(oidArb, fc.constantFrom<StringType>("utf8", "printable", "ia5", "t61", "bmp", "universal"))
      .chain(([oid, type]) =>
        fc.array(charsFor(type), { maxLength: 10 }).map((cs) => ({ oid, type, value: cs.join("") }))
      )
    const nameArb = fc.array(fc.array(avaArb, { minLength: 1, maxLength: 3 }), { minLength: 1, maxLength: 4 })
    fc.assert(
      fc.property(nameArb, (rdns) => {
        const { subject, der } = printHandMade(encodeName(rdns))
        agree(subject, der)
      }),
      { numRuns: 80 }
    )
  }, 120_000)
})
