/**
 * Distinguished names: RFC 4514 strings and RFC 5280 `Name` structures, parsed, printed and
 * compared.
 *
 * Use `parse` for DNs written by operators (config files, the CLI), `fromDer` for the subject
 * or issuer of a certificate, `equals` (or `toKey` for map lookups) for authorization, and
 * `format` to print a DN the way `openssl x509 -noout -subject -nameopt RFC2253` does, so that
 * operators can paste openssl output into a config file and get an exact match.
 *
 * Order convention: `rdns` is in RFC 4514 *string* order (most specific first, e.g. CN before
 * O), the reverse of the ASN.1 `RDNSequence` order in a certificate. Within a multi-valued RDN
 * the AVAs are also kept in string order (the reverse of the DER `SET` order), which is how
 * openssl prints them; equality ignores that order.
 *
 * Comparison follows the X.520 matching rules as far as authorization needs them. For every
 * attribute type in the table below, string values match with caseIgnoreMatch (RFC 4517/4518):
 * NFKC, lower case, white space mapped to SPACE, leading and trailing spaces removed, inner runs
 * collapsed. Values of unknown attribute types match only when their strings are identical (or,
 * for values that are not strings, when their DER bytes are identical). Deliberately stricter
 * than RFC 4518: control and format characters are kept significant rather than mapped to
 * nothing, and strings containing code points that RFC 4518 prohibits (private use,
 * non-characters, U+FFFD) are compared exactly, so an exotic name can only fail to match.
 *
 * The module is pure: no I/O, no certificate validation. It does not decide which DN is
 * authorized (that is PeerPolicy) and it does not parse certificates (that is Certificate,
 * which hands the DER of a `Name` to `fromDer`).
 */
import { Data, Option, Result } from "effect"

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

/** One `type=value` pair. `type` is always a dotted OID (e.g. "2.5.4.3" for CN). */
export interface AttributeTypeAndValue {
  readonly type: string
  /**
   * The value as a string (a decoded directory string). When the value is known only by its
   * encoding (`der` is set and is not a string type) this is the RFC 4514 form `#HEX`.
   */
  readonly value: string
  /**
   * Lower-case hex of the DER (BER) encoding of the value (tag, length and contents), when the
   * value was written as `#hex`, is not a string type, or belongs to an attribute type this
   * module does not know (openssl prints those as `#hex`). When set, it is the source of truth.
   */
  readonly der?: string | undefined
}

/** A relative distinguished name: one or more AVAs (multi-valued with `+`), an unordered set. */
export type Rdn = ReadonlyArray<AttributeTypeAndValue>

