/**
 * A throw-away public key infrastructure for tests: root CAs, intermediates and leaf
 * certificates generated during the test run with @peculiar/x509 and Node's own crypto, written
 * to a temporary directory so that Node's `tls`, `openssl` and the sidecar can read them.
 *
 * Use it when a test needs a real certificate with chosen properties (subject DN, key type,
 * Key Usage, Extended Key Usage, SAN, validity, encrypted private key):
 *
 * ```ts
 * const pki = await TestPki.make()
 * const ca = await pki.ca()
 * const node1 = await pki.leaf(ca, { name: "node1", subject: [{ CN: "node1" }, { O: "Example Corp" }] })
 * tls.createServer({ cert: node1.certPem, key: node1.keyPem })   // trust: pki.caFile
 * await pki.cleanup()
 * ```
 *
 * Subjects are written most specific first, in RFC 4514 string order — the order
 * `openssl x509 -nameopt RFC2253` prints — i.e. `[{ CN: "node1" }, { O: "Example Corp" }]` is
 * `CN=node1,O=Example Corp`. The certificate stores the reverse (ASN.1 `RDNSequence` order:
 * O first); @peculiar/x509's `JsonName` is in that ASN.1 order, so this module reverses the list
 * before handing it over (checked against openssl in the tests).
 *
 * Certificates are what OpenSSL 3 expects of a well-formed PKI: random positive serials, SKI on
 * every certificate and AKI on every issued one, CAs with critical `basicConstraints CA:TRUE`
 * and critical Key Usage `keyCertSign, cRLSign`. Leaves default to the mirror-friendly
 * dual-use profile: KU `digitalSignature, keyEncipherment`, EKU `serverAuth, clientAuth`, SAN
 * `DNS:localhost, IP:127.0.0.1, IP:::1`, valid from one hour ago for 30 days.
 *
 * What it deliberately does not do: cache keys or certificates between instances (each test gets
 * fresh material, so RSA — slow to generate — should be used sparingly), OCSP, or anything
 * meant for production. `crl(issuer, { revoked })` writes a CRL signed by a CA of this PKI (with
 * chosen thisUpdate/nextUpdate, for stale-CRL tests); `openssl crl -CAfile` accepts it. No key is ever committed: everything lives in the temp dir.
 */
import "reflect-metadata"
import * as x509 from "@peculiar/x509"
import {
  generateKeyPair as generateKeyPairCallback,
  type KeyObject,
  randomBytes,
  webcrypto,
  X509Certificate
} from "node:crypto"
import { mkdtemp, rm, writeFile } from "node:fs/promises"
import { tmpdir } from "node:os"
import { isAbsolute, join, resolve } from "node:path"
import { promisify } from "node:util"

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0])

const generateKeyPair = promisify(generateKeyPairCallback)

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

/** Key algorithms a test can ask for: EC is P-256, RSA is 2048 bits. */
export type KeyType = "RSA" | "EC" | "Ed25519"

/**
 * A subject DN. Either a list of RDNs, most specific first (RFC 4514 string order), each RDN a
 * record of attribute short name (or dotted OID) to value — several keys, or an array value,
 * make a multi-valued RDN — or a plain RFC 4514 string for simple names such as
 * `"CN=node1,O=Example Corp"` (use the list form for values with escapes or odd characters).
 */
export type Subject = string | ReadonlyArray<Readonly<Record<string, string | ReadonlyArray<string>>>>

/** RFC 5280 Key Usage bit names. */
export type KeyUsageName =
  | "digitalSignature"
  | "nonRepudiation"
  | "keyEncipherment"
  | "dataEncipherment"
  | "keyAgreement"
  | "keyCertSign"
  | "cRLSign"
  | "encipherOnly"
  | "decipherOnly"

/** Well-known Extended Key Usage names; any dotted OID is accepted as well. */
export type ExtendedKeyUsageName =
  | "serverAuth"
  | "clientAuth"
  | "codeSigning"
  | "emailProtection"
  | "timeStamping"
  | "ocspSigning"

/** Subject Alternative Names to write; IPs as text (`10.0.0.1`, `::1`). */
export interface SubjectAltNames {
  readonly dns?: ReadonlyArray<string>
  readonly ip?: ReadonlyArray<string>
  readonly email?: ReadonlyArray<string>
  readonly uri?: ReadonlyArray<string>
}

