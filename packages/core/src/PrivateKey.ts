/**
 * Private keys of TLS configurations: load a PEM key file (PKCS#8, encrypted PKCS#8, or the
 * traditional OpenSSL `RSA PRIVATE KEY` / `EC PRIVATE KEY` formats, with or without
 * `Proc-Type: 4,ENCRYPTED`), decrypt it with the configuration's password, and check that it
 * belongs to the configuration's certificate.
 *
 * Use `load` once per configuration while validating it, before any socket opens; hand the
 * result to Node's `tls` with `toTlsKey` (an unencrypted PKCS#8 PEM held in memory only, wrapped
 * in `Redacted` so that it is never logged).
 *
 * Decryption is Node's (`crypto.createPrivateKey`, i.e. OpenSSL). Errors are typed by `reason`
 * (`PasswordRequired`, `WrongPassword`, `Malformed`, `Unsupported`); their messages name the
 * configuration and the file and never contain the password. Only the key types Node's TLS can
 * use for authentication are accepted: RSA (2048 bits or more), EC on P-256/P-384/P-521, Ed25519.
 *
 * What it deliberately does not do: read files (the caller does, and passes the file name for
 * messages), keep a decrypted key on disk, or accept keys in DER or PKCS#12.
 */
import { Data, Redacted, Result } from "effect"
import { createPublicKey, createPrivateKey, type KeyObject } from "node:crypto"
import * as Certificate from "./Certificate.ts"

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

/** Key algorithms accepted for TLS authentication. */
export type KeyType = "RSA" | "EC" | "Ed25519"

