/**
 * Activating a TLS configuration: read its files, decrypt its key, check everything the seed and
 * OpenSSL will later insist on, and produce the material a TLS engine needs (IRIS: a configuration
 * is "activated" at start, and again when it is edited).
 *
 * Every problem found is reported, each naming the configuration file, the field and the rule,
 * with a severity: errors stop activation, warnings (a certificate close to expiry, an own
 * certificate that does not chain to the configured CA) do not. `sleeve check` prints exactly
 * these problems; `sleeve run` refuses to start (or to reload) on any error.
 *
 * This module reads files and builds an in-memory `tls.SecureContext` to prove OpenSSL accepts
 * the settings; it opens no socket.
 */
import { Redacted, Result } from "effect"
import { constants as cryptoConstants } from "node:crypto"
import * as Fs from "node:fs"
import * as Tls from "node:tls"
import * as Certificate from "./Certificate.ts"
import * as DistinguishedName from "./DistinguishedName.ts"
import type * as ConfigFile from "./ConfigFile.ts"
import * as Crl from "./Crl.ts"
import * as PrivateKey from "./PrivateKey.ts"

/** Everything a TLS engine needs for one configuration, loaded and checked. */
export interface Material {
  readonly config: ConfigFile.TlsConfig
  /** Own certificate chain, leaf first (undefined for a client configuration without a certificate). */
  readonly chain: ReadonlyArray<Certificate.Certificate> | undefined
  /** The decrypted key, as unencrypted PKCS#8 PEM, in memory only. */
  readonly keyPem: Redacted.Redacted<string> | undefined
  /** Trusted certificate authorities (the CA file). */
  readonly ca: ReadonlyArray<Certificate.Certificate>
  readonly caPem: string | undefined
  readonly crlPem: string | undefined
  /** The CRLs of `crlFile`, each verified against its issuing CA in `caFile`. */
  readonly crls: ReadonlyArray<Crl.RevocationList>
  /**
   * Who applies the CRLs during a handshake: `openssl` (the CRLs are in the secure context; every
   * certificate of the peer's chain must be covered by a current CRL), `sleeve` (a CRL is stale and
   * `crlStale: warn`: OpenSSL would refuse every peer, so the CRLs stay out of the context and
   * `TlsSession` looks the verified chain up in them after the handshake), or `none` (no crlFile).
   */
  readonly revocation: "none" | "openssl" | "sleeve"
  /** Node TLS options that realise this configuration (key included, so never log them). */
  readonly secureContextOptions: Tls.SecureContextOptions
  /** Every file this material was read from, for reload-on-change. */
  readonly files: ReadonlyArray<string>
}

/** How a `{ prompt: true }` password is obtained (an interactive start); `undefined` when there is no TTY. */
export type Prompter = (configName: string) => Redacted.Redacted<string> | undefined

/** Options of {@link load}. */
export interface LoadOptions {
  /** The configuration file as shown in problems (usually the path the operator typed). */
  readonly file: string
  readonly now: Date
  /** Certificates expiring within this many milliseconds give a warning. */
  readonly expiryWarningMs: number
  readonly env?: Readonly<Record<string, string | undefined>>
  readonly prompt?: Prompter
  /** A password given at open time (IRIS `/TLS="cfg|password"`): interactive use only; wins over the source. */
  readonly password?: Redacted.Redacted<string>
  /**
   * Reads a file as UTF-8 text, throwing a Node error (with `code`) as `fs.readFileSync` does;
   * `fs.readFileSync` by default. `sleeve run` with several workers records what the primary
   * read and replays it in every worker, so all of them activate exactly the same bytes.
   */
  readonly readFile?: FileReader
}

/** How {@link load} reads a file (see `LoadOptions.readFile`). */
export type FileReader = (path: string) => string

const readFileSync: FileReader = (path) => Fs.readFileSync(path, "utf8")

/** One problem found while activating: same shape as {@link ConfigFile.Problem}. */
export type Problem = ConfigFile.Problem

/** The result of {@link load}: material when there was no error, and every problem found. */
export interface Loaded {
  readonly material: Material | undefined
  readonly problems: ReadonlyArray<Problem>
}