/** How the private key file is encoded. */
export type KeyFormat = "pkcs8" | "legacy"

/** Options common to every certificate this PKI issues. */
export interface CommonOptions {
  /** File name stem (`<name>.crt`, `<name>.key`, `<name>.chain.pem`) and default `CN`. */
  readonly name?: string
  /** Subject DN; default `CN=<name>`. */
  readonly subject?: Subject
  /** Key algorithm; default `"EC"` (P-256). */
  readonly keyType?: KeyType
  /** Start of validity; default one hour ago. */
  readonly notBefore?: Date
  /** End of validity; default 30 days (leaves) or 365 days (CAs) from now. */
  readonly notAfter?: Date
  /**
   * Encrypt the key file with this password (PKCS#8 PBES2 AES-256-CBC, or legacy PEM
   * `Proc-Type: 4,ENCRYPTED` with AES-256-CBC when `keyFormat` is `"legacy"`).
   */
  readonly keyPassword?: string
  /**
   * `"pkcs8"` (default): `PRIVATE KEY` / `ENCRYPTED PRIVATE KEY`. `"legacy"`: the traditional
   * OpenSSL format, `RSA PRIVATE KEY` (PKCS#1) or `EC PRIVATE KEY` (SEC 1); Ed25519 has none.
   */
  readonly keyFormat?: KeyFormat
  /** Key Usage bits; `null` leaves the extension out. */
  readonly keyUsage?: ReadonlyArray<KeyUsageName> | null
  /** Extended Key Usage names or dotted OIDs; `null` leaves the extension out. */
  readonly extendedKeyUsage?: ReadonlyArray<ExtendedKeyUsageName | (string & {})> | null
  /** Subject Alternative Names; `null` leaves the extension out. */
  readonly san?: SubjectAltNames | null
}

/** Options of a root or intermediate CA. */
export interface CaOptions extends CommonOptions {
  /** `pathLenConstraint` of basicConstraints; absent by default. */
  readonly pathLength?: number
}

/** Options of a leaf (end-entity) certificate. */
export interface LeafOptions extends CommonOptions {
  /**
   * basicConstraints: `false` (default) writes `CA:FALSE`, `true` writes `CA:TRUE` (a leaf that
   * claims to be a CA), `null` leaves the extension out.
   */
  readonly isCa?: boolean | null
}

/** One issued certificate with its key, in memory and on disk. */
export interface Identity {
  /** File name stem. */
  readonly name: string
  /** Subject as an RFC 4514 string, most specific first (like `openssl -nameopt RFC2253`). */
  readonly subject: string
  /** Key algorithm of this identity. */
  readonly keyType: KeyType
  /** The certificate, PEM. */
  readonly certPem: string
  /** The private key file content, PEM, encrypted when `keyPassword` is set. */
  readonly keyPem: string
  /** The password of `keyPem`, when it is encrypted. */
  readonly keyPassword: string | undefined
  /** The certificate followed by the intermediates above it (never the root), PEM. */
  readonly chainPem: string
  /** Absolute path of the certificate file. */
  readonly certFile: string
  /** Absolute path of the private key file (mode 0600). */
  readonly keyFile: string
  /** Absolute path of the chain file (`chainPem`). */
  readonly chainFile: string
  /** The certificate as @peculiar/x509 sees it. */
  readonly x509: x509.X509Certificate
  /** The unencrypted private key. */
  readonly privateKey: KeyObject
  /** The issuing identity; `undefined` for a root CA. */
  readonly issuer: Identity | undefined
}

/** Options of a CRL. */
export interface CrlOptions {
  /** File name stem (`<name>.crl.pem`); default `<issuer name>-<n>`. */
  readonly name?: string
  /** The certificates (or upper-case hex serials) it lists as revoked; default none. */
  readonly revoked?: ReadonlyArray<Identity | string>
  /** Default one minute ago. */
  readonly thisUpdate?: Date
  /** Default seven days from now; `null` leaves nextUpdate out. */
  readonly nextUpdate?: Date | null
  /** Value of the CRL Number extension; default a counter per PKI. */
  readonly crlNumber?: number
}

/** A CRL written by {@link TestPki.crl}. */
export interface CrlFile {
  readonly pem: string
  /** Absolute path of the PEM file. */
  readonly file: string
  readonly issuer: Identity
}