/** A distinguished name: a sequence of RDNs, most specific first (RFC 4514 string order). */
export interface DistinguishedName {
  readonly rdns: ReadonlyArray<Rdn>
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/** A string that is not a valid RFC 4514 DN; `position` is the 0-based offset of the problem. */
export class DnParseError extends Data.TaggedError("DnParseError")<{
  readonly input: string
  readonly position: number
  readonly message: string
}> {}

/** Bytes that are not a DER-encoded X.509 `Name`; `offset` is the byte offset of the problem. */
export class DnDecodeError extends Data.TaggedError("DnDecodeError")<{
  readonly offset: number
  readonly message: string
}> {}

// ---------------------------------------------------------------------------------------------
// Attribute types
// ---------------------------------------------------------------------------------------------

/**
 * Attribute types: [OID, name printed by `format`, other accepted names...]. The printed name
 * is OpenSSL 3's short name (`openssl list -objects`) for every name attribute in the X.520,
 * PKCS#9, RFC 4519/COSINE and EV jurisdiction arcs, so `format` prints what openssl prints.
 * One deliberate exception: OpenSSL calls 0.9.2342.19200300.100.1.44 `uid`, which collides
 * case-insensitively with RFC 4514's `UID` (userId, 0.9.2342.19200300.100.1.1); `uid=alice`
 * must mean userId as in LDAP, so .44 is printed as `uniqueIdentifier`.
 */
const attributeTable: ReadonlyArray<readonly [string, string, ...Array<string>]> = [
  ["2.5.4.3", "CN", "commonName"],
  ["2.5.4.4", "SN", "surname"],
  ["2.5.4.5", "serialNumber"],
  ["2.5.4.6", "C", "countryName"],
  ["2.5.4.7", "L", "localityName"],
  ["2.5.4.8", "ST", "stateOrProvinceName"],
  ["2.5.4.9", "street", "streetAddress"],
  ["2.5.4.10", "O", "organizationName"],
  ["2.5.4.11", "OU", "organizationalUnitName"],
  ["2.5.4.12", "title"],
  ["2.5.4.13", "description"],
  ["2.5.4.14", "searchGuide"],
  ["2.5.4.15", "businessCategory"],
  ["2.5.4.16", "postalAddress"],
  ["2.5.4.17", "postalCode"],
  ["2.5.4.18", "postOfficeBox"],
  ["2.5.4.19", "physicalDeliveryOfficeName"],
  ["2.5.4.20", "telephoneNumber"],
  ["2.5.4.21", "telexNumber"],
  ["2.5.4.22", "teletexTerminalIdentifier"],
  ["2.5.4.23", "facsimileTelephoneNumber"],
  ["2.5.4.24", "x121Address"],
  ["2.5.4.25", "internationaliSDNNumber"],
  ["2.5.4.26", "registeredAddress"],
  ["2.5.4.27", "destinationIndicator"],
  ["2.5.4.28", "preferredDeliveryMethod"],
  ["2.5.4.29", "presentationAddress"],
  ["2.5.4.30", "supportedApplicationContext"],
  ["2.5.4.31", "member"],
  ["2.5.4.32", "owner"],
  ["2.5.4.33", "roleOccupant"],
  ["2.5.4.34", "seeAlso"],
  ["2.5.4.35", "userPassword"],
  ["2.5.4.36", "userCertificate"],
  ["2.5.4.37", "cACertificate"],
  ["2.5.4.38", "authorityRevocationList"],
  ["2.5.4.39", "certificateRevocationList"],
  ["2.5.4.40", "crossCertificatePair"],
  ["2.5.4.41", "name"],
  ["2.5.4.42", "GN", "givenName"],
  ["2.5.4.43", "initials"],
  ["2.5.4.44", "generationQualifier"],
  ["2.5.4.45", "x500UniqueIdentifier"],
  ["2.5.4.46", "dnQualifier"],
  ["2.5.4.47", "enhancedSearchGuide"],
  ["2.5.4.48", "protocolInformation"],
  ["2.5.4.49", "distinguishedName"],
  ["2.5.4.50", "uniqueMember"],
  ["2.5.4.51", "houseIdentifier"],
  ["2.5.4.52", "supportedAlgorithms"],
  ["2.5.4.53", "deltaRevocationList"],
  ["2.5.4.54", "dmdName"],
  ["2.5.4.65", "pseudonym"],
  ["2.5.4.72", "role"],
  ["2.5.4.97", "organizationIdentifier"],
  ["2.5.4.98", "c3", "countryCode3c"],
  ["2.5.4.99", "n3", "countryCode3n"],
  ["2.5.4.100", "dnsName"],
  ["1.2.840.113549.1.9.1", "emailAddress", "E"],
  ["1.2.840.113549.1.9.2", "unstructuredName"],
  ["1.2.840.113549.1.9.3", "contentType"],
  ["1.2.840.113549.1.9.4", "messageDigest"],
  ["1.2.840.113549.1.9.5", "signingTime"],
  ["1.2.840.113549.1.9.6", "countersignature"],
  ["1.2.840.113549.1.9.7", "challengePassword"],
  ["1.2.840.113549.1.9.8", "unstructuredAddress"],
  ["1.2.840.113549.1.9.9", "extendedCertificateAttributes"],
  ["1.2.840.113549.1.9.20", "friendlyName"],
  ["1.2.840.113549.1.9.21", "localKeyID"],
  ["0.9.2342.19200300.100.1.1", "UID", "userId"],
  ["0.9.2342.19200300.100.1.2", "textEncodedORAddress"],
  ["0.9.2342.19200300.100.1.3", "mail", "rfc822Mailbox"],
  ["0.9.2342.19200300.100.1.4", "info"],
  ["0.9.2342.19200300.100.1.5", "favouriteDrink"],
  ["0.9.2342.19200300.100.1.6", "roomNumber"],
  ["0.9.2342.19200300.100.1.7", "photo"],
  ["0.9.2342.19200300.100.1.8", "userClass"],
  ["0.9.2342.19200300.100.1.9", "host"],
  ["0.9.2342.19200300.100.1.10", "manager"],
  ["0.9.2342.19200300.100.1.11", "documentIdentifier"],
  ["0.9.2342.19200300.100.1.12", "documentTitle"],
  ["0.9.2342.19200300.100.1.13", "documentVersion"],
  ["0.9.2342.19200300.100.1.14", "documentAuthor"],
  ["0.9.2342.19200300.100.1.15", "documentLocation"],
  ["0.9.2342.19200300.100.1.20", "homeTelephoneNumber"],
  ["0.9.2342.19200300.100.1.21", "secretary"],
  ["0.9.2342.19200300.100.1.22", "otherMailbox"],
  ["0.9.2342.19200300.100.1.23", "lastModifiedTime"],
  ["0.9.2342.19200300.100.1.24", "lastModifiedBy"],
  ["0.9.2342.19200300.100.1.25", "DC", "domainComponent"],
  ["0.9.2342.19200300.100.1.26", "aRecord"],
  ["0.9.2342.19200300.100.1.27", "pilotAttributeType27"],
  ["0.9.2342.19200300.100.1.28", "mXRecord"],
  ["0.9.2342.19200300.100.1.29", "nSRecord"],
  ["0.9.2342.19200300.100.1.30", "sOARecord"],
  ["0.9.2342.19200300.100.1.31", "cNAMERecord"],
  ["0.9.2342.19200300.100.1.37", "associatedDomain"],
  ["0.9.2342.19200300.100.1.38", "associatedName"],
  ["0.9.2342.19200300.100.1.39", "homePostalAddress"],
  ["0.9.2342.19200300.100.1.40", "personalTitle"],
  ["0.9.2342.19200300.100.1.41", "mobileTelephoneNumber"],
  ["0.9.2342.19200300.100.1.42", "pagerTelephoneNumber"],
  ["0.9.2342.19200300.100.1.43", "friendlyCountryName"],
  ["0.9.2342.19200300.100.1.44", "uniqueIdentifier"],
  ["0.9.2342.19200300.100.1.45", "organizationalStatus"],
  ["0.9.2342.19200300.100.1.46", "janetMailbox"],
  ["0.9.2342.19200300.100.1.47", "mailPreferenceOption"],
  ["0.9.2342.19200300.100.1.48", "buildingName"],
  ["0.9.2342.19200300.100.1.49", "dSAQuality"],
  ["0.9.2342.19200300.100.1.50", "singleLevelQuality"],
  ["0.9.2342.19200300.100.1.51", "subtreeMinimumQuality"],
  ["0.9.2342.19200300.100.1.52", "subtreeMaximumQuality"],
  ["0.9.2342.19200300.100.1.53", "personalSignature"],
  ["0.9.2342.19200300.100.1.54", "dITRedirect"],
  ["0.9.2342.19200300.100.1.55", "audio"],
  ["0.9.2342.19200300.100.1.56", "documentPublisher"],
  ["1.3.6.1.4.1.311.60.2.1.1", "jurisdictionL", "jurisdictionLocalityName"],
  ["1.3.6.1.4.1.311.60.2.1.2", "jurisdictionST", "jurisdictionStateOrProvinceName"],
  ["1.3.6.1.4.1.311.60.2.1.3", "jurisdictionC", "jurisdictionCountryName"]
]

const shortNameByOid = new Map<string, string>()
const oidByLowerName = new Map<string, string>()
for (const [oid, shortName, ...aliases] of attributeTable) {
  shortNameByOid.set(oid, shortName)
  for (const name of [shortName, ...aliases]) {
    const key = name.toLowerCase()
    // A collision would make parsing ambiguous; it is a bug in the table, caught at load.
    if (oidByLowerName.has(key)) throw new Error(`DistinguishedName: duplicate attribute name ${name}`)
    oidByLowerName.set(key, oid)
  }
}

const numericOid = /^(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+$/

/** The name `format` prints for an attribute type OID (e.g. "CN"), or undefined if unknown. */
export const attributeShortName = (oid: string): string | undefined => shortNameByOid.get(oid)

/**
 * The OID for an attribute type name or OID, case-insensitively (`cn`, `commonName`,
 * `2.5.4.3` all give "2.5.4.3"); undefined for an unknown name or a malformed OID.
 */
export const attributeOid = (nameOrOid: string): string | undefined =>
  numericOid.test(nameOrOid) ? nameOrOid : oidByLowerName.get(nameOrOid.toLowerCase())

/** Whether this module knows the attribute type (and so compares it with caseIgnoreMatch). */
export const isKnownAttributeType = (oid: string): boolean => shortNameByOid.has(oid)

// ---------------------------------------------------------------------------------------------
// Bytes, hex, UTF-8
// ---------------------------------------------------------------------------------------------

const utf8 = new TextEncoder()
const utf8Strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true })