const readText = (path: string, readFile: FileReader = readFileSync): Result.Result<string, string> => {
  try {
    return Result.succeed(readFile(path))
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    return Result.fail(
      code === "ENOENT"
        ? `file not found: ${path}`
        : code === "EACCES"
          ? `file not readable (permission denied): ${path}`
          : code === "EISDIR"
            ? `is a directory, not a file: ${path}`
            : `cannot read ${path}: ${(e as Error).message}`
    )
  }
}

/** Resolves where a key password comes from to the password itself (never logged). */
export const resolvePassword = (
  source: ConfigFile.PasswordSource,
  configName: string,
  options: Pick<LoadOptions, "env" | "prompt" | "readFile">
): Result.Result<Redacted.Redacted<string>, string> => {
  switch (source._tag) {
    case "Env": {
      const v = (options.env ?? process.env)[source.name]
      return v === undefined || v === ""
        ? Result.fail(`environment variable ${source.name} is not set (it should hold the key password)`)
        : Result.succeed(Redacted.make(v))
    }
    case "File": {
      const r = readText(source.path, options.readFile)
      if (Result.isFailure(r)) return Result.fail(`password ${r.failure}`)
      // A trailing newline is how editors and `echo` write files; it is never part of the password.
      return Result.succeed(Redacted.make(r.success.replace(/\r?\n$/, "")))
    }
    case "Prompt": {
      const pw = options.prompt?.(configName)
      return pw === undefined
        ? Result.fail("{ prompt: true } needs an interactive terminal at start; use { env } or { file } for services")
        : Result.succeed(pw)
    }
  }
}

/** Whether an OpenSSL-accepted chain starting at `leaf` reaches one of `cas` through `intermediates`. */
const chainsTo = (
  chain: ReadonlyArray<Certificate.Certificate>,
  cas: ReadonlyArray<Certificate.Certificate>
): boolean => {
  const last = chain[chain.length - 1]
  if (last === undefined) return false
  if (cas.some((ca) => Buffer.compare(ca.der, last.der) === 0)) return true
  return cas.some((ca) => Result.isSuccess(Certificate.checkChainOrder([last, ca])))
}

/**
 * The seed's CA-file order rule, made safe for bundles of unrelated roots (as during a CA
 * rotation): certificates that belong to one chain must stand in order, leaf first; unrelated
 * certificates may follow each other.
 */
export const checkCaFileOrder = (certs: ReadonlyArray<Certificate.Certificate>): string | undefined => {
  // Every certificate is checked, the last one too: an issuer placed before the certificate it
  // issued (root first, then intermediate) is out of order as well.
  for (let i = 0; i < certs.length; i++) {
    const child = certs[i]!
    if (Certificate.isSelfIssued(child)) continue
    const next = certs[i + 1]
    if (next !== undefined && Result.isSuccess(Certificate.checkChainOrder([child, next]))) continue
    // The issuer of certs[i] is somewhere else in the file: that is an out-of-order file. An
    // issuer that is not in the file at all is not an order problem.
    const elsewhere = certs.findIndex((c, j) => j !== i && Result.isSuccess(Certificate.checkChainOrder([child, c])))
    if (elsewhere !== -1) {
      return (
        `certificates are out of order: the issuer of certificate #${i + 1} (${child.subjectString}) is ` +
        `certificate #${elsewhere + 1} (${certs[elsewhere]!.subjectString}), ` +
        (next === undefined
          ? "but it comes before it"
          : `but certificate #${i + 2} (${next.subjectString}) follows it`) +
        "; the file must hold this instance's certificate first, then each issuer in turn"
      )
    }
  }
  return undefined
}

/** Every TLS 1.3 suite this Node/OpenSSL knows, upper case (`TLS_AES_128_GCM_SHA256`, …). */
const knownTls13Suites = (): ReadonlyArray<string> =>
  Tls.getCiphers()
    .filter((c) => c.startsWith("tls_"))
    .map((c) => c.toUpperCase())