/** A temp-dir PKI; see the module header. */
export interface TestPki {
  /** The directory holding every file written. */
  readonly dir: string
  /** Bundle of every root CA made so far (updated by each `ca()`), PEM file. */
  readonly caFile: string
  /** PEM of `caFile`. */
  readonly caPem: string
  /** Make a self-signed root CA. */
  readonly ca: (options?: CaOptions) => Promise<Identity>
  /** Make an intermediate CA signed by `issuer`. */
  readonly intermediate: (issuer: Identity, options?: CaOptions) => Promise<Identity>
  /** Make a leaf certificate signed by `issuer`. */
  readonly leaf: (issuer: Identity, options?: LeafOptions) => Promise<Identity>
  /** Write a CRL signed by the CA `issuer`, listing `options.revoked`. */
  readonly crl: (issuer: Identity, options?: CrlOptions) => Promise<CrlFile>
  /** Write `content` to `<dir>/<name>` (or to `name` if absolute); returns the path. */
  readonly write: (name: string, content: string | Uint8Array) => Promise<string>
  /** Remove the directory (when this PKI created it) or the files it wrote (when given one). */
  readonly cleanup: () => Promise<void>
  /** `await using pki = await TestPki.make()` cleans up at the end of the block. */
  readonly [Symbol.asyncDispose]: () => Promise<void>
}

/** Options of {@link make}. */
export interface MakeOptions {
  /** Use this existing directory instead of a fresh `mkdtemp` under `os.tmpdir()`. */
  readonly dir?: string
}

// ---------------------------------------------------------------------------------------------
// Constructor
// ---------------------------------------------------------------------------------------------

const HOUR = 3_600_000
const DAY = 24 * HOUR

