/**
 * `sleeve dn FILE`: print a certificate's subject (or issuer) distinguished name in RFC 4514 form,
 * byte for byte what `openssl x509 -noout -subject -nameopt RFC2253` prints after `subject=`,
 * ready to paste into `authorizedPeers`.
 *
 * The file is PEM (every CERTIFICATE block; other blocks are ignored) or a single DER
 * certificate. Without `--all` only the first certificate is printed — the leaf of a chain file.
 * A missing or unreadable file, or one without a certificate, is one error line and exit 1.
 */
import { Console, Data, Effect, FileSystem, type PlatformError, Result } from "effect"
import * as Certificate from "@sleeve/core/Certificate"

/** The file could not be read or holds no readable certificate. */
export class DnError extends Data.TaggedError("DnError")<{
  readonly file: string
  readonly message: string
  readonly cause?: unknown
}> {}

/**
 * Reads every certificate of a PEM text, or a DER certificate when the bytes are not PEM
 * (a DER certificate starts with an ASN.1 SEQUENCE, 0x30).
 */
export const parseCertificates = (
  bytes: Uint8Array,
  file: string
): Result.Result<ReadonlyArray<Certificate.Certificate>, Certificate.CertificateError> => {
  const pem = Certificate.parsePem(new TextDecoder().decode(bytes), file)
  if (Result.isSuccess(pem) || pem.failure.reason !== "NoCertificate" || bytes[0] !== 0x30) return pem
  return Result.map(Certificate.fromDer(bytes, file), (c) => [c])
}

/** The lines `sleeve dn` prints: one DN per certificate (only the first unless `all`). */
export const formatDns = (
  certs: ReadonlyArray<Certificate.Certificate>,
  options: { readonly issuer: boolean; readonly all: boolean }
): ReadonlyArray<string> =>
  (options.all ? certs : certs.slice(0, 1)).map((c) => (options.issuer ? c.issuerString : c.subjectString))

/** Why a file could not be read, in words (the Node error stays the `cause`). */
export const readError = (e: PlatformError.PlatformError): string => {
  const code = (e.reason.cause as NodeJS.ErrnoException | undefined)?.code
  if (e.reason._tag === "NotFound") return "file not found"
  if (e.reason._tag === "PermissionDenied") return "not readable (permission denied)"
  if (code === "EISDIR") return "is a directory, not a file"
  return `cannot read: ${(e.reason.cause as Error | undefined)?.message ?? e.reason.description ?? e.reason._tag}`
}

/** Runs `sleeve dn`. */
export const handler = (input: { readonly file: string; readonly issuer: boolean; readonly all: boolean }) =>
  Effect.gen(function* () {
    const fs = yield* FileSystem.FileSystem
    const bytes = yield* fs.readFile(input.file).pipe(
      Effect.mapError(
        (e) =>
          new DnError({
            file: input.file,
            message: `${input.file}: ${readError(e)}`,
            cause: e
          })
      )
    )
    const certs = parseCertificates(bytes, input.file)
    if (Result.isFailure(certs)) {
      return yield* new DnError({ file: input.file, message: certs.failure.message, cause: certs.failure })
    }
    for (const line of formatDns(certs.success, input)) yield* Console.log(line)
  })
