/**
 * Certificate revocation lists (RFC 5280 §5) as a TLS configuration's `crlFile` holds them: the
 * plain facts Sleeve needs to judge a CRL before it is put in force (who issued it, whether that
 * CA's key signed it, when it was issued and when the next one is due) and, for the degraded
 * `crlStale: warn` mode, whether a given certificate is listed.
 *
 * Parsing is @peculiar/x509's `X509Crl` (PEM and DER, entries, extensions), loaded on the first
 * parse (internal/x509Lazy.ts), so that configurations without CRLs never pay for it; the signature is
 * checked with Node's `crypto.verify` (OpenSSL) over the CRL's to-be-signed bytes exactly as they
 * are in the file, with the public key of the CA certificate whose subject DN equals the CRL's
 * issuer DN (structured comparison, never strings). Everything here is synchronous, so
 * `sleeve check`, activation and reload can use it as they use the certificate checks.
 *
 * During a handshake OpenSSL itself applies the CRLs (Node adds them to the context's store with
 * `X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL`: every certificate of the peer's chain,
 * trust anchor included, must be covered by a current CRL of its issuer). This module exists so
 * that a CRL OpenSSL would later refuse at handshake time (unsigned by any configured CA, not yet
 * valid, unreadable) is refused at load time instead, and so that staleness can be reported.
 *
 * What it deliberately does not do: fetch CRLs (CRL distribution points, OCSP), delta CRLs or
 * indirect CRLs (OpenSSL handles those if present in the file; this module judges each CRL on
 * its own issuer), or path validation.
 */
import { Data, Result } from "effect"
import { constants as cryptoConstants, verify as cryptoVerify } from "node:crypto"
import * as Certificate from "./Certificate.ts"
import * as Dn from "./DistinguishedName.ts"
import type { x509 } from "./internal/x509.ts"
import * as X509 from "./internal/x509Lazy.ts"

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

/** One CRL read from a file. */
export interface RevocationList {
  /** The issuer DN (structured). */
  readonly issuer: Dn.DistinguishedName
  /** The issuer DN as an RFC 4514 string (for messages). */
  readonly issuerString: string
  readonly thisUpdate: Date
  /** When the next CRL is due; `undefined` when the CRL does not say (it then never goes stale). */
  readonly nextUpdate: Date | undefined
  /** The CRL number extension, as decimal text, when present. */
  readonly crlNumber: string | undefined
  /** How many certificates it lists. */
  readonly revokedCount: number
  /** Position in its file, 1-based (for messages). */
  readonly index: number
  /** The file it came from. */
  readonly source: string | undefined
  /** The CRL's PEM block as it is in the file. */
  readonly pem: string
  /** The parsed CRL (@peculiar/x509). */
  readonly x509: x509.X509Crl
}

/** Why a CRL file could not be used. */
export class CrlError extends Data.TaggedError("CrlError")<{
  readonly reason: "NoCrl" | "Malformed" | "NoIssuer" | "BadSignature" | "NotYetValid" | "IssuerNotForCrl"
  readonly message: string
}> {}