/**
 * Entries of an OpenSSL TLS 1.2 cipher list that give up forward secrecy or AEAD. Named suites
 * are judged by their name (ECDHE/DHE key exchange, GCM/CHACHA20/CCM cipher); keywords only
 * when they name a weak family. Exclusions (`!RC4`, `-3DES`) and reorderings (`+SHA`) are never
 * weak.
 */
const weakCipherEntries = (cipherList: string): ReadonlyArray<string> => {
  const known = new Set(Tls.getCiphers().map((c) => c.toUpperCase()))
  return cipherList
    .split(/[:, ]+/)
    .filter((c) => c !== "" && !/^[!+-]/.test(c))
    .filter((c) =>
      known.has(c.toUpperCase())
        ? !/^(ECDHE|DHE)-/i.test(c) || !/GCM|CHACHA20|CCM/i.test(c)
        : /^(ALL|LOW|MEDIUM|EXP|EXPORT|NULL|eNULL|aNULL|RC4|DES|3DES|MD5|SHA1?|CBC)$/i.test(c)
    )
}

/**
 * Loads and checks one TLS configuration. Never throws; returns material only when no error was
 * found.
 */
export const load = (config: ConfigFile.TlsConfig, options: LoadOptions): Loaded => {
  const problems: Array<Problem> = []
  const at = (field: string) => `tls.${config.name}.${field}`
  const error = (field: string, rule: string) =>
    problems.push({ file: options.file, path: at(field), rule, severity: "error" })
  const warning = (field: string, rule: string) =>
    problems.push({ file: options.file, path: at(field), rule, severity: "warning" })
  const files: Array<string> = []
  const horizonSeconds = options.expiryWarningMs / 1000

  const validity = (field: string, cert: Certificate.Certificate) => {
    const v = Certificate.checkValidity(cert, options.now, horizonSeconds)
    if (Result.isFailure(v)) error(field, v.failure.message)
    else if (v.success._tag === "ExpiresSoon") warning(field, v.success.message)
  }

  // caFile: the authorities that verify peers
  let ca: ReadonlyArray<Certificate.Certificate> = []
  let caPem: string | undefined
  if (config.caFile !== undefined) {
    files.push(config.caFile)
    const text = readText(config.caFile, options.readFile)
    if (Result.isFailure(text)) error("caFile", text.failure)
    else {
      const certs = Certificate.parsePem(text.success, config.caFile)
      if (Result.isFailure(certs)) error("caFile", certs.failure.message)
      else {
        ca = certs.success
        caPem = text.success
        const order = checkCaFileOrder(ca)
        if (order !== undefined) error("caFile", order)
        for (const c of ca) validity("caFile", c)
      }
    }
  }

  // certificateFile: own chain, leaf first
  let chain: ReadonlyArray<Certificate.Certificate> | undefined
  if (config.certificateFile !== undefined) {
    files.push(config.certificateFile)
    const text = readText(config.certificateFile, options.readFile)
    if (Result.isFailure(text)) error("certificateFile", text.failure)
    else {
      const certs = Certificate.parsePem(text.success, config.certificateFile)
      if (Result.isFailure(certs)) error("certificateFile", certs.failure.message)
      else {
        chain = certs.success
        const order = Certificate.checkChainOrder(chain)
        if (Result.isFailure(order)) error("certificateFile", order.failure.message)
        for (const c of chain) validity("certificateFile", c)
        const leaf = chain[0]!
        // requireDualUse: the seed's mirror rule applies to our own certificate too (one
        // certificate serves %MirrorServer and %MirrorClient).
        if (config.requireDualUse) {
          const d = Certificate.checkDualUse(leaf)
          if (Result.isFailure(d)) error("certificateFile", d.failure.message)
        } else {
          // A mirror entry serves both roles, so its certificate must allow both.
          for (const role of config.type === "mirror" ? (["server", "client"] as const) : [config.type]) {
            const r = Certificate.checkRoleUsage(leaf, role)
            if (Result.isFailure(r)) error("certificateFile", r.failure.message)
          }
        }
        if (ca.length > 0 && !chainsTo(chain, ca)) {
          warning(
            "certificateFile",
            `certificate "${leaf.subjectString}" does not chain to a certificate in caFile; ` +
              "peers that trust only that CA will reject it"
          )
        }
      }
    }
  }

  // privateKeyFile (+ password source, + privateKeyType)
  let keyPem: Redacted.Redacted<string> | undefined
  if (config.privateKeyFile !== undefined) {
    files.push(config.privateKeyFile)
    const text = readText(config.privateKeyFile, options.readFile)
    let password: Redacted.Redacted<string> | undefined = options.password
    if (password === undefined && config.privateKeyPassword !== undefined) {
      if (config.privateKeyPassword._tag === "File") files.push(config.privateKeyPassword.path)
      const pw = resolvePassword(config.privateKeyPassword, config.name, options)
      if (Result.isFailure(pw)) error("privateKeyPassword", pw.failure)
      else password = pw.success
    }
    if (Result.isFailure(text)) error("privateKeyFile", text.failure)
    else if (!problems.some((p) => p.path === at("privateKeyPassword"))) {
      const key = PrivateKey.load(text.success, password, config.name, config.privateKeyFile)
      if (Result.isFailure(key)) {
        // Only a missing or wrong password is the password's fault; an unreadable or refused key
        // (a 1024-bit RSA key, an unsupported curve) is the key file's.
        const passwordFault = key.failure.reason === "PasswordRequired" || key.failure.reason === "WrongPassword"
        error(passwordFault ? "privateKeyPassword" : "privateKeyFile", key.failure.message)
      } else {
        if (config.privateKeyType !== undefined && key.success.type !== config.privateKeyType) {
          error(
            "privateKeyType",
            // "an": RSA, EC and Ed25519 all begin with a vowel sound.
            `expected an ${config.privateKeyType} key, but ${config.privateKeyFile} holds an ${key.success.type} key (${key.success.detail})`
          )
        }
        const leaf = chain?.[0]
        if (leaf !== undefined) {
          const m = PrivateKey.matchesCertificate(key.success, leaf)
          if (Result.isFailure(m)) error("privateKeyFile", m.failure.message)
        }
        keyPem = PrivateKey.toTlsKey(key.success)
      }
    }
  }

  // crlFile (issue 13 §2). Every CRL must parse and verify against its issuing CA in caFile
  // before it is put in force: one that does not is an error, so `sleeve run` does not start and a
  // reload keeps the CRLs in force before it (never a half-read or forged list).
  let crlPem: string | undefined
  let crls: ReadonlyArray<Crl.RevocationList> = []
  let revocation: Material["revocation"] = "none"
  if (config.crlFile !== undefined) {
    files.push(config.crlFile)
    const text = readText(config.crlFile, options.readFile)
    if (Result.isFailure(text)) error("crlFile", text.failure)
    else {
      const parsed = Crl.parsePem(text.success, config.crlFile)
      if (Result.isFailure(parsed)) error("crlFile", parsed.failure.message)
      else {
        const before = problems.length
        for (const crl of parsed.success) {
          const issuer = Crl.checkIssuer(crl, ca, options.now)
          if (Result.isFailure(issuer)) error("crlFile", issuer.failure.message)
        }
        if (problems.length === before) {
          crls = parsed.success
          crlPem = text.success
          const stale = crls.filter((c) => Crl.isStale(c, options.now))
          revocation = stale.length > 0 && config.crlStale === "warn" ? "sleeve" : "openssl"
          for (const c of stale) {
            warning(
              "crlFile",
              `CRL #${c.index} (issuer "${c.issuerString}") is stale: its nextUpdate ${c.nextUpdate?.toISOString()} has passed; ` +
                (config.crlStale === "warn"
                  ? "crlStale: warn keeps serving, still rejecting the certificates it lists; install a fresh CRL"
                  : "with crlStale: reject every peer whose chain it covers is rejected (CRL_HAS_EXPIRED) until a fresh CRL is installed")
            )
          }
          // Node turns on OpenSSL's CRL check for the whole chain: a CA without a CRL makes every
          // chain through it fail (UNABLE_TO_GET_CRL).
          for (const c of ca) {
            if (!crls.some((l) => DistinguishedName.equals(l.issuer, c.subject))) {
              warning(
                "crlFile",
                `no CRL for CA "${c.subjectString}" of caFile: revocation is checked for every certificate of a peer's chain, ` +
                  "so peers whose chain goes through this CA are rejected (UNABLE_TO_GET_CRL); add its CRL"
              )
            }
          }
        }
      }
    }
  }

  // cipherList is OpenSSL's TLS 1.2 list, cipherSuites the TLS 1.3 one. Node has a single
  // `ciphers` option and sends its `TLS_*` entries to SSL_CTX_set_ciphersuites (there is no
  // `ciphersuites` option: one would be silently ignored), so both lists are joined here, and each
  // is checked on its own so that a mistake is reported against the field that holds it.
  const tls13Suites = knownTls13Suites()
  const misplaced = config.cipherList.split(/[:, ]+/).filter((c) => /^TLS_/i.test(c))
  if (misplaced.length > 0) {
    // Node would move them to the TLS 1.3 list, and raise minVersion to TLS 1.3 if nothing else is left.
    error(
      "cipherList",
      `${misplaced.join(", ")} ${misplaced.length === 1 ? "is a TLS 1.3 suite" : "are TLS 1.3 suites"}; put TLS 1.3 suites in cipherSuites`
    )
  }
  if (config.cipherSuites !== undefined) {
    // OpenSSL silently drops unknown TLS 1.3 suite names as long as one is known: check every name.
    const unknown = config.cipherSuites.split(":").filter((c) => !tls13Suites.includes(c))
    if (unknown.length > 0) {
      error(
        "cipherSuites",
        `unknown TLS 1.3 ${unknown.length === 1 ? "suite" : "suites"} ${unknown.map((c) => `"${c}"`).join(", ")}; ` +
          `this Node/OpenSSL (${process.versions.openssl}) knows ${tls13Suites.join(", ")}`
      )
    }
  }
  const secureContextOptions: Tls.SecureContextOptions = {
    minVersion: config.minVersion,
    maxVersion: config.maxVersion,
    ciphers: config.cipherSuites === undefined ? config.cipherList : `${config.cipherList}:${config.cipherSuites}`,
    ...(chain === undefined ? {} : { cert: chain.map((c) => c.pem).join("") }),
    ...(keyPem === undefined ? {} : { key: Redacted.value(keyPem) }),
    ...(caPem === undefined ? {} : { ca: caPem }),
    // One entry per CRL: Node reads a single CRL from each `crl` entry, so a PEM string with
    // several would silently give OpenSSL only the first.
    ...(revocation === "openssl" ? { crl: crls.map((c) => c.pem) } : {}),
    honorCipherOrder: true,
    // Client-initiated renegotiation is refused outright (TLS 1.2; TLS 1.3 has none).
    secureOptions: cryptoConstants.SSL_OP_NO_RENEGOTIATION
  }

  // Protocol and cipher settings: let this Node/OpenSSL judge them.
  if (problems.every((p) => p.severity !== "error")) {
    try {
      Tls.createSecureContext(secureContextOptions)
    } catch (e) {
      const message = (e as Error).message
      // cipherSuites was checked name by name above, so a cipher error is the TLS 1.2 list's.
      const field = /cipher/i.test(message)
        ? "cipherList"
        : /CRL/.test(message)
          ? "crlFile"
          : /key|certificate/i.test(message)
            ? "certificateFile"
            : "protocols"
      error(field, `rejected by this Node/OpenSSL (${process.versions.openssl}): ${message}`)
    }
    if (config.minVersion === "TLSv1.2") {
      const weak = weakCipherEntries(config.cipherList)
      if (weak.length > 0) {
        warning("cipherList", `includes suites without AEAD or forward secrecy: ${weak.join(", ")}`)
      }
    }
  }

  const hasError = problems.some((p) => p.severity === "error")
  return {
    material: hasError
      ? undefined
      : { config, chain, keyPem, ca, caPem, crlPem, crls, revocation, secureContextOptions, files },
    problems
  }
}