const toHex = (bytes: Uint8Array): string => {
  let s = ""
  for (const b of bytes) s += b.toString(16).padStart(2, "0")
  return s
}

const fromHex = (hex: string): Uint8Array => {
  const out = new Uint8Array(hex.length / 2)
  for (let i = 0; i < out.length; i++) out[i] = Number.parseInt(hex.slice(2 * i, 2 * i + 2), 16)
  return out
}

const isHexDigit = (c: string | undefined): boolean => c !== undefined && /^[0-9A-Fa-f]$/.test(c)

// ---------------------------------------------------------------------------------------------
// DER
// ---------------------------------------------------------------------------------------------

class DerFailure {
  readonly offset: number
  readonly message: string
  constructor(offset: number, message: string) {
    this.offset = offset
    this.message = message
  }
}

interface Tlv {
  /** Class bits of the identifier octet (0x00 universal, 0x80 context-specific, ...). */
  readonly tagClass: number
  readonly constructed: boolean
  readonly tagNumber: number
  readonly start: number
  readonly contentStart: number
  readonly end: number
}

/** Read one DER TLV at `offset`, which must end at or before `limit`. Definite lengths only. */
const readTlv = (buf: Uint8Array, offset: number, limit: number): Tlv => {
  let p = offset
  const first = buf[p]
  if (first === undefined || p >= limit) throw new DerFailure(offset, "unexpected end of data")
  p++
  let tagNumber = first & 0x1f
  if (tagNumber === 0x1f) {
    tagNumber = 0
    for (;;) {
      const b = buf[p]
      if (b === undefined || p >= limit) throw new DerFailure(p, "unexpected end of data in tag")
      if (tagNumber === 0 && b === 0x80) throw new DerFailure(p, "non-minimal tag encoding")
      p++
      tagNumber = tagNumber * 128 + (b & 0x7f)
      if (tagNumber > 0x1fffff) throw new DerFailure(p, "tag number too large")
      if ((b & 0x80) === 0) break
    }
    if (tagNumber < 0x1f) throw new DerFailure(offset, "non-minimal tag encoding")
  }
  const lenByte = buf[p]
  if (lenByte === undefined || p >= limit) throw new DerFailure(p, "unexpected end of data in length")
  p++
  let length: number
  if (lenByte < 0x80) {
    length = lenByte
  } else if (lenByte === 0x80) {
    throw new DerFailure(p - 1, "indefinite length is not DER")
  } else {
    const n = lenByte & 0x7f
    if (n > 4) throw new DerFailure(p - 1, "length too large")
    length = 0
    for (let i = 0; i < n; i++) {
      const b = buf[p]
      if (b === undefined || p >= limit) throw new DerFailure(p, "unexpected end of data in length")
      if (i === 0 && b === 0) throw new DerFailure(p, "non-minimal length encoding")
      length = length * 256 + b
      p++
    }
    if (length < 0x80) throw new DerFailure(offset, "non-minimal length encoding")
  }
  const end = p + length
  if (end > limit) throw new DerFailure(offset, `length ${length} runs past the end of the enclosing value`)
  return {
    tagClass: first & 0xc0,
    constructed: (first & 0x20) !== 0,
    tagNumber,
    start: offset,
    contentStart: p,
    end
  }
}

