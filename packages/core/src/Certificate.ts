/**
 * X.509 certificates as the sidecar reads them from PEM files: a plain, immutable model of the
 * fields a TLS configuration cares about (subject and issuer DNs, validity, SAN, Key Usage,
 * Extended Key Usage, basicConstraints, key type, fingerprint) and the seed's certificate rules.
 *
 * Use it to validate configuration files before any socket opens: `parsePem` reads every
 * `CERTIFICATE` block of a file, `checkDualUse` applies the mirror rule ("if Key Usage / Extended
 * Key Usage is present it must allow both the client and the server use"), `checkRoleUsage` the
 * one-role rule, `checkChainOrder` the CA-file order ("the current instance's certificate first,
 * then its issuers") and `checkValidity` the validity window with an expiry horizon.
 *
 * It is pure: no sockets, no `openssl` at run time. DER is walked by a small, strict reader in
 * this module (a certificate with trailing bytes, a duplicated extension or a bad length is
 * refused); Node's `crypto.X509Certificate` (OpenSSL's parser) must accept the certificate too,
 * and supplies validity dates, the serial number and signature verification.
 *
 * What it deliberately does not do: path validation against a trust store (Node's `tls` does
 * that during the handshake), revocation, or name constraints. `checkChainOrder` checks the
 * file's order and signatures only, not trust.
 */
import { Data, Result } from "effect"
import { createHash, createPublicKey, type KeyObject, X509Certificate } from "node:crypto"
import * as Dn from "./DistinguishedName.ts"

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

/** RFC 5280 §4.2.1.3 Key Usage bit names, in bit order (bit 0 = digitalSignature). */
export const keyUsageNames = [
  "digitalSignature",
  "nonRepudiation",
  "keyEncipherment",
  "dataEncipherment",
  "keyAgreement",
  "keyCertSign",
  "cRLSign",
  "encipherOnly",
  "decipherOnly"
] as const

/** One RFC 5280 Key Usage bit name. */
export type KeyUsageName = (typeof keyUsageNames)[number]

/** Extended Key Usage OIDs by their RFC 5280 §4.2.1.12 names. */
export const extendedKeyUsageOids = {
  serverAuth: "1.3.6.1.5.5.7.3.1",
  clientAuth: "1.3.6.1.5.5.7.3.2",
  codeSigning: "1.3.6.1.5.5.7.3.3",
  emailProtection: "1.3.6.1.5.5.7.3.4",
  timeStamping: "1.3.6.1.5.5.7.3.8",
  ocspSigning: "1.3.6.1.5.5.7.3.9",
  anyExtendedKeyUsage: "2.5.29.37.0"
} as const

/** A well-known Extended Key Usage name. */
export type ExtendedKeyUsageName = keyof typeof extendedKeyUsageOids

/** Public key algorithm of a certificate (RSA includes RSASSA-PSS keys). */
export type PublicKeyType = "RSA" | "EC" | "Ed25519" | "other"

/** Subject Alternative Names by kind; IPs are printed canonically (`10.0.0.1`, `::1`). */
export interface SubjectAltNames {
  readonly dns: ReadonlyArray<string>
  readonly ip: ReadonlyArray<string>
  readonly email: ReadonlyArray<string>
  readonly uri: ReadonlyArray<string>
}

/** The basicConstraints extension. */
export interface BasicConstraints {
  readonly ca: boolean
  readonly pathLength: number | undefined
}