/** A certificate found in a CRL. */
export interface Revocation {
  readonly serialNumber: string
  readonly issuerString: string
  readonly revocationDate: Date
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

const pemBlock = /-----BEGIN X509 CRL-----\s*([A-Za-z0-9+/=\s]*?)\s*-----END X509 CRL-----/g

/** Reads every `X509 CRL` block of a PEM text, in order. */
export const parsePem = (text: string, source?: string): Result.Result<ReadonlyArray<RevocationList>, CrlError> => {
  const out: Array<RevocationList> = []
  const where = source === undefined ? "" : `${source}: `
  let m: RegExpExecArray | null
  pemBlock.lastIndex = 0
  // biome-ignore lint/suspicious/noAssignInExpressions: the usual exec loop
  while ((m = pemBlock.exec(text)) !== null) {
    const index = out.length + 1
    const lib = X509.x509()
    let crl: x509.X509Crl
    try {
      crl = new lib.X509Crl(Buffer.from((m[1] ?? "").replace(/\s+/g, ""), "base64"))
      // Touch the fields that are decoded lazily, so a broken CRL fails here, not later.
      void crl.thisUpdate
      void crl.nextUpdate
      void crl.entries.length
    } catch (e) {
      return Result.fail(
        new CrlError({
          reason: "Malformed",
          message: `${where}CRL #${index} cannot be parsed: ${(e as Error).message}`
        })
      )
    }
    const issuer = Dn.decodeDer(new Uint8Array(crl.issuerName.toArrayBuffer()))
    if (Result.isFailure(issuer)) {
      return Result.fail(
        new CrlError({
          reason: "Malformed",
          message: `${where}CRL #${index} has an unreadable issuer: ${issuer.failure.message}`
        })
      )
    }
    const number = crl.extensions.find((e) => e.type === "2.5.29.20")
    out.push({
      issuer: issuer.success,
      issuerString: Dn.format(issuer.success),
      thisUpdate: crl.thisUpdate,
      nextUpdate: crl.nextUpdate,
      crlNumber: number === undefined ? undefined : crlNumberOf(number.value),
      revokedCount: crl.entries.length,
      index,
      source,
      pem: `${m[0]}\n`,
      x509: crl
    })
  }
  // A file cut short (written in place while it was read) ends in a block without its END line:
  // that is a broken file, not a shorter list of CRLs.
  const begun = text.match(/-----BEGIN X509 CRL-----/g)?.length ?? 0
  if (begun > out.length)
    return Result.fail(
      new CrlError({
        reason: "Malformed",
        message: `${where}CRL #${out.length + 1} is incomplete: a BEGIN X509 CRL line without its END line (a file cut short?)`
      })
    )
  if (out.length === 0)
    return Result.fail(new CrlError({ reason: "NoCrl", message: `${source ?? "the text"} holds no X509 CRL block` }))
  return Result.succeed(out)
}

/** The CRLNumber extension value (an ASN.1 INTEGER) as decimal text. */
const crlNumberOf = (value: ArrayBuffer): string | undefined => {
  const b = new Uint8Array(value)
  if (b[0] !== 0x02 || b.length < 3) return undefined
  let n = 0n
  for (const byte of b.subarray(2, 2 + (b[1] ?? 0))) n = (n << 8n) | BigInt(byte)
  return n.toString()
}

// ---------------------------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------------------------

/** Node's `crypto.verify` arguments for a CRL's signature algorithm, or a message saying why not. */
const verifyParams = (alg: {
  readonly name: string
  readonly hash?: { readonly name: string }
  readonly saltLength?: number
}): Result.Result<{ hash: string | null; padding?: number; saltLength?: number }, string> => {
  const hash = alg.hash?.name?.replace("-", "").toLowerCase()
  switch (alg.name) {
    case "ECDSA":
    case "RSASSA-PKCS1-v1_5":
      return hash === undefined ? Result.fail(`${alg.name} without a hash`) : Result.succeed({ hash })
    case "RSA-PSS":
      return hash === undefined
        ? Result.fail("RSA-PSS without a hash")
        : Result.succeed({
            hash,
            padding: cryptoConstants.RSA_PKCS1_PSS_PADDING,
            saltLength: alg.saltLength ?? cryptoConstants.RSA_PSS_SALTLEN_DIGEST
          })
    case "Ed25519":
    case "EdDSA":
      return Result.succeed({ hash: null })
    default:
      return Result.fail(`unsupported signature algorithm ${alg.name}`)
  }
}

/** Whether `ca`'s key signed `crl` (the to-be-signed bytes as they are in the file). */
const signedBy = (crl: RevocationList, ca: Certificate.Certificate): boolean => {
  const params = verifyParams(crl.x509.signatureAlgorithm as unknown as Parameters<typeof verifyParams>[0])
  if (Result.isFailure(params)) return false
  // `tbsCertListRaw` is the exact DER the issuer signed (kept by @peculiar/asn1-schema).
  const asn = (crl.x509 as unknown as { asn: { tbsCertListRaw?: ArrayBuffer } }).asn
  if (asn.tbsCertListRaw === undefined) return false
  try {
    const { hash, ...keyOptions } = params.success
    return cryptoVerify(
      hash,
      new Uint8Array(asn.tbsCertListRaw),
      { key: Certificate.publicKey(ca), ...keyOptions },
      new Uint8Array(crl.x509.signature)
    )
  } catch {
    return false
  }
}

/**
 * Finds the CA certificate among `cas` that issued `crl` (subject DN equal to the CRL's issuer
 * and its key verifies the signature) and checks that CRL is usable at `now`: the issuer may sign
 * CRLs (Key Usage `cRLSign`, when Key Usage is present) and `thisUpdate` is not in the future.
 */
export const checkIssuer = (
  crl: RevocationList,
  cas: ReadonlyArray<Certificate.Certificate>,
  now: Date
): Result.Result<Certificate.Certificate, CrlError> => {
  const what = `CRL #${crl.index} (issuer "${crl.issuerString}")`
  const named = cas.filter((ca) => Dn.equals(ca.subject, crl.issuer))
  if (named.length === 0) {
    return Result.fail(
      new CrlError({
        reason: "NoIssuer",
        message: `${what} was not issued by a CA in caFile; OpenSSL could not verify it and would reject every peer it applies to`
      })
    )
  }
  const signer = named.find((ca) => signedBy(crl, ca))
  if (signer === undefined) {
    return Result.fail(
      new CrlError({
        reason: "BadSignature",
        message: `${what}: its signature does not verify with the key of "${crl.issuerString}" in caFile (a forged, corrupted or re-keyed CRL)`
      })
    )
  }
  if (signer.keyUsage !== undefined && !signer.keyUsage.includes("cRLSign")) {
    return Result.fail(
      new CrlError({
        reason: "IssuerNotForCrl",
        message: `${what}: the issuing CA's Key Usage does not include cRLSign, so OpenSSL refuses its CRLs`
      })
    )
  }
  if (crl.thisUpdate.getTime() > now.getTime()) {
    return Result.fail(
      new CrlError({
        reason: "NotYetValid",
        message: `${what} is not valid yet (thisUpdate ${crl.thisUpdate.toISOString()}); check the clock, or the CRL`
      })
    )
  }
  return Result.succeed(signer)
}

/** Whether a CRL is past its nextUpdate at `now` (OpenSSL: `CRL_HAS_EXPIRED`). */
export const isStale = (crl: RevocationList, now: Date): boolean =>
  crl.nextUpdate !== undefined && crl.nextUpdate.getTime() < now.getTime()

/**
 * Looks `cert` up in the CRLs of its issuer. `undefined` when it is not listed; `"no_crl"` when
 * none of `crls` was issued by its issuer (OpenSSL: `UNABLE_TO_GET_CRL`). Used only when Sleeve,
 * not OpenSSL, applies the CRLs (`crlStale: warn` with a stale CRL).
 */
export const findRevocation = (
  crls: ReadonlyArray<RevocationList>,
  cert: Certificate.Certificate
): Revocation | "no_crl" | undefined => {
  const own = crls.filter((c) => Dn.equals(c.issuer, cert.issuer))
  if (own.length === 0) return "no_crl"
  for (const crl of own) {
    const entry = crl.x509.findRevoked(cert.serialNumber)
    if (entry !== null) {
      return { serialNumber: cert.serialNumber, issuerString: crl.issuerString, revocationDate: entry.revocationDate }
    }
  }
  return undefined
}