const isUniversal = (tlv: Tlv, tagNumber: number, constructed: boolean): boolean =>
  tlv.tagClass === 0 && tlv.tagNumber === tagNumber && tlv.constructed === constructed

const decodeOid = (buf: Uint8Array, tlv: Tlv): string => {
  if (tlv.end === tlv.contentStart) throw new DerFailure(tlv.start, "empty OBJECT IDENTIFIER")
  const arcs: Array<bigint> = []
  let value = 0n
  let fresh = true
  for (let p = tlv.contentStart; p < tlv.end; p++) {
    const b = buf[p] as number
    if (fresh && b === 0x80) throw new DerFailure(p, "non-minimal OBJECT IDENTIFIER arc")
    value = (value << 7n) | BigInt(b & 0x7f)
    fresh = (b & 0x80) === 0
    if (fresh) {
      arcs.push(value)
      value = 0n
    }
  }
  if (!fresh) throw new DerFailure(tlv.end - 1, "truncated OBJECT IDENTIFIER")
  const firstArcs = arcs[0] as bigint
  const head = firstArcs < 40n ? [0n, firstArcs] : firstArcs < 80n ? [1n, firstArcs - 40n] : [2n, firstArcs - 80n]
  return [...head, ...arcs.slice(1)].join(".")
}

const decodeUcs = (content: Uint8Array, width: 2 | 4): string | undefined => {
  if (content.length % width !== 0) return undefined
  let s = ""
  for (let i = 0; i < content.length; i += width) {
    let cp = 0
    for (let j = 0; j < width; j++) cp = cp * 256 + (content[i + j] as number)
    // Surrogates and out-of-range values are not characters; keep such values as DER.
    if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return undefined
    s += String.fromCodePoint(cp)
  }
  return s
}

/**
 * Decode a DER string value (the full TLV) to text, the way OpenSSL's RFC 2253 printer reads
 * it: UTF8String as UTF-8, BMPString as UCS-2, UniversalString as UCS-4, and every other
 * character-string type (PrintableString, IA5String, TeletexString, ...) one byte per
 * character (Latin-1). Undefined for anything else (the value is kept as DER).
 */
const decodeDerString = (der: Uint8Array): string | undefined => {
  let tlv: Tlv
  try {
    tlv = readTlv(der, 0, der.length)
  } catch {
    return undefined
  }
  if (tlv.end !== der.length || tlv.tagClass !== 0 || tlv.constructed) return undefined
  const content = der.subarray(tlv.contentStart, tlv.end)
  switch (tlv.tagNumber) {
    case 12: // UTF8String
      try {
        return utf8Strict.decode(content)
      } catch {
        return undefined
      }
    case 18: // NumericString
    case 19: // PrintableString
    case 20: // TeletexString (T61), read as Latin-1 like OpenSSL
    case 21: // VideotexString
    case 22: // IA5String
    case 25: // GraphicString
    case 26: // VisibleString
    case 27: // GeneralString
      return String.fromCharCode(...content)
    case 28: // UniversalString
      return decodeUcs(content, 4)
    case 30: // BMPString
      return decodeUcs(content, 2)
    default:
      return undefined
  }
}

const derLength = (n: number): Array<number> => {
  if (n < 0x80) return [n]
  const bytes: Array<number> = []
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v % 256)
  return [0x80 | bytes.length, ...bytes]
}

/** The UTF8String DER encoding of a string, used to print values of unknown types as `#hex`. */
const encodeUtf8String = (value: string): Uint8Array => {
  const content = utf8.encode(value)
  return Uint8Array.from([0x0c, ...derLength(content.length), ...content])
}

const makeAvaFromDer = (type: string, der: Uint8Array): AttributeTypeAndValue => {
  const decoded = decodeDerString(der)
  if (decoded !== undefined && isKnownAttributeType(type)) return { type, value: decoded }
  const hex = toHex(der)
  return { type, value: decoded ?? `#${hex.toUpperCase()}`, der: hex }
}

/**
 * Decode a DER-encoded X.509 `Name` (`SEQUENCE OF SET OF AttributeTypeAndValue`). Strict DER:
 * definite, minimal lengths, no trailing bytes, no empty RDN.
 */