/** Create a PKI rooted in a fresh temp directory (or in `options.dir`). */
export const make = async (options: MakeOptions = {}): Promise<TestPki> => {
  const ownsDir = options.dir === undefined
  // Absolute, so paths handed to other processes (and joined again below) stay right.
  const dir = options.dir === undefined ? await mkdtemp(join(tmpdir(), "sleeve-pki-")) : resolve(options.dir)
  const written = new Set<string>()
  const roots: Array<string> = []
  const used = new Set<string>()
  let counter = 0
  let caPem = ""
  const caFile = join(dir, "ca-bundle.pem")

  const write = async (name: string, content: string | Uint8Array, mode = 0o644): Promise<string> => {
    const path = isAbsolute(name) ? name : join(dir, name)
    await writeFile(path, content, { mode })
    written.add(path)
    return path
  }

  const uniqueName = (requested: string | undefined, fallback: string): string => {
    counter += 1
    const name = requested ?? `${fallback}-${counter}`
    if (used.has(name)) throw new Error(`TestPki: the name "${name}" is already used in ${dir}`)
    if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new Error(`TestPki: "${name}" is not a safe file name stem`)
    used.add(name)
    return name
  }

  const issue = async (
    kind: "ca" | "intermediate" | "leaf",
    issuer: Identity | undefined,
    opts: CaOptions & LeafOptions
  ): Promise<Identity> => {
    const name = uniqueName(opts.name, kind)
    const keyType = opts.keyType ?? "EC"
    const isAuthority = kind !== "leaf"
    const subject = opts.subject ?? [{ CN: opts.name ?? (kind === "ca" ? `Sleeve Test CA ${counter}` : name) }]
    const subjectName = toAsnOrderName(subject)
    const now = Date.now()
    const notBefore = opts.notBefore ?? new Date(now - HOUR)
    const notAfter = opts.notAfter ?? new Date(now + (isAuthority ? 365 * DAY : 30 * DAY))

    const keys = await generateKeys(keyType)
    const spki = new Uint8Array(keys.publicKey.export({ type: "spki", format: "der" })) as Uint8Array<ArrayBuffer>
    const signerKey = issuer?.privateKey ?? keys.privateKey
    const signerType = issuer?.keyType ?? keyType

    const extensions: Array<x509.Extension> = []
    const basicConstraints = isAuthority ? true : opts.isCa === undefined ? false : opts.isCa
    if (basicConstraints !== null) {
      extensions.push(
        new x509.BasicConstraintsExtension(basicConstraints, basicConstraints ? opts.pathLength : undefined, true)
      )
    }
    const keyUsage = opts.keyUsage === undefined ? defaultKeyUsage(kind) : opts.keyUsage
    if (keyUsage !== null) extensions.push(new x509.KeyUsagesExtension(keyUsageFlags(keyUsage), true))
    const eku = opts.extendedKeyUsage === undefined ? defaultExtendedKeyUsage(kind) : opts.extendedKeyUsage
    if (eku !== null) extensions.push(new x509.ExtendedKeyUsageExtension(eku.map(extendedKeyUsageOid), false))
    const san = opts.san === undefined ? (isAuthority ? null : defaultSan) : opts.san
    if (san !== null) {
      const names: Array<x509.JsonGeneralName> = [
        ...(san.dns ?? []).map((value) => ({ type: "dns" as const, value })),
        ...(san.ip ?? []).map((value) => ({ type: "ip" as const, value })),
        ...(san.email ?? []).map((value) => ({ type: "email" as const, value })),
        ...(san.uri ?? []).map((value) => ({ type: "url" as const, value }))
      ]
      if (names.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(names, false))
    }
    extensions.push(await x509.SubjectKeyIdentifierExtension.create(spki, false))
    // AKI = the issuer's SKI (both are SHA-1 of the key, RFC 5280 §4.2.1.2 method 1).
    const issuerSpki = issuer ? issuer.x509.publicKey.rawData : spki
    extensions.push(await x509.AuthorityKeyIdentifierExtension.create(issuerSpki, false))

    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject: subjectName,
      issuer: issuer ? issuer.x509.subjectName : subjectName,
      notBefore,
      notAfter,
      publicKey: spki,
      signingKey: signerKey.toCryptoKey(importAlgorithm(signerType), false, ["sign"]),
      signingAlgorithm: signingAlgorithm(signerType),
      extensions
    })
    const certPem = toPem(cert)
    const chainPem = certPem + chainAbove(issuer)
    const keyPem = exportKey(keys.privateKey, keyType, opts.keyFormat ?? "pkcs8", opts.keyPassword)

    const identity: Identity = {
      name,
      subject: typeof subject === "string" ? subject.trim() : formatRfc4514(subject),
      keyType,
      certPem,
      keyPem,
      keyPassword: opts.keyPassword,
      chainPem,
      certFile: await write(`${name}.crt`, certPem),
      keyFile: await write(`${name}.key`, keyPem, 0o600),
      chainFile: await write(`${name}.chain.pem`, chainPem),
      x509: cert,
      privateKey: keys.privateKey,
      issuer
    }
    if (kind === "ca") {
      roots.push(certPem)
      caPem = roots.join("")
      await write(caFile, caPem)
    }
    return identity
  }

  let crlCounter = 0
  const crl = async (issuer: Identity, opts: CrlOptions = {}): Promise<CrlFile> => {
    requireAuthority(issuer)
    crlCounter += 1
    const name = uniqueName(opts.name ?? `${issuer.name}-${crlCounter}`, "crl")
    const now = Date.now()
    const nextUpdate = opts.nextUpdate === undefined ? new Date(now + 7 * DAY) : opts.nextUpdate
    const revocationDate = new Date(now - 60_000)
    const generated = await x509.X509CrlGenerator.create({
      issuer: issuer.x509.subjectName,
      thisUpdate: opts.thisUpdate ?? new Date(now - 60_000),
      ...(nextUpdate === null ? {} : { nextUpdate }),
      entries: (opts.revoked ?? []).map((r) => ({
        serialNumber: typeof r === "string" ? r : r.x509.serialNumber,
        revocationDate
      })),
      extensions: [crlNumberExtension(opts.crlNumber ?? crlCounter)],
      signingAlgorithm: signingAlgorithm(issuer.keyType),
      signingKey: issuer.privateKey.toCryptoKey(importAlgorithm(issuer.keyType), false, ["sign"])
    })
    const pem = `${x509.PemConverter.encode(generated.rawData, "X509 CRL").replace(/\r\n/g, "\n")}\n`
    return { pem, file: await write(`${name}.crl.pem`, pem), issuer }
  }

  const cleanup = async (): Promise<void> => {
    if (ownsDir) {
      await rm(dir, { recursive: true, force: true })
    } else {
      await Promise.all([...written].map((path) => rm(path, { force: true })))
    }
    written.clear()
  }

  return {
    dir,
    caFile,
    get caPem() {
      return caPem
    },
    ca: (options = {}) => issue("ca", undefined, options),
    intermediate: async (issuer, options = {}) => issue("intermediate", requireAuthority(issuer), options),
    leaf: async (issuer, options = {}) => issue("leaf", requireAuthority(issuer), options),
    crl,
    write: (name, content) => write(name, content),
    cleanup,
    [Symbol.asyncDispose]: cleanup
  }
}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

