/**
 * Distinguished names (RFC 4514 strings, RFC 5280 `Name` structures) — parse, print, compare.
 *
 * CONTRACT STUB: the types and signatures below are the module's public API; bodies are being
 * implemented. Other modules may code against these signatures now.
 *
 * Order convention: `rdns` is in RFC 4514 *string* order (most specific first, e.g. CN before O),
 * i.e. the reverse of the ASN.1 `RDNSequence` order found in a certificate.
 */
import { Data, type Result } from "effect"

/** One `type=value` pair. `type` is always a dotted OID (e.g. "2.5.4.3" for CN). */
export interface AttributeTypeAndValue {
  readonly type: string
  /** The value as a string (decoded directory string), or undefined when only `der` is known. */
  readonly value: string
  /** Hex of the DER encoding of the value, when the value was given as `#hex` or is not a string type. */
  readonly der?: string | undefined
}

/** A relative distinguished name: one or more AVAs (multi-valued with `+`), an unordered set. */
export type Rdn = ReadonlyArray<AttributeTypeAndValue>

/** A distinguished name: a sequence of RDNs, most specific first (RFC 4514 string order). */
export interface DistinguishedName {
  readonly rdns: ReadonlyArray<Rdn>
}

/** A string that is not a valid RFC 4514 DN; `position` is the 0-based offset of the problem. */
export class DnParseError extends Data.TaggedError("DnParseError")<{
  readonly input: string
  readonly position: number
  readonly message: string
}> {}

/** Parse an RFC 4514 string (also accepts OIDs and the usual short names, case-insensitively). */
export declare const parse: (input: string) => Result.Result<DistinguishedName, DnParseError>

/** Print as RFC 4514, byte-for-byte like `openssl x509 -nameopt RFC2253`. */
export declare const format: (dn: DistinguishedName) => string

/** Decode a DER-encoded X.509 `Name`. */
export declare const fromDer: (der: Uint8Array) => DistinguishedName

/** Structural equality under the RFC 4517 matching rules; RDN order significant, AVAs within an RDN unordered. */
export declare const equals: (a: DistinguishedName, b: DistinguishedName) => boolean