export const decodeDer = (der: Uint8Array): Result.Result<DistinguishedName, DnDecodeError> => {
  try {
    const name = readTlv(der, 0, der.length)
    if (!isUniversal(name, 16, true)) throw new DerFailure(0, "a Name must be a SEQUENCE")
    if (name.end !== der.length) throw new DerFailure(name.end, "trailing bytes after the Name")
    const rdns: Array<Rdn> = []
    for (let p = name.contentStart; p < name.end; ) {
      const set = readTlv(der, p, name.end)
      if (!isUniversal(set, 17, true)) throw new DerFailure(p, "an RDN must be a SET")
      if (set.contentStart === set.end) throw new DerFailure(p, "an RDN must not be empty")
      const avas: Array<AttributeTypeAndValue> = []
      for (let q = set.contentStart; q < set.end; ) {
        const seq = readTlv(der, q, set.end)
        if (!isUniversal(seq, 16, true)) throw new DerFailure(q, "an AttributeTypeAndValue must be a SEQUENCE")
        const oid = readTlv(der, seq.contentStart, seq.end)
        if (!isUniversal(oid, 6, false))
          throw new DerFailure(oid.start, "an attribute type must be an OBJECT IDENTIFIER")
        const value = readTlv(der, oid.end, seq.end)
        if (value.end !== seq.end) throw new DerFailure(value.end, "extra data in an AttributeTypeAndValue")
        avas.push(makeAvaFromDer(decodeOid(der, oid), der.slice(value.start, value.end)))
        q = seq.end
      }
      // DER order -> string order, within the RDN as openssl prints it, and across RDNs.
      rdns.push(avas.reverse())
      p = set.end
    }
    return Result.succeed({ rdns: rdns.reverse() })
  } catch (e) {
    if (e instanceof DerFailure) return Result.fail(new DnDecodeError({ offset: e.offset, message: e.message }))
    throw e
  }
}

/** The issuer and subject of a certificate, with the exact DER bytes they were decoded from. */
export interface CertificateNames {
  readonly issuer: DistinguishedName
  readonly subject: DistinguishedName
  readonly issuerDer: Uint8Array
  readonly subjectDer: Uint8Array
}

/**
 * Read the issuer and subject `Name`s straight out of a DER X.509 certificate (RFC 5280
 * `TBSCertificate`: optional `[0]` version, serial, signature, issuer, validity, subject).
 * Use this rather than re-encoding a parsed name: @peculiar/x509 2.2's
 * `subjectName.toArrayBuffer()` re-encodes values and corrupts, for example, UniversalString
 * characters outside the BMP. Only the structure up to the subject is checked.
 */
export const decodeCertificateNames = (certificate: Uint8Array): Result.Result<CertificateNames, DnDecodeError> => {
  let fields: Array<Tlv>
  try {
    const cert = readTlv(certificate, 0, certificate.length)
    if (!isUniversal(cert, 16, true)) throw new DerFailure(0, "a certificate must be a SEQUENCE")
    const tbs = readTlv(certificate, cert.contentStart, cert.end)
    if (!isUniversal(tbs, 16, true)) throw new DerFailure(cert.contentStart, "a TBSCertificate must be a SEQUENCE")
    fields = []
    for (let p = tbs.contentStart; p < tbs.end && fields.length < 6; ) {
      const field = readTlv(certificate, p, tbs.end)
      fields.push(field)
      p = field.end
    }
    const first = fields[0]
    // The version is an explicit [0] and absent in v1 certificates.
    if (first !== undefined && first.tagClass === 0x80 && first.constructed && first.tagNumber === 0) fields.shift()
    if (fields.length < 5)
      throw new DerFailure(tbs.contentStart, "a TBSCertificate is missing fields before the subject")
  } catch (e) {
    if (e instanceof DerFailure) return Result.fail(new DnDecodeError({ offset: e.offset, message: e.message }))
    throw e
  }
  const issuerTlv = fields[2] as Tlv
  const subjectTlv = fields[4] as Tlv
  const issuerDer = certificate.slice(issuerTlv.start, issuerTlv.end)
  const subjectDer = certificate.slice(subjectTlv.start, subjectTlv.end)
  const shift = (r: Result.Result<DistinguishedName, DnDecodeError>, at: number) =>
    Result.mapError(r, (e) => new DnDecodeError({ offset: e.offset + at, message: e.message }))
  return Result.flatMap(shift(decodeDer(issuerDer), issuerTlv.start), (issuer) =>
    Result.map(shift(decodeDer(subjectDer), subjectTlv.start), (subject) => ({
      issuer,
      subject,
      issuerDer,
      subjectDer
    }))
  )
}

/**
 * Decode a DER-encoded X.509 `Name`, for DER that a certificate parser already accepted.
 * Throws `DnDecodeError` on malformed input; use `decodeDer` for untrusted bytes.
 */
export const fromDer = (der: Uint8Array): DistinguishedName => Result.getOrThrow(decodeDer(der))

// ---------------------------------------------------------------------------------------------
// Parsing RFC 4514 strings
// ---------------------------------------------------------------------------------------------

class ParseFailure {
  readonly position: number
  readonly message: string
  constructor(position: number, message: string) {
    this.position = position
    this.message = message
  }
}

const specials = new Set([",", "+", '"', "\\", "<", ">", ";", "=", "#", " "])

class Parser {
  pos = 0
  readonly input: string
  constructor(input: string) {
    this.input = input
  }

  peek(): string | undefined {
    return this.input[this.pos]
  }

  fail(message: string, position: number = this.pos): never {
    throw new ParseFailure(position, message)
  }

  skipSpaces(): void {
    while (this.input[this.pos] === " ") this.pos++
  }

  atEnd(): boolean {
    return this.pos >= this.input.length
  }

  dn(): DistinguishedName {
    this.skipSpaces()
    if (this.atEnd()) return { rdns: [] }
    const rdns: Array<Rdn> = []
    for (;;) {
      rdns.push(this.rdn())
      if (this.atEnd()) return { rdns }
      const c = this.peek()
      if (c !== ",") this.fail(`expected ',' or '+' between attributes, found '${c}'`)
      this.pos++
    }
  }