/** Attribute short names (RFC 4514 and the usual OpenSSL ones) to OIDs. */
const attributeOids: Readonly<Record<string, string>> = {
  CN: "2.5.4.3",
  SN: "2.5.4.4",
  SERIALNUMBER: "2.5.4.5",
  C: "2.5.4.6",
  L: "2.5.4.7",
  ST: "2.5.4.8",
  STREET: "2.5.4.9",
  O: "2.5.4.10",
  OU: "2.5.4.11",
  TITLE: "2.5.4.12",
  GN: "2.5.4.42",
  GIVENNAME: "2.5.4.42",
  DC: "0.9.2342.19200300.100.1.25",
  UID: "0.9.2342.19200300.100.1.1",
  E: "1.2.840.113549.1.9.1",
  EMAILADDRESS: "1.2.840.113549.1.9.1"
}

/** Attributes whose values are IA5String by definition (RFC 4519, PKCS #9). */
const ia5Oids = new Set(["0.9.2342.19200300.100.1.25", "1.2.840.113549.1.9.1"])

const oidOf = (type: string): string => {
  if (/^\d+(\.\d+)+$/.test(type)) return type
  const oid = attributeOids[type.toUpperCase()]
  if (oid === undefined) throw new Error(`TestPki: unknown DN attribute "${type}" (use a dotted OID)`)
  return oid
}