/** A parsed X.509 certificate. Built by {@link fromDer} or {@link parsePem}; never mutated. */
export interface Certificate {
  /** Subject DN. */
  readonly subject: Dn.DistinguishedName
  /** Subject DN as an RFC 4514 string (like `openssl x509 -nameopt RFC2253`). */
  readonly subjectString: string
  /** DER of the subject `Name`, exactly as in the certificate. */
  readonly subjectDer: Uint8Array
  /** Issuer DN. */
  readonly issuer: Dn.DistinguishedName
  /** Issuer DN as an RFC 4514 string. */
  readonly issuerString: string
  /** DER of the issuer `Name`, exactly as in the certificate. */
  readonly issuerDer: Uint8Array
  /** Serial number, upper-case hex as Node prints it. */
  readonly serialNumber: string
  /** Start of the validity period. */
  readonly notBefore: Date
  /** End of the validity period (inclusive, RFC 5280 §4.1.2.5). */
  readonly notAfter: Date
  /** SHA-256 of the DER, colon-separated upper-case hex (like Node's `fingerprint256`). */
  readonly fingerprint256: string
  /** Subject Alternative Names; all lists empty when the extension is absent. */
  readonly subjectAltNames: SubjectAltNames
  /** basicConstraints, or `undefined` when the extension is absent. */
  readonly basicConstraints: BasicConstraints | undefined
  /** Key Usage bits that are set, or `undefined` when the extension is absent. */
  readonly keyUsage: ReadonlyArray<KeyUsageName> | undefined
  /** Extended Key Usage OIDs, or `undefined` when the extension is absent. */
  readonly extendedKeyUsage: ReadonlyArray<string> | undefined
  /** Public key algorithm. */
  readonly publicKeyType: PublicKeyType
  /** DER of the SubjectPublicKeyInfo, exactly as in the certificate. */
  readonly spki: Uint8Array
  /** The certificate, PEM (normalised: one block, 64-column base64, `\n` line ends). */
  readonly pem: string
  /** The certificate, DER. */
  readonly der: Uint8Array
  /** Where it was read from (a file path), when known. */
  readonly source: string | undefined
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/**
 * A certificate file or blob that cannot be read. `NoCertificate`: no CERTIFICATE block at all;
 * `MalformedPem`: a broken PEM block (no END line, bad base64, headers, unsupported label);
 * `MalformedDer`: a block whose content is not an X.509 certificate.
 */
export class CertificateError extends Data.TaggedError("CertificateError")<{
  readonly reason: "NoCertificate" | "MalformedPem" | "MalformedDer"
  readonly source: string | undefined
  /** 0-based index of the offending CERTIFICATE block, when there is one. */
  readonly index: number | undefined
  /** 1-based line of the offending block's BEGIN line, when known. */
  readonly line: number | undefined
  readonly message: string
  readonly cause?: unknown
}> {}

/** Which use a certificate must allow: both TLS roles (mirroring), or one of them. */
export type UsageRole = "dual" | "server" | "client"

/**
 * A certificate whose Key Usage or Extended Key Usage does not allow the required TLS role(s).
 * For `NotDualUse` every listed usage is required; for `NotForRole` the missing Key Usage lists
 * the alternatives, any one of which would do.
 */
export class CertificateUsageError extends Data.TaggedError("CertificateUsageError")<{
  readonly reason: "NotDualUse" | "NotForRole"
  readonly role: UsageRole
  readonly subject: string
  readonly source: string | undefined
  readonly missingKeyUsage: ReadonlyArray<KeyUsageName>
  readonly missingExtendedKeyUsage: ReadonlyArray<"serverAuth" | "clientAuth">
  readonly message: string
}> {}

/**
 * A chain (CA file) in the wrong order. `index` is the first certificate that is not the issuer
 * of the one before it: `IssuerMismatch` when its subject is not the previous issuer DN,
 * `SignatureMismatch` when the DN matches but its key did not sign the previous certificate.
 */
export class ChainOrderError extends Data.TaggedError("ChainOrderError")<{
  readonly reason: "EmptyChain" | "IssuerMismatch" | "SignatureMismatch"
  readonly index: number
  readonly subject: string | undefined
  readonly expectedIssuer: string | undefined
  readonly source: string | undefined
  readonly message: string
}> {}

/** A certificate outside its validity period at `now`. */
export class CertificateValidityError extends Data.TaggedError("CertificateValidityError")<{
  readonly reason: "Expired" | "NotYetValid"
  readonly subject: string
  readonly source: string | undefined
  readonly notBefore: Date
  readonly notAfter: Date
  readonly now: Date
  readonly message: string
}> {}

/** Outcome of {@link checkValidity} when the certificate is currently valid. */
export type ValidityStatus =
  | { readonly _tag: "Valid"; readonly secondsLeft: number }
  | { readonly _tag: "ExpiresSoon"; readonly secondsLeft: number; readonly notAfter: Date; readonly message: string }

// ---------------------------------------------------------------------------------------------
// Constructors
// ---------------------------------------------------------------------------------------------

const describeSource = (source: string | undefined): string => source ?? "certificate text"

const pemLabels = new Set(["CERTIFICATE", "X509 CERTIFICATE"])

/**
 * Read every `CERTIFICATE` block of a PEM text, in order. Other blocks (a private key in the
 * same file, for instance) and text between blocks are ignored, as OpenSSL does. Fails when there
 * is no certificate, or when any certificate block is malformed; the error names `source`.
 */
export const parsePem = (
  text: string,
  source?: string
): Result.Result<ReadonlyArray<Certificate>, CertificateError> => {
  const lines = text.split(/\r?\n/)
  const out: Array<Certificate> = []
  const fail = (
    reason: CertificateError["reason"],
    index: number | undefined,
    line: number | undefined,
    message: string,
    cause?: unknown
  ) =>
    Result.fail(
      new CertificateError({
        reason,
        source,
        index,
        line,
        message: `${describeSource(source)}: ${message}`,
        ...(cause === undefined ? {} : { cause })
      })
    )
  let i = 0
  while (i < lines.length) {
    const begin = /^-----BEGIN ([A-Z0-9 .]+)-----$/.exec((lines[i] ?? "").trim())
    if (begin === null) {
      // Text around the blocks is allowed (`openssl x509 -text`, "Bag Attributes"), but not a
      // file that ends in the middle of a BEGIN line: read while it is being written, it would
      // otherwise parse as the certificates before it (a chain without its intermediates).
      const text = (lines[i] ?? "").trim()
      if (i === lines.length - 1 && text !== "" && ("-----BEGIN ".startsWith(text) || text.startsWith("-----BEGIN"))) {
        return fail(
          "MalformedPem",
          out.length,
          i + 1,
          `the file ends in an incomplete PEM BEGIN line (line ${i + 1}: ${JSON.stringify(text.slice(0, 40))}); is it cut short?`
        )
      }
      i++
      continue
    }
    const label = begin[1] ?? ""
    const beginLine = i + 1
    const endIndex = lines.findIndex((l, j) => j > i && l.trim() === `-----END ${label}-----`)
    const isCert = pemLabels.has(label) || label === "TRUSTED CERTIFICATE"
    if (endIndex < 0) {
      if (!isCert) {
        i++
        continue
      }
      return fail(
        "MalformedPem",
        out.length,
        beginLine,
        `the PEM block "${label}" at line ${beginLine} has no END line`
      )
    }
    if (isCert) {
      const index = out.length
      const where = `certificate #${index + 1} (line ${beginLine})`
      if (label === "TRUSTED CERTIFICATE") {
        return fail(
          "MalformedPem",
          index,
          beginLine,
          `${where} is an OpenSSL "TRUSTED CERTIFICATE" block, which is not supported; convert it with \`openssl x509 -in FILE -out FILE.pem\``
        )
      }
      const body = lines.slice(i + 1, endIndex).map((l) => l.trim())
      if (body.some((l) => l.includes(":"))) {
        return fail("MalformedPem", index, beginLine, `${where} has PEM headers; a CERTIFICATE block must not have any`)
      }
      const base64 = body.join("")
      const der = decodeBase64Strict(base64)
      if (der === undefined) {
        return fail("MalformedPem", index, beginLine, `${where} is not valid base64`)
      }
      const cert = decodeCertificate(der, source)
      if (Result.isFailure(cert)) {
        return fail(
          "MalformedDer",
          index,
          beginLine,
          `${where} is not a valid X.509 certificate: ${cert.failure.message}`,
          cert.failure.cause
        )
      }
      out.push(cert.success)
    }
    i = endIndex + 1
  }
  if (out.length === 0) {
    return fail("NoCertificate", undefined, undefined, 'no "-----BEGIN CERTIFICATE-----" block found')
  }
  return Result.succeed(out)
}

/** Build a {@link Certificate} from DER. */
export const fromDer = (der: Uint8Array, source?: string): Result.Result<Certificate, CertificateError> =>
  Result.mapError(
    decodeCertificate(der, source),
    (e) =>
      new CertificateError({
        reason: "MalformedDer",
        source,
        index: undefined,
        line: undefined,
        message: `${describeSource(source)}: not a valid X.509 certificate: ${e.message}`,
        ...(e.cause === undefined ? {} : { cause: e.cause })
      })
  )

// ---------------------------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------------------------

/** The well-known name of an Extended Key Usage OID, if it has one. */
export const extendedKeyUsageName = (oid: string): ExtendedKeyUsageName | undefined =>
  (Object.keys(extendedKeyUsageOids) as Array<ExtendedKeyUsageName>).find((n) => extendedKeyUsageOids[n] === oid)

/** Extended Key Usage of a certificate as names where known, dotted OIDs otherwise. */
export const extendedKeyUsageNames = (cert: Certificate): ReadonlyArray<string> | undefined =>
  cert.extendedKeyUsage?.map((oid) => extendedKeyUsageName(oid) ?? oid)

/** Whether the Key Usage extension is absent or has `usage` set. */
export const allowsKeyUsage = (cert: Certificate, usage: KeyUsageName): boolean =>
  cert.keyUsage === undefined || cert.keyUsage.includes(usage)

/** Whether the Extended Key Usage extension is absent or lists `usage` (a name or an OID). */
export const allowsExtendedKeyUsage = (cert: Certificate, usage: ExtendedKeyUsageName | (string & {})): boolean =>
  cert.extendedKeyUsage === undefined ||
  cert.extendedKeyUsage.includes(extendedKeyUsageOids[usage as ExtendedKeyUsageName] ?? usage)

/** Whether the certificate's issuer DN equals its subject DN (a root or a self-issued CA). */
export const isSelfIssued = (cert: Certificate): boolean =>
  namesEqual(cert.issuerDer, cert.issuer, cert.subjectDer, cert.subject)

/** The certificate's public key as a Node `KeyObject`. */
export const publicKey = (cert: Certificate): KeyObject =>
  createPublicKey({ key: Buffer.from(cert.spki), format: "der", type: "spki" })

// ---------------------------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------------------------

const unsupportedCertificateHint =
  'Peers reject such a certificate during the handshake with "sslv3 alert unsupported certificate" ' +
  "(error:14094413:SSL routines:SSL3_READ_BYTES)."

const listOf = (items: ReadonlyArray<string>, joiner: "and" | "or"): string =>
  items.length <= 1 ? (items[0] ?? "") : `${items.slice(0, -1).join(", ")} ${joiner} ${items[items.length - 1]}`

/**
 * The mirror rule (seed: "Special Considerations for Certificates for Mirror Members"): one
 * certificate serves as both TLS client and server, so if Key Usage is present it must include
 * digitalSignature (client) AND keyEncipherment (server), and if Extended Key Usage is present it
 * must include clientAuth AND serverAuth. Neither extension present is valid. The rule is about
 * the extension bits as the seed writes it, whatever the key type.
 */
export const checkDualUse = (cert: Certificate): Result.Result<Certificate, CertificateUsageError> => {
  const missingKeyUsage = (["digitalSignature", "keyEncipherment"] as const).filter((u) => !allowsKeyUsage(cert, u))
  const missingExtendedKeyUsage = (["clientAuth", "serverAuth"] as const).filter(
    (u) => !allowsExtendedKeyUsage(cert, u)
  )
  if (missingKeyUsage.length === 0 && missingExtendedKeyUsage.length === 0) return Result.succeed(cert)
  const problems = [
    ...(missingKeyUsage.length > 0 ? [`its Key Usage lacks ${listOf(missingKeyUsage, "and")}`] : []),
    ...(missingExtendedKeyUsage.length > 0
      ? [`its Extended Key Usage lacks ${listOf(missingExtendedKeyUsage, "and")}`]
      : [])
  ]
  return Result.fail(
    new CertificateUsageError({
      reason: "NotDualUse",
      role: "dual",
      subject: cert.subjectString,
      source: cert.source,
      missingKeyUsage,
      missingExtendedKeyUsage,
      message:
        `${where(cert)} cannot serve as both TLS client and server (required for mirroring): ` +
        `${problems.join(" and ")}. ${unsupportedCertificateHint} Reissue it with Key Usage ` +
        "digitalSignature + keyEncipherment and Extended Key Usage serverAuth + clientAuth, or without these extensions."
    })
  )
}

/**
 * Whether the certificate may be used in one TLS role, by OpenSSL's purpose rules (what a peer
 * checks while verifying it): a server needs Key Usage (if present) with one of digitalSignature,
 * keyEncipherment, keyAgreement and Extended Key Usage (if present) with serverAuth; a client
 * needs Key Usage with one of digitalSignature, keyAgreement and Extended Key Usage with
 * clientAuth. For configurations that are only a server or only a client.
 */
export const checkRoleUsage = (
  cert: Certificate,
  role: "server" | "client"
): Result.Result<Certificate, CertificateUsageError> => {
  const acceptable: ReadonlyArray<KeyUsageName> =
    role === "server" ? ["digitalSignature", "keyEncipherment", "keyAgreement"] : ["digitalSignature", "keyAgreement"]
  const ekuNeeded = role === "server" ? "serverAuth" : "clientAuth"
  const kuOk = cert.keyUsage === undefined || acceptable.some((u) => cert.keyUsage?.includes(u))
  const ekuOk = allowsExtendedKeyUsage(cert, ekuNeeded)
  if (kuOk && ekuOk) return Result.succeed(cert)
  const problems = [
    ...(kuOk ? [] : [`its Key Usage has none of ${listOf(acceptable, "or")}`]),
    ...(ekuOk ? [] : [`its Extended Key Usage lacks ${ekuNeeded}`])
  ]
  return Result.fail(
    new CertificateUsageError({
      reason: "NotForRole",
      role,
      subject: cert.subjectString,
      source: cert.source,
      missingKeyUsage: kuOk ? [] : acceptable,
      missingExtendedKeyUsage: ekuOk ? [] : [ekuNeeded],
      message: `${where(cert)} cannot be used as a TLS ${role}: ${problems.join(" and ")}. ${unsupportedCertificateHint}`
    })
  )
}

/**
 * The CA-file order (seed: "with the current instance's certificate first", then its issuers):
 * each certificate's issuer DN must equal the next certificate's subject DN and its signature
 * must verify with the next certificate's public key. Reports the first certificate that breaks
 * the order. A single certificate is a valid chain; an empty list is not.
 */
export const checkChainOrder = (
  certs: ReadonlyArray<Certificate>
): Result.Result<ReadonlyArray<Certificate>, ChainOrderError> => {
  if (certs.length === 0) {
    return Result.fail(
      new ChainOrderError({
        reason: "EmptyChain",
        index: 0,
        subject: undefined,
        expectedIssuer: undefined,
        source: undefined,
        message: "the certificate chain is empty"
      })
    )
  }
  for (let i = 0; i + 1 < certs.length; i++) {
    const child = certs[i]!
    const parent = certs[i + 1]!
    const dnMatches = namesEqual(child.issuerDer, child.issuer, parent.subjectDer, parent.subject)
    const signed = dnMatches && verifySignature(child, parent)
    if (!signed) {
      const position = `certificate #${i + 2} (${parent.subjectString})`
      return Result.fail(
        new ChainOrderError({
          reason: dnMatches ? "SignatureMismatch" : "IssuerMismatch",
          index: i + 1,
          subject: parent.subjectString,
          expectedIssuer: child.issuerString,
          source: parent.source,
          message:
            `${parent.source === undefined ? "" : `${parent.source}: `}certificates are out of order: ` +
            (dnMatches
              ? `${position} has the issuer's name but its key did not sign certificate #${i + 1} (${child.subjectString})`
              : `${position} is not the issuer of certificate #${i + 1} (${child.subjectString}), which was issued by ${child.issuerString}`) +
            "; the file must hold this instance's certificate first, then each issuer in turn"
        })
      )
    }
  }
  return Result.succeed(certs)
}

/**
 * The validity window at `now`: an error when expired or not yet valid, `ExpiresSoon` when it
 * expires within `horizonSeconds`, `Valid` otherwise. `notAfter` itself is still valid.
 */
export const checkValidity = (
  cert: Certificate,
  now: Date,
  horizonSeconds: number
): Result.Result<ValidityStatus, CertificateValidityError> => {
  const common = {
    subject: cert.subjectString,
    source: cert.source,
    notBefore: cert.notBefore,
    notAfter: cert.notAfter,
    now
  }
  if (now.getTime() > cert.notAfter.getTime()) {
    return Result.fail(
      new CertificateValidityError({
        ...common,
        reason: "Expired",
        message: `${where(cert)} expired at ${cert.notAfter.toISOString()} (now ${now.toISOString()})`
      })
    )
  }
  if (now.getTime() < cert.notBefore.getTime()) {
    return Result.fail(
      new CertificateValidityError({
        ...common,
        reason: "NotYetValid",
        message: `${where(cert)} is not valid before ${cert.notBefore.toISOString()} (now ${now.toISOString()})`
      })
    )
  }
  const secondsLeft = Math.floor((cert.notAfter.getTime() - now.getTime()) / 1000)
  if (secondsLeft < horizonSeconds) {
    return Result.succeed({
      _tag: "ExpiresSoon",
      secondsLeft,
      notAfter: cert.notAfter,
      message: `${where(cert)} expires at ${cert.notAfter.toISOString()}, in ${formatDuration(secondsLeft)}`
    })
  }
  return Result.succeed({ _tag: "Valid", secondsLeft })
}

// ---------------------------------------------------------------------------------------------
// Internals: messages
// ---------------------------------------------------------------------------------------------

const where = (cert: Certificate): string =>
  `${cert.source === undefined ? "" : `${cert.source}: `}certificate "${cert.subjectString}"`

const formatDuration = (seconds: number): string => {
  const days = Math.floor(seconds / 86_400)
  if (days >= 1) return `${days} day${days === 1 ? "" : "s"}`
  const hours = Math.floor(seconds / 3_600)
  if (hours >= 1) return `${hours} hour${hours === 1 ? "" : "s"}`
  return `${Math.max(0, Math.floor(seconds / 60))} minutes`
}

// ---------------------------------------------------------------------------------------------
// Internals: names and signatures
// ---------------------------------------------------------------------------------------------

const bytesEqual = (a: Uint8Array, b: Uint8Array): boolean =>
  a.length === b.length && a.every((byte, i) => byte === b[i])

/** Identical DER is equal; otherwise compare under the RFC 4517 matching rules. */
const namesEqual = (aDer: Uint8Array, a: Dn.DistinguishedName, bDer: Uint8Array, b: Dn.DistinguishedName): boolean =>
  bytesEqual(aDer, bDer) || Dn.equals(a, b)

const verifySignature = (child: Certificate, parent: Certificate): boolean => {
  try {
    return new X509Certificate(child.der).verify(publicKey(parent))
  } catch {
    // A key type OpenSSL cannot verify with is, for this check, a key that did not sign.
    return false
  }
}

// ---------------------------------------------------------------------------------------------
// Internals: decoding
// ---------------------------------------------------------------------------------------------

/** A decoding failure inside this module; surfaced as a CertificateError. */
interface DecodeFailure {
  readonly message: string
  readonly cause?: unknown
}

const decodeFailure = (message: string, cause: unknown): DecodeFailure => ({ message, cause })

const decodeBase64Strict = (text: string): Uint8Array | undefined => {
  if (text.length === 0 || text.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(text)) return undefined
  const bytes = Buffer.from(text, "base64")
  return bytes.toString("base64") === text ? new Uint8Array(bytes) : undefined
}

const toPem = (der: Uint8Array): string => {
  const b64 = Buffer.from(der).toString("base64")
  const lines = b64.match(/.{1,64}/g) ?? []
  return `-----BEGIN CERTIFICATE-----\n${lines.join("\n")}\n-----END CERTIFICATE-----\n`
}

const fingerprint = (der: Uint8Array): string =>
  (createHash("sha256").update(der).digest("hex").toUpperCase().match(/../g) ?? []).join(":")

const extensionOids = {
  keyUsage: "2.5.29.15",
  subjectAltName: "2.5.29.17",
  basicConstraints: "2.5.29.19",
  extendedKeyUsage: "2.5.29.37"
} as const

const decodeCertificate = (
  input: Uint8Array,
  source: string | undefined
): Result.Result<Certificate, DecodeFailure> => {
  const der = new Uint8Array(input)
  let node: X509Certificate
  try {
    node = new X509Certificate(der)
  } catch (cause) {
    return Result.fail(decodeFailure(cause instanceof Error ? cause.message : String(cause), cause))
  }
  try {
    const cert = readTlv(der, 0, der.length, "Certificate")
    if (cert.tag !== TAG_SEQUENCE || cert.end !== der.length) throw new DerError("trailing data after the certificate")
    const [tbs] = children(der, cert)
    if (tbs === undefined || tbs.tag !== TAG_SEQUENCE) throw new DerError("no tbsCertificate")
    const fields = children(der, tbs)
    let k = 0
    if (fields[k]?.tag === 0xa0) k++ // [0] EXPLICIT version
    const [serial, _signature, issuer, _validity, subject, spki] = fields.slice(k, k + 6)
    if (serial?.tag !== TAG_INTEGER) throw new DerError("no serialNumber")
    if (issuer?.tag !== TAG_SEQUENCE || subject?.tag !== TAG_SEQUENCE || spki?.tag !== TAG_SEQUENCE) {
      throw new DerError("no issuer, subject or subjectPublicKeyInfo")
    }
    const extensions = new Map<string, Uint8Array>()
    for (const field of fields.slice(k + 6)) {
      if (field.tag !== 0xa3) continue // [1] issuerUniqueID, [2] subjectUniqueID
      const [list] = children(der, field)
      if (list === undefined || list.tag !== TAG_SEQUENCE) throw new DerError("bad extensions")
      for (const ext of children(der, list)) {
        const parts = children(der, ext)
        const oid = parts[0]
        const value = parts[parts.length - 1]
        if (oid?.tag !== TAG_OID || value?.tag !== TAG_OCTET_STRING) throw new DerError("bad extension")
        const id = decodeOid(contents(der, oid))
        // RFC 5280 §4.2: a certificate MUST NOT include more than one instance of an extension.
        if (extensions.has(id)) throw new DerError(`extension ${id} appears twice`)
        extensions.set(id, contents(der, value))
      }
    }
    const subjectDer = der.slice(subject.start, subject.end)
    const issuerDer = der.slice(issuer.start, issuer.end)
    const subjectDn = decodeName(subjectDer, "subject")
    const issuerDn = decodeName(issuerDer, "issuer")
    const ku = extensions.get(extensionOids.keyUsage)
    const eku = extensions.get(extensionOids.extendedKeyUsage)
    const bc = extensions.get(extensionOids.basicConstraints)
    const san = extensions.get(extensionOids.subjectAltName)
    return Result.succeed({
      subject: subjectDn,
      subjectString: Dn.format(subjectDn),
      subjectDer,
      issuer: issuerDn,
      issuerString: Dn.format(issuerDn),
      issuerDer,
      serialNumber: node.serialNumber.toUpperCase(),
      notBefore: node.validFromDate,
      notAfter: node.validToDate,
      fingerprint256: fingerprint(der),
      subjectAltNames: san === undefined ? { dns: [], ip: [], email: [], uri: [] } : decodeSubjectAltNames(san),
      basicConstraints: bc === undefined ? undefined : decodeBasicConstraints(bc),
      keyUsage: ku === undefined ? undefined : decodeKeyUsage(ku),
      extendedKeyUsage: eku === undefined ? undefined : decodeExtendedKeyUsage(eku),
      publicKeyType: keyTypeOf(node.publicKey),
      spki: der.slice(spki.start, spki.end),
      pem: toPem(der),
      der,
      source
    })
  } catch (cause) {
    // DerError from this module's reader, or an error thrown by DistinguishedName/Node.
    return Result.fail(decodeFailure(cause instanceof Error ? cause.message : String(cause), cause))
  }
}

const decodeName = (der: Uint8Array, which: string): Dn.DistinguishedName => {
  try {
    return Dn.fromDer(der)
  } catch (cause) {
    throw new DerError(`bad ${which} name: ${cause instanceof Error ? cause.message : String(cause)}`)
  }
}

const keyTypeOf = (key: KeyObject): PublicKeyType => {
  switch (key.asymmetricKeyType) {
    case "rsa":
    case "rsa-pss":
      return "RSA"
    case "ec":
      return "EC"
    case "ed25519":
      return "Ed25519"
    default:
      return "other"
  }
}

const decodeKeyUsage = (value: Uint8Array): ReadonlyArray<KeyUsageName> => {
  const bits = readTlv(value, 0, value.length, "KeyUsage")
  if (bits.tag !== TAG_BIT_STRING || bits.end !== value.length) throw new DerError("bad Key Usage")
  const body = contents(value, bits)
  const unused = body[0]
  if (unused === undefined || unused > 7) throw new DerError("bad Key Usage")
  return keyUsageNames.filter((_, bit) => {
    const byte = body[1 + (bit >> 3)]
    return byte !== undefined && (byte & (0x80 >> (bit & 7))) !== 0
  })
}

const decodeExtendedKeyUsage = (value: Uint8Array): ReadonlyArray<string> => {
  const seq = readTlv(value, 0, value.length, "ExtendedKeyUsage")
  if (seq.tag !== TAG_SEQUENCE || seq.end !== value.length) throw new DerError("bad Extended Key Usage")
  return children(value, seq).map((oid) => {
    if (oid.tag !== TAG_OID) throw new DerError("bad Extended Key Usage")
    return decodeOid(contents(value, oid))
  })
}

const decodeBasicConstraints = (value: Uint8Array): BasicConstraints => {
  const seq = readTlv(value, 0, value.length, "BasicConstraints")
  if (seq.tag !== TAG_SEQUENCE || seq.end !== value.length) throw new DerError("bad basicConstraints")
  let ca = false
  let pathLength: number | undefined
  for (const item of children(value, seq)) {
    const body = contents(value, item)
    if (item.tag === TAG_BOOLEAN && body.length === 1) ca = body[0] !== 0
    else if (item.tag === TAG_INTEGER && body.length >= 1 && body.length <= 4 && (body[0] ?? 0) < 0x80) {
      pathLength = body.reduce((n, b) => n * 256 + b, 0)
    } else throw new DerError("bad basicConstraints")
  }
  return { ca, pathLength }
}

const decodeSubjectAltNames = (value: Uint8Array): SubjectAltNames => {
  const seq = readTlv(value, 0, value.length, "SubjectAltName")
  if (seq.tag !== TAG_SEQUENCE || seq.end !== value.length) throw new DerError("bad Subject Alternative Name")
  const dns: Array<string> = []
  const ip: Array<string> = []
  const email: Array<string> = []
  const uri: Array<string> = []
  const ascii = (bytes: Uint8Array) => Buffer.from(bytes).toString("latin1")
  for (const name of children(value, seq)) {
    const body = contents(value, name)
    switch (name.tag) {
      case 0x81: // [1] rfc822Name
        email.push(ascii(body))
        break
      case 0x82: // [2] dNSName
        dns.push(ascii(body))
        break
      case 0x86: // [6] uniformResourceIdentifier
        uri.push(ascii(body))
        break
      case 0x87: // [7] iPAddress
        ip.push(formatIp(body))
        break
      default: // otherName, x400Address, directoryName, ediPartyName, registeredID: not used by TLS
        break
    }
  }
  return { dns, ip, email, uri }
}

const formatIp = (bytes: Uint8Array): string => {
  if (bytes.length === 4) return [...bytes].join(".")
  if (bytes.length !== 16) throw new DerError(`an IP address SAN of ${bytes.length} bytes`)
  const groups = Array.from({ length: 8 }, (_, i) => ((bytes[2 * i] ?? 0) << 8) | (bytes[2 * i + 1] ?? 0))
  // RFC 5952: compress the longest run (>= 2) of zero groups, the first one on a tie.
  let bestStart = -1
  let bestLength = 0
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++
      continue
    }
    let j = i
    while (j < 8 && groups[j] === 0) j++
    if (j - i > bestLength && j - i >= 2) {
      bestStart = i
      bestLength = j - i
    }
    i = j
  }
  const hex = groups.map((g) => g.toString(16))
  if (bestStart < 0) return hex.join(":")
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLength).join(":")}`
}

const decodeOid = (body: Uint8Array): string => {
  if (body.length === 0) throw new DerError("empty OID")
  const arcs: Array<number> = []
  let value = 0
  for (const [i, byte] of body.entries()) {
    if (value === 0 && byte === 0x80) throw new DerError("non-minimal OID")
    value = value * 128 + (byte & 0x7f)
    if (value > Number.MAX_SAFE_INTEGER) throw new DerError("OID arc too large")
    if ((byte & 0x80) === 0) {
      arcs.push(value)
      value = 0
    } else if (i === body.length - 1) throw new DerError("truncated OID")
  }
  const first = arcs[0] ?? 0
  const head = first < 40 ? [0, first] : first < 80 ? [1, first - 40] : [2, first - 80]
  return [...head, ...arcs.slice(1)].join(".")
}

// A minimal strict DER reader: definite lengths only, low tag numbers only, no overruns.

const TAG_BOOLEAN = 0x01
const TAG_INTEGER = 0x02
const TAG_BIT_STRING = 0x03
const TAG_OCTET_STRING = 0x04
const TAG_OID = 0x06
const TAG_SEQUENCE = 0x30

class DerError extends Error {}

interface Tlv {
  readonly tag: number
  /** Offset of the tag byte. */
  readonly start: number
  /** Offset of the first content byte. */
  readonly body: number
  /** Offset just past the value. */
  readonly end: number
}

const readTlv = (buf: Uint8Array, offset: number, limit: number, what: string): Tlv => {
  const tag = buf[offset]
  if (tag === undefined || offset + 2 > limit) throw new DerError(`truncated ${what}`)
  if ((tag & 0x1f) === 0x1f) throw new DerError(`unsupported high tag number in ${what}`)
  const first = buf[offset + 1] ?? 0
  let length = first
  let body = offset + 2
  if (first & 0x80) {
    const count = first & 0x7f
    if (count === 0 || count > 4) throw new DerError(`unsupported length in ${what}`)
    if (body + count > limit) throw new DerError(`truncated ${what}`)
    length = 0
    for (let i = 0; i < count; i++) length = length * 256 + (buf[body + i] ?? 0)
    if (length < 128 || (count > 1 && buf[body] === 0)) throw new DerError(`non-minimal length in ${what}`)
    body += count
  }
  const end = body + length
  if (end > limit) throw new DerError(`truncated ${what}`)
  return { tag, start: offset, body, end }
}

const children = (buf: Uint8Array, parent: Tlv): Array<Tlv> => {
  if ((parent.tag & 0x20) === 0) throw new DerError("expected a constructed value")
  const out: Array<Tlv> = []
  for (let at = parent.body; at < parent.end; ) {
    const child = readTlv(buf, at, parent.end, "element")
    out.push(child)
    at = child.end
  }
  return out
}

const contents = (buf: Uint8Array, tlv: Tlv): Uint8Array => buf.subarray(tlv.body, tlv.end)