  rdn(): Rdn {
    const avas: Array<AttributeTypeAndValue> = [this.ava()]
    while (this.peek() === "+") {
      this.pos++
      avas.push(this.ava())
    }
    return avas
  }

  ava(): AttributeTypeAndValue {
    this.skipSpaces()
    const type = this.attributeType()
    this.skipSpaces()
    if (this.peek() !== "=")
      this.fail(
        this.atEnd()
          ? "expected '=' after the attribute type"
          : `expected '=' after the attribute type, found '${this.peek()}'`
      )
    this.pos++
    this.skipSpaces()
    return this.peek() === "#" ? this.hexValue(type) : { type, value: this.stringValue() }
  }

  attributeType(): string {
    const start = this.pos
    const c = this.peek()
    if (c === undefined || !/^[A-Za-z0-9]$/.test(c))
      this.fail(c === undefined ? "expected an attribute type" : `expected an attribute type, found '${c}'`)
    if (/^[0-9]$/.test(c)) {
      while (/^[0-9.]$/.test(this.peek() ?? "")) this.pos++
      const oid = this.input.slice(start, this.pos)
      if (!numericOid.test(oid)) this.fail(`malformed OID '${oid}'`, start)
      return oid
    }
    while (/^[A-Za-z0-9-]$/.test(this.peek() ?? "")) this.pos++
    const name = this.input.slice(start, this.pos)
    const oid = oidByLowerName.get(name.toLowerCase())
    if (oid === undefined) this.fail(`unknown attribute type '${name}' (use its dotted OID)`, start)
    return oid
  }

  /** `#hex`: the BER encoding of the value. A lone `#` is the literal "#" (openssl prints it so). */
  hexValue(type: string): AttributeTypeAndValue {
    const start = this.pos
    this.pos++
    const digitsStart = this.pos
    while (isHexDigit(this.peek())) this.pos++
    const hex = this.input.slice(digitsStart, this.pos).toLowerCase()
    this.skipSpaces()
    if (!this.atEnd() && this.peek() !== "," && this.peek() !== "+") {
      this.fail(`unexpected '${this.peek()}' in a #hex value (escape a leading '#' as '\\#')`)
    }
    if (hex.length === 0) return { type, value: "#" }
    if (hex.length % 2 !== 0) this.fail("a #hex value needs an even number of hex digits", start)
    const der = fromHex(hex)
    try {
      const tlv = readTlv(der, 0, der.length)
      if (tlv.end !== der.length) throw new DerFailure(tlv.end, "trailing bytes")
    } catch (e) {
      if (e instanceof DerFailure) this.fail(`a #hex value must be one BER/DER element: ${e.message}`, start)
      throw e
    }
    return makeAvaFromDer(type, der)
  }

  stringValue(): string {
    const start = this.pos
    const bytes: Array<number> = []
    // Unescaped trailing spaces are insignificant (RFC 4514 requires them escaped).
    let significant = 0
    for (;;) {
      const c = this.peek()
      if (c === undefined || c === "," || c === "+") break
      if (c === "\\") {
        this.escape(bytes)
        significant = bytes.length
        continue
      }
      if (c === '"' || c === ";" || c === "<" || c === ">") {
        this.fail(`'${c}' must be escaped as '\\${c}'`)
      }
      if (c === "\u0000") this.fail("a NUL character must be escaped as '\\00'")
      const cp = this.input.codePointAt(this.pos) as number
      if (cp >= 0xd800 && cp <= 0xdfff) this.fail("unpaired UTF-16 surrogate")
      const ch = String.fromCodePoint(cp)
      bytes.push(...utf8.encode(ch))
      this.pos += ch.length
      if (c !== " ") significant = bytes.length
    }
    try {
      return utf8Strict.decode(Uint8Array.from(bytes.slice(0, significant)))
    } catch {
      return this.fail("escaped bytes are not valid UTF-8", start)
    }
  }

  escape(bytes: Array<number>): void {
    const at = this.pos
    this.pos++
    const c = this.peek()
    if (c === undefined) this.fail("unterminated escape at the end of the input", at)
    if (isHexDigit(c)) {
      const d = this.input[this.pos + 1]
      if (!isHexDigit(d)) this.fail(`invalid hex escape '\\${c}${d ?? ""}' (two hex digits expected)`, at)
      bytes.push(Number.parseInt(c + d, 16))
      this.pos += 2
      return
    }
    if (!specials.has(c)) this.fail(`invalid escape '\\${c}'`, at)
    bytes.push(c.charCodeAt(0))
    this.pos++
  }
}

/**
 * Parse an RFC 4514 string (also accepts OIDs and the usual short and long names,
 * case-insensitively). Lenient only where it cannot change meaning: spaces around `,` `+` `=`
 * are ignored (as in RFC 2253-era output), and a lone `#` value is the literal "#" (openssl
 * prints it that way). `#hex` values must be one well-formed BER element.
 */
export const parse = (input: string): Result.Result<DistinguishedName, DnParseError> => {
  try {
    return Result.succeed(new Parser(input).dn())
  } catch (e) {
    if (e instanceof ParseFailure) {
      return Result.fail(
        new DnParseError({ input, position: e.position, message: `${e.message} at position ${e.position}` })
      )
    }
    throw e
  }
}

// ---------------------------------------------------------------------------------------------
// Printing
// ---------------------------------------------------------------------------------------------