const printable = /^[A-Za-z0-9 '()+,\-./:=?]*$/

const valueObject = (oid: string, value: string): x509.JsonAttributeObject =>
  ia5Oids.has(oid)
    ? { ia5String: value }
    : printable.test(value) && value.length > 0
      ? { printableString: value }
      : { utf8String: value }

/**
 * RFC 4514 string order (most specific first) to @peculiar/x509 `JsonNameParams`, which is in
 * ASN.1 order (least specific first): the list is reversed. Values are passed as typed objects
 * so that @peculiar/x509 neither un-escapes them nor reads a leading `#` as hex.
 */
const toAsnOrderName = (subject: Subject): x509.Name => {
  if (typeof subject === "string") {
    // @peculiar/x509 parses the string keeping its textual order; its JSON is ASN.1 order.
    const textOrder = new x509.Name(subject).toJSON()
    return new x509.Name([...textOrder].reverse())
  }
  const asnOrder = [...subject].reverse().map((rdn) => {
    const out: Record<string, Array<x509.JsonAttributeObject>> = {}
    for (const [type, values] of Object.entries(rdn)) {
      const oid = oidOf(type)
      const list = typeof values === "string" ? [values] : values
      out[oid] = [...(out[oid] ?? []), ...list.map((v) => valueObject(oid, v))]
    }
    if (Object.keys(out).length === 0) throw new Error("TestPki: an RDN needs at least one attribute")
    return out
  })
  return new x509.Name(asnOrder)
}

/** RFC 4514 §2.4 escaping of one attribute value. */
const escapeValue = (value: string): string =>
  value
    .replace(/[\\"+,;<>]/g, (c) => `\\${c}`)
    .replace(/^[ #]/, (c) => `\\${c}`)
    .replace(/ $/, "\\ ")
    .replace(/\0/g, "\\00")

const formatRfc4514 = (subject: Exclude<Subject, string>): string =>
  subject
    .map((rdn) =>
      Object.entries(rdn)
        .flatMap(([type, values]) =>
          (typeof values === "string" ? [values] : values).map((v) => `${type}=${escapeValue(v)}`)
        )
        .join("+")
    )
    .join(",")

// ---------------------------------------------------------------------------------------------
// Extensions, keys, encodings
// ---------------------------------------------------------------------------------------------

const defaultSan: SubjectAltNames = { dns: ["localhost"], ip: ["127.0.0.1", "::1"] }

const defaultKeyUsage = (kind: "ca" | "intermediate" | "leaf"): ReadonlyArray<KeyUsageName> =>
  kind === "leaf" ? ["digitalSignature", "keyEncipherment"] : ["keyCertSign", "cRLSign"]

const defaultExtendedKeyUsage = (kind: "ca" | "intermediate" | "leaf"): ReadonlyArray<string> | null =>
  kind === "leaf" ? ["serverAuth", "clientAuth"] : null

const keyUsageFlags = (names: ReadonlyArray<KeyUsageName>): x509.KeyUsageFlags => {
  let flags = 0
  for (const n of names) {
    const bit = x509.KeyUsageFlags[n]
    if (bit === undefined) throw new Error(`TestPki: unknown key usage "${n}"`)
    flags |= bit
  }
  return flags
}

const extendedKeyUsageOid = (nameOrOid: string): string => {
  if (/^\d+(\.\d+)+$/.test(nameOrOid)) return nameOrOid
  const oid = (x509.ExtendedKeyUsage as Record<string, string>)[nameOrOid]
  if (oid === undefined) throw new Error(`TestPki: unknown extended key usage "${nameOrOid}" (use a dotted OID)`)
  return oid
}

const generateKeys = (keyType: KeyType): Promise<{ publicKey: KeyObject; privateKey: KeyObject }> => {
  switch (keyType) {
    case "EC":
      return generateKeyPair("ec", { namedCurve: "P-256" })
    case "RSA":
      return generateKeyPair("rsa", { modulusLength: 2048 })
    case "Ed25519":
      return generateKeyPair("ed25519", undefined)
  }
}

const importAlgorithm = (
  keyType: KeyType
): webcrypto.AlgorithmIdentifier | webcrypto.EcKeyImportParams | webcrypto.RsaHashedImportParams => {
  switch (keyType) {
    case "EC":
      return { name: "ECDSA", namedCurve: "P-256" }
    case "RSA":
      return { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }
    case "Ed25519":
      return { name: "Ed25519" }
  }
}

const signingAlgorithm = (keyType: KeyType): webcrypto.Algorithm | webcrypto.EcdsaParams => {
  switch (keyType) {
    case "EC":
      return { name: "ECDSA", hash: "SHA-256" }
    case "RSA":
      return { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }
    case "Ed25519":
      return { name: "Ed25519" }
  }
}

/** The CRL Number extension (RFC 5280 §5.2.3, non-critical): a small non-negative DER INTEGER. */
const crlNumberExtension = (n: number): x509.Extension => {
  let hex = n.toString(16)
  if (hex.length % 2 === 1) hex = `0${hex}`
  if (Number.parseInt(hex.slice(0, 2), 16) >= 0x80) hex = `00${hex}`
  const value = Buffer.from(`02${(hex.length / 2).toString(16).padStart(2, "0")}${hex}`, "hex")
  return new x509.Extension("2.5.29.20", false, value)
}

/** 16 random bytes, top bit clear (positive) and second-highest bit set (no leading zero). */
const randomSerial = (): string => {
  const bytes = randomBytes(16)
  bytes[0] = ((bytes[0] ?? 0) & 0x7f) | 0x40
  return bytes.toString("hex")
}

const exportKey = (key: KeyObject, keyType: KeyType, format: KeyFormat, password: string | undefined): string => {
  const encryption = password === undefined ? {} : { cipher: "aes-256-cbc", passphrase: password }
  if (format === "pkcs8") return key.export({ type: "pkcs8", format: "pem", ...encryption }) as string
  switch (keyType) {
    case "RSA":
      return key.export({ type: "pkcs1", format: "pem", ...encryption }) as string
    case "EC":
      return key.export({ type: "sec1", format: "pem", ...encryption }) as string
    case "Ed25519":
      throw new Error("TestPki: Ed25519 keys have no legacy (traditional OpenSSL) PEM format; use pkcs8")
  }
}

const toPem = (cert: x509.X509Certificate): string => {
  const pem = cert.toString("pem").replace(/\r\n/g, "\n")
  // Cross-check with Node's parser: a certificate Node cannot read is a TestPki bug.
  new X509Certificate(pem)
  return pem.endsWith("\n") ? pem : `${pem}\n`
}

/** PEM of the intermediates above a certificate issued by `issuer` (roots excluded). */
const chainAbove = (issuer: Identity | undefined): string =>
  issuer === undefined || issuer.issuer === undefined ? "" : issuer.certPem + chainAbove(issuer.issuer)

const requireAuthority = (issuer: Identity): Identity => {
  const bc = issuer.x509.getExtension(x509.BasicConstraintsExtension)
  if (!bc?.ca) throw new Error(`TestPki: "${issuer.name}" is not a CA and cannot issue certificates`)
  return issuer
}