/** A decrypted private key, with where it came from. */
export interface LoadedKey {
  /** The decrypted key. Keep it in memory; export it only through {@link toTlsKey}. */
  readonly keyObject: KeyObject
  /** Its algorithm. */
  readonly type: KeyType
  /** The EC curve (`prime256v1`, `secp384r1`, `secp521r1`) or the RSA modulus size, for messages. */
  readonly detail: string
  /** Whether the PEM was encrypted. */
  readonly wasEncrypted: boolean
  /** Name of the TLS configuration the key belongs to. */
  readonly configName: string
  /** The key file, for messages. */
  readonly file: string
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/**
 * A private key that cannot be used. `PasswordRequired`: the PEM is encrypted and no password is
 * configured; `WrongPassword`: decryption with the configured password failed; `Malformed`: not
 * a PEM private key OpenSSL can read; `Unsupported`: a readable key of a type, curve or size the
 * sidecar refuses. The message never contains the password.
 */
export class PrivateKeyError extends Data.TaggedError("PrivateKeyError")<{
  readonly reason: "PasswordRequired" | "WrongPassword" | "Malformed" | "Unsupported"
  readonly configName: string
  readonly file: string
  readonly message: string
  readonly cause?: unknown
}> {}

/** The key does not belong to the certificate (their public keys differ). */
export class KeyMismatchError extends Data.TaggedError("KeyMismatchError")<{
  readonly configName: string
  readonly file: string
  readonly certificateSubject: string
  readonly message: string
}> {}

// ---------------------------------------------------------------------------------------------
// Constructors
// ---------------------------------------------------------------------------------------------

const supportedCurves = new Set(["prime256v1", "secp384r1", "secp521r1"])

/** `-----BEGIN ENCRYPTED PRIVATE KEY-----` (PKCS#8) or a traditional PEM with `Proc-Type: 4,ENCRYPTED`. */
const isEncryptedPem = (pem: string): boolean =>
  /-----BEGIN ENCRYPTED PRIVATE KEY-----/.test(pem) ||
  /-----BEGIN (?:RSA |EC |DSA )?PRIVATE KEY-----\r?\n\s*Proc-Type:\s*4,\s*ENCRYPTED/.test(pem)

const hasPrivateKeyBlock = (pem: string): boolean => /-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----/.test(pem)

/**
 * Load and decrypt a PEM private key. `password` is used only when the PEM is encrypted (an
 * unencrypted key with a configured password loads, as OpenSSL does). `configName` and `file`
 * only label error messages.
 */
export const load = (
  pem: string | Uint8Array,
  password: Redacted.Redacted<string> | undefined,
  configName: string,
  file = "<inline key>"
): Result.Result<LoadedKey, PrivateKeyError> => {
  const text = typeof pem === "string" ? pem : Buffer.from(pem).toString("utf8")
  const fail = (reason: PrivateKeyError["reason"], detail: string, cause?: unknown) =>
    Result.fail(
      new PrivateKeyError({
        reason,
        configName,
        file,
        message: `TLS configuration "${configName}": private key file ${file} ${detail}`,
        ...(cause === undefined ? {} : { cause })
      })
    )
  if (!hasPrivateKeyBlock(text)) {
    return fail("Malformed", 'has no "-----BEGIN … PRIVATE KEY-----" block')
  }
  const encrypted = isEncryptedPem(text)
  if (encrypted && password === undefined) {
    return fail("PasswordRequired", "is encrypted and the configuration has no private key password")
  }
  let keyObject: KeyObject
  try {
    keyObject = createPrivateKey(
      encrypted && password !== undefined
        ? { key: text, format: "pem", passphrase: Redacted.value(password) }
        : { key: text, format: "pem" }
    )
  } catch (cause) {
    // A wrong password usually fails the CBC padding check ("bad decrypt"), but about one in
    // a hundred times it decrypts to garbage that then fails to decode: for an encrypted key,
    // any failure with a password is reported as a wrong password.
    if (encrypted) return fail("WrongPassword", "could not be decrypted with the configured password", cause)
    return fail("Malformed", "is not a private key OpenSSL can read", cause)
  }
  if (keyObject.type !== "private") return fail("Malformed", "does not hold a private key")
  const details = keyObject.asymmetricKeyDetails ?? {}
  switch (keyObject.asymmetricKeyType) {
    case "rsa":
    case "rsa-pss": {
      const bits = details.modulusLength ?? 0
      if (bits < 2048) return fail("Unsupported", `holds a ${bits}-bit RSA key; at least 2048 bits are required`)
      return Result.succeed({
        keyObject,
        type: "RSA",
        detail: `${bits} bits`,
        wasEncrypted: encrypted,
        configName,
        file
      })
    }
    case "ec": {
      const curve = details.namedCurve ?? "unknown"
      if (!supportedCurves.has(curve)) {
        return fail("Unsupported", `holds an EC key on curve ${curve}; use P-256, P-384 or P-521`)
      }
      return Result.succeed({ keyObject, type: "EC", detail: curve, wasEncrypted: encrypted, configName, file })
    }
    case "ed25519":
      return Result.succeed({
        keyObject,
        type: "Ed25519",
        detail: "Ed25519",
        wasEncrypted: encrypted,
        configName,
        file
      })
    default:
      return fail(
        "Unsupported",
        `holds a ${keyObject.asymmetricKeyType ?? "unknown"} key; TLS authentication needs RSA, EC or Ed25519`
      )
  }
}

// ---------------------------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------------------------

/** The key's algorithm. */
export const keyType = (key: LoadedKey): KeyType => key.type

/** Whether the key's public half is the certificate's public key (SPKI DER compared). */
export const matches = (key: LoadedKey, cert: Certificate.Certificate): boolean => {
  const fromKey = createPublicKey(key.keyObject).export({ type: "spki", format: "der" })
  // Re-encode the certificate's SPKI through OpenSSL as well, so both sides are canonical.
  const fromCert = Certificate.publicKey(cert).export({ type: "spki", format: "der" })
  return Buffer.compare(fromKey, fromCert) === 0
}

/** {@link matches} as a check, with a message naming the configuration, the file and the certificate. */
export const matchesCertificate = (
  key: LoadedKey,
  cert: Certificate.Certificate
): Result.Result<LoadedKey, KeyMismatchError> =>
  matches(key, cert)
    ? Result.succeed(key)
    : Result.fail(
        new KeyMismatchError({
          configName: key.configName,
          file: key.file,
          certificateSubject: cert.subjectString,
          message:
            `TLS configuration "${key.configName}": private key file ${key.file} does not belong to certificate ` +
            `"${cert.subjectString}"${cert.source === undefined ? "" : ` (${cert.source})`}: their public keys differ`
        })
      )

/** The decrypted key as unencrypted PKCS#8 PEM for `tls.createSecureContext({ key })`; memory only. */
export const toTlsKey = (key: LoadedKey): Redacted.Redacted<string> =>
  Redacted.make(key.keyObject.export({ type: "pkcs8", format: "pem" }) as string)