const rfc2253Specials = new Set([",", "+", '"', "\\", "<", ">", ";"])

const hexEscape = (byte: number): string => `\\${byte.toString(16).toUpperCase().padStart(2, "0")}`

/**
 * Escape a value like OpenSSL's `ASN1_STRFLGS_RFC2253` (a_strex.c `do_buf`): `,+"\<>;` get a
 * backslash; control characters get `\XX`; a leading space or `#` and a trailing space get a
 * backslash — where openssl's "last character" flag replaces the "first" one, so a lone `#` is
 * not escaped. With `escapeNonAscii`, every UTF-8 byte above 0x7F becomes `\XX`.
 */
const escapeValue = (value: string, escapeNonAscii: boolean): string => {
  const chars = Array.from(value)
  let out = ""
  chars.forEach((ch, i) => {
    const cp = ch.codePointAt(0) as number
    const first = i === 0
    const last = i === chars.length - 1
    if (cp > 0x7f) {
      if (escapeNonAscii) for (const b of utf8.encode(ch)) out += hexEscape(b)
      else out += ch
    } else if (rfc2253Specials.has(ch)) out += `\\${ch}`
    else if (cp < 0x20 || cp === 0x7f) out += hexEscape(cp)
    else if (ch === " " && (first || last)) out += "\\ "
    else if (ch === "#" && first && !last) out += "\\#"
    else out += ch
  })
  return out
}

const formatAva = (ava: AttributeTypeAndValue, escapeNonAscii: boolean): string => {
  const oid = attributeOid(ava.type) ?? ava.type
  const shortName = attributeShortName(oid)
  if (shortName === undefined) {
    // Unknown types print as the dotted OID and the DER of the value, as openssl does.
    const der = ava.der ?? toHex(encodeUtf8String(ava.value))
    return `${oid}=#${der.toUpperCase()}`
  }
  if (ava.der !== undefined) {
    const decoded = decodeDerString(fromHex(ava.der))
    if (decoded === undefined) return `${shortName}=#${ava.der.toUpperCase()}`
    return `${shortName}=${escapeValue(decoded, escapeNonAscii)}`
  }
  return `${shortName}=${escapeValue(ava.value, escapeNonAscii)}`
}

/** Print one RDN (AVAs joined by `+`), escaped as `format` does. */
export const formatRdn = (rdn: Rdn): string => rdn.map((ava) => formatAva(ava, true)).join("+")

/**
 * Print as RFC 4514, byte-for-byte like `openssl x509 -noout -subject -nameopt RFC2253` (without
 * the `subject=` prefix): OpenSSL short names, no spaces, non-ASCII as escaped UTF-8 bytes
 * (`é` -> `\C3\A9`), unknown attribute types as `OID=#DERHEX`.
 */
export const format = (dn: DistinguishedName): string =>
  dn.rdns.map((rdn) => rdn.map((ava) => formatAva(ava, true)).join("+")).join(",")

/** Like `format` but keeps non-ASCII characters as they are (for humans; still RFC 4514). */
export const formatUnicode = (dn: DistinguishedName): string =>
  dn.rdns.map((rdn) => rdn.map((ava) => formatAva(ava, false)).join("+")).join(",")

// ---------------------------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------------------------

// RFC 4518 §2.4 prohibited code points: unassigned-ish sentinels, private use, non-characters.
const prohibited =
  /[\uE000-\uF8FF\uFDD0-\uFDEF\uFFFD\uFFFE\uFFFF\u{F0000}-\u{10FFFF}]|[\u{1FFFE}\u{1FFFF}\u{2FFFE}\u{2FFFF}\u{3FFFE}\u{3FFFF}\u{4FFFE}\u{4FFFF}\u{5FFFE}\u{5FFFF}\u{6FFFE}\u{6FFFF}\u{7FFFE}\u{7FFFF}\u{8FFFE}\u{8FFFF}\u{9FFFE}\u{9FFFF}\u{AFFFE}\u{AFFFF}\u{BFFFE}\u{BFFFF}\u{CFFFE}\u{CFFFF}\u{DFFFE}\u{DFFFF}\u{EFFFE}\u{EFFFF}]/u
// RFC 4518 §2.2: these white-space controls and every separator (Zs, Zl, Zp) map to SPACE.
const whiteSpace = /[\t\n\v\f\r\u0085\p{Zs}\p{Zl}\p{Zp}]/gu

/**
 * caseIgnoreMatch preparation (RFC 4518, with the stricter choices listed in the module
 * header): map white space to SPACE, NFKC, lower case (and final sigma to sigma), NFKC again,
 * then trim and collapse spaces. Undefined when the string has a code point RFC 4518
 * prohibits: such a value has no prepared form and is compared exactly.
 */
export const normalizeCaseIgnore = (value: string): string | undefined => {
  if (prohibited.test(value)) return undefined
  const mapped = value.replace(whiteSpace, " ").normalize("NFKC").toLowerCase().replace(/ς/g, "σ").normalize("NFKC")
  return mapped.replace(/ +/g, " ").trim()
}

const avaKey = (ava: AttributeTypeAndValue): string => {
  const type = attributeOid(ava.type) ?? ava.type.toLowerCase()
  // `der`, when present, is the source of truth; a string type decodes to its text.
  const text = ava.der === undefined ? ava.value : decodeDerString(fromHex(ava.der))
  if (text === undefined) return `${type}#${(ava.der ?? "").toLowerCase()}`
  const prepared = isKnownAttributeType(type) ? normalizeCaseIgnore(text) : undefined
  // "~" marks a caseIgnore-prepared value, "=" an exact one: the two never compare equal.
  return prepared === undefined ? `${type}=${text}` : `${type}~${prepared}`
}

