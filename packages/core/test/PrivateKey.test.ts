import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Redacted, Result } from "effect"
import { createSecureContext } from "node:tls"
import { createPrivateKey, generateKeyPairSync } from "node:crypto"
import { inspect } from "node:util"
// @sleeve/testing is not a dependency of core (it depends on core); import its source directly.
import * as TestPki from "../../testing/src/TestPki.ts"
import * as Certificate from "../src/Certificate.ts"
import * as PrivateKey from "../src/PrivateKey.ts"

const PASSWORD = "Tr0ub4dor&3-correct-horse"
const password = Redacted.make(PASSWORD)

const failureOf = <A, E>(result: Result.Result<A, E>): E => {
  if (Result.isSuccess(result)) throw new Error("expected a failure")
  return result.failure
}

/** Everything an error could leak through: message, inspect, JSON, cause chain. */
const everyRendering = (error: unknown): string =>
  [String(error), inspect(error, { depth: 5 }), JSON.stringify(error), (error as Error).message].join("\n")

describe("PrivateKey", () => {
  let pki: TestPki.TestPki
  let root: TestPki.Identity

  beforeAll(async () => {
    pki = await TestPki.make()
    root = await pki.ca({ name: "root" })
  })
  afterAll(async () => {
    await pki.cleanup()
  })

  const encrypted = [
    { label: "encrypted PKCS#8 EC", keyType: "EC", keyFormat: "pkcs8", detail: "prime256v1" },
    { label: "legacy PEM EC (Proc-Type: 4,ENCRYPTED)", keyType: "EC", keyFormat: "legacy", detail: "prime256v1" },
    { label: "legacy PEM RSA (Proc-Type: 4,ENCRYPTED)", keyType: "RSA", keyFormat: "legacy", detail: "2048 bits" },
    { label: "encrypted PKCS#8 Ed25519", keyType: "Ed25519", keyFormat: "pkcs8", detail: "Ed25519" }
  ] as const

  for (const c of encrypted) {
    describe(c.label, () => {
      let id: TestPki.Identity
      beforeAll(async () => {
        id = await pki.leaf(root, { keyType: c.keyType, keyFormat: c.keyFormat, keyPassword: PASSWORD })
      })

      it("loads with the right password, as the right key type, matching its certificate", () => {
        const key = Result.getOrThrow(PrivateKey.load(id.keyPem, password, "%MirrorServer", id.keyFile))
        expect(PrivateKey.keyType(key)).toBe(c.keyType)
        expect(key).toMatchObject({
          detail: c.detail,
          wasEncrypted: true,
          configName: "%MirrorServer",
          file: id.keyFile
        })
        const cert = Result.getOrThrow(Certificate.parsePem(id.certPem, id.certFile))[0]!
        expect(PrivateKey.matches(key, cert)).toBe(true)
        expect(Result.getOrThrow(PrivateKey.matchesCertificate(key, cert))).toBe(key)
      })

      it("fails with WrongPassword, PasswordRequired; messages name config and file, never the password", () => {
        const wrong = failureOf(PrivateKey.load(id.keyPem, Redacted.make(`${PASSWORD}x`), "%MirrorServer", id.keyFile))
        expect(wrong).toMatchObject({ _tag: "PrivateKeyError", reason: "WrongPassword", configName: "%MirrorServer" })
        expect(wrong.message).toBe(
          `TLS configuration "%MirrorServer": private key file ${id.keyFile} could not be decrypted with the configured password`
        )
        const missing = failureOf(PrivateKey.load(id.keyPem, undefined, "%MirrorServer", id.keyFile))
        expect(missing.reason).toBe("PasswordRequired")
        expect(missing.message).toBe(
          `TLS configuration "%MirrorServer": private key file ${id.keyFile} is encrypted and the configuration has no private key password`
        )
        const empty = failureOf(PrivateKey.load(id.keyPem, Redacted.make(""), "%MirrorServer", id.keyFile))
        expect(empty.reason).toBe("WrongPassword")
        for (const error of [wrong, missing, empty]) {
          expect(everyRendering(error)).not.toContain(PASSWORD)
        }
      })
    })
  }

  it("reports a wrong password as WrongPassword also when decryption yields garbage", async () => {
    // With CBC, a wrong password occasionally passes the padding check (about 1 in 200 here)
    // and OpenSSL then fails to decode the garbage ("DECODER routines::unsupported"). Find
    // such a password, then check that load still calls it a wrong password.
    const id = await pki.leaf(root, { keyFormat: "legacy", keyPassword: PASSWORD })
    let garbage: string | undefined
    for (let i = 0; i < 20_000 && garbage === undefined; i++) {
      try {
        createPrivateKey({ key: id.keyPem, passphrase: `guess-${i}` })
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "ERR_OSSL_BAD_DECRYPT") garbage = `guess-${i}`
      }
    }
    expect(garbage).toBeDefined()
    const error = failureOf(PrivateKey.load(id.keyPem, Redacted.make(garbage!), "c", "k.pem"))
    expect(error.reason).toBe("WrongPassword")
    expect(failureOf(PrivateKey.load(id.keyPem, Redacted.make("plainly-wrong"), "c", "k.pem")).reason).toBe(
      "WrongPassword"
    )
  })

  it("loads unencrypted keys (PKCS#8 and legacy), ignoring a configured password", async () => {
    const ed = await pki.leaf(root, { keyType: "Ed25519" })
    const key = Result.getOrThrow(PrivateKey.load(ed.keyPem, undefined, "plain", ed.keyFile))
    expect(key).toMatchObject({ type: "Ed25519", wasEncrypted: false })
    const legacy = await pki.leaf(root, { keyFormat: "legacy" })
    expect(legacy.keyPem.startsWith("-----BEGIN EC PRIVATE KEY-----")).toBe(true)
    expect(Result.getOrThrow(PrivateKey.load(legacy.keyPem, password, "plain", legacy.keyFile)).type).toBe("EC")
    expect(Result.getOrThrow(PrivateKey.load(new TextEncoder().encode(legacy.keyPem), undefined, "bytes")).type).toBe(
      "EC"
    )
  })

  it("fails with Malformed for text that is not a readable private key", async () => {
    const cases = [
      ["no PEM at all", "hello"],
      ["a certificate", root.certPem],
      ["a truncated key", (await pki.leaf(root, {})).keyPem.replace(/\n[A-Za-z0-9+/=]+\n-----END/, "\n-----END")],
      ["garbage in a key block", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"]
    ] as const
    for (const [label, text] of cases) {
      const error = failureOf(PrivateKey.load(text, password, "%SuperServer", "/etc/sleeve/server.key"))
      expect({ label, reason: error.reason }).toEqual({ label, reason: "Malformed" })
      expect(error.message).toMatch(/^TLS configuration "%SuperServer": private key file \/etc\/sleeve\/server\.key /)
      expect(everyRendering(error)).not.toContain(PASSWORD)
    }
  })

  it("fails with Unsupported for key types TLS authentication cannot use", () => {
    const pkcs8 = (k: ReturnType<typeof generateKeyPairSync>["privateKey"]) =>
      k.export({ type: "pkcs8", format: "pem" }) as string
    const cases = [
      ["x25519", pkcs8(generateKeyPairSync("x25519").privateKey), /holds a x25519 key/],
      ["secp256k1", pkcs8(generateKeyPairSync("ec", { namedCurve: "secp256k1" }).privateKey), /curve secp256k1/],
      ["RSA 1024", pkcs8(generateKeyPairSync("rsa", { modulusLength: 1024 }).privateKey), /1024-bit RSA key/]
    ] as const
    for (const [label, pem, pattern] of cases) {
      const error = failureOf(PrivateKey.load(pem, undefined, "c", label))
      expect(error.reason).toBe("Unsupported")
      expect(error.message).toMatch(pattern)
    }
  })

  it("detects a key that does not belong to the certificate", async () => {
    const a = await pki.leaf(root, { name: "a" })
    const b = await pki.leaf(root, { name: "b", subject: [{ CN: "node-b" }] })
    const keyA = Result.getOrThrow(PrivateKey.load(a.keyPem, undefined, "%MirrorClient", a.keyFile))
    const certB = Result.getOrThrow(Certificate.parsePem(b.certPem, b.certFile))[0]!
    expect(PrivateKey.matches(keyA, certB)).toBe(false)
    const error = failureOf(PrivateKey.matchesCertificate(keyA, certB))
    expect(error).toMatchObject({
      _tag: "KeyMismatchError",
      configName: "%MirrorClient",
      certificateSubject: "CN=node-b"
    })
    expect(error.message).toBe(
      `TLS configuration "%MirrorClient": private key file ${a.keyFile} does not belong to certificate "CN=node-b" (${b.certFile}): their public keys differ`
    )
    // Same algorithm family but another key type altogether.
    const ed = await pki.leaf(root, { name: "ed", keyType: "Ed25519" })
    const keyEd = Result.getOrThrow(PrivateKey.load(ed.keyPem, undefined, "c"))
    expect(PrivateKey.matches(keyEd, certB)).toBe(false)
  })

  it("hands tls a redacted, unencrypted PKCS#8 key that fits the certificate", async () => {
    const id = await pki.leaf(root, { keyFormat: "legacy", keyPassword: PASSWORD })
    const key = Result.getOrThrow(PrivateKey.load(id.keyPem, password, "c", id.keyFile))
    const tlsKey = PrivateKey.toTlsKey(key)
    expect(String(tlsKey)).not.toContain("PRIVATE KEY")
    expect(inspect(tlsKey)).not.toContain("PRIVATE KEY")
    expect(Redacted.value(tlsKey).startsWith("-----BEGIN PRIVATE KEY-----\n")).toBe(true)
    // createSecureContext refuses a key that does not match the certificate.
    expect(() => createSecureContext({ cert: id.certPem, key: Redacted.value(tlsKey) })).not.toThrow()
    const other = await pki.leaf(root, {})
    expect(() => createSecureContext({ cert: other.certPem, key: Redacted.value(tlsKey) })).toThrow(
      /key values mismatch/
    )
  })
})