const rdnKey = (rdn: Rdn): Array<string> => rdn.map(avaKey).sort()

/**
 * A string that is the same for two DNs exactly when `equals` says they are equal; use it as a
 * Map/Set key. Not meant for display.
 */
export const toKey = (dn: DistinguishedName): string => JSON.stringify(dn.rdns.map(rdnKey))

/** Structural equality under the RFC 4517 matching rules; RDN order significant, AVAs within an RDN unordered. */
export const equals = (a: DistinguishedName, b: DistinguishedName): boolean => toKey(a) === toKey(b)

// ---------------------------------------------------------------------------------------------
// Differences and nearest match (for "not authorized; nearest allowed DN is ..." messages)
// ---------------------------------------------------------------------------------------------

/**
 * One RDN-level difference between an expected and an actual DN. `index` is the position in
 * the expected DN (string order) where the difference is; `expected` is undefined when the
 * actual DN has an extra RDN there, `actual` is undefined when the actual DN lacks one.
 */
export interface Difference {
  readonly index: number
  readonly expected: Rdn | undefined
  readonly actual: Rdn | undefined
}

const typeOf = (ava: AttributeTypeAndValue): string => attributeOid(ava.type) ?? ava.type.toLowerCase()

/** Cost of replacing one RDN by another: 0 when equal, 0.5 per AVA with the same type but another value, 1 per other AVA, scaled to at most 1. */
const substitutionCost = (a: Rdn, b: Rdn): number => {
  const ka = rdnKey(a)
  const kb = rdnKey(b)
  if (JSON.stringify(ka) === JSON.stringify(kb)) return 0
  const remaining = [...b]
  let cost = 0
  for (const ava of a) {
    const exact = remaining.findIndex((x) => avaKey(x) === avaKey(ava))
    if (exact >= 0) {
      remaining.splice(exact, 1)
      continue
    }
    const sameType = remaining.findIndex((x) => typeOf(x) === typeOf(ava))
    if (sameType >= 0) {
      remaining.splice(sameType, 1)
      cost += 0.5
    } else cost += 1
  }
  cost += remaining.length
  return Math.min(1, cost / Math.max(a.length, b.length))
}

const align = (expected: DistinguishedName, actual: DistinguishedName) => {
  const e = expected.rdns
  const a = actual.rdns
  // d[i][j]: edit distance between e[i..] and a[j..].
  const d: Array<Array<number>> = Array.from({ length: e.length + 1 }, () => new Array<number>(a.length + 1).fill(0))
  const at = (i: number, j: number): number => d[i]?.[j] ?? 0
  for (let i = e.length; i >= 0; i--) {
    for (let j = a.length; j >= 0; j--) {
      const row = d[i] as Array<number>
      if (i === e.length) row[j] = a.length - j
      else if (j === a.length) row[j] = e.length - i
      else
        row[j] = Math.min(
          at(i + 1, j) + 1,
          at(i, j + 1) + 1,
          at(i + 1, j + 1) + substitutionCost(e[i] as Rdn, a[j] as Rdn)
        )
    }
  }
  const differences: Array<Difference> = []
  let i = 0
  let j = 0
  while (i < e.length || j < a.length) {
    const here = at(i, j)
    if (i < e.length && j < a.length) {
      const cost = substitutionCost(e[i] as Rdn, a[j] as Rdn)
      if (here === at(i + 1, j + 1) + cost) {
        if (cost > 0) differences.push({ index: i, expected: e[i], actual: a[j] })
        i++
        j++
        continue
      }
    }
    if (i < e.length && here === at(i + 1, j) + 1) {
      differences.push({ index: i, expected: e[i], actual: undefined })
      i++
    } else {
      differences.push({ index: i, expected: undefined, actual: a[j] })
      j++
    }
  }
  return { distance: at(0, 0), differences }
}

/**
 * The RDN-level differences between `expected` and `actual` (empty when `equals`), from an
 * edit-distance alignment, so a missing or extra RDN shows as one difference rather than
 * shifting every RDN after it.
 */
export const diff = (expected: DistinguishedName, actual: DistinguishedName): ReadonlyArray<Difference> =>
  align(expected, actual).differences

/** An edit distance between DNs: 0 when equal, 1 per missing, extra or different RDN (0.5 when only a value differs). */
export const distance = (a: DistinguishedName, b: DistinguishedName): number => align(a, b).distance

/** The candidate closest to `dn`, with its index in `candidates`, its distance and the differences. */
export interface Nearest {
  readonly candidate: DistinguishedName
  readonly index: number
  readonly distance: number
  readonly differences: ReadonlyArray<Difference>
}

/** The candidate nearest to `dn` (first one on ties); none when `candidates` is empty. */
export const nearest = (
  dn: DistinguishedName,
  candidates: ReadonlyArray<DistinguishedName>
): Option.Option<Nearest> => {
  let best: Nearest | undefined
  candidates.forEach((candidate, index) => {
    const { distance, differences } = align(candidate, dn)
    if (best === undefined || distance < best.distance) best = { candidate, index, distance, differences }
  })
  return Option.fromUndefinedOr(best)
}
