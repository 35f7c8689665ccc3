import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Result } from "effect"
import { generateKeyPairSync, randomBytes, X509Certificate } from "node:crypto"
// @sleeve/testing is not a dependency of core (it depends on core); import its source directly.
import * as Openssl from "../../testing/src/Openssl.ts"
import * as TestPki from "../../testing/src/TestPki.ts"
import * as Certificate from "../src/Certificate.ts"
import * as Dn from "../src/DistinguishedName.ts"
import { x509 } from "../src/internal/x509.ts"

const one = (pem: string, source?: string): Certificate.Certificate => {
  const parsed = Certificate.parsePem(pem, source)
  if (Result.isFailure(parsed)) throw new Error(`unexpected: ${parsed.failure.message}`)
  expect(parsed.success).toHaveLength(1)
  return parsed.success[0]!
}

const failureOf = <A, E>(result: Result.Result<A, E>): E => {
  if (Result.isSuccess(result)) throw new Error("expected a failure")
  return result.failure
}

const seconds = (iso: string) => new Date(iso)

describe("Certificate", () => {
  let pki: TestPki.TestPki
  let root: TestPki.Identity
  let intermediate: TestPki.Identity
  let leaf: TestPki.Identity

  beforeAll(async () => {
    pki = await TestPki.make()
    root = await pki.ca({ name: "root", subject: [{ CN: "Sleeve Root" }, { O: "Example Corp" }], pathLength: 1 })
    intermediate = await pki.intermediate(root, {
      name: "intermediate",
      subject: [{ CN: "Sleeve Issuing CA" }, { O: "Example Corp" }],
      pathLength: 0
    })
    leaf = await pki.leaf(intermediate, {
      name: "node1",
      subject: [{ CN: "node1" }, { OU: "Mirror" }, { O: "Example Corp" }, { C: "US" }],
      san: {
        dns: ["node1.example.com", "localhost"],
        ip: ["127.0.0.1", "::1", "2001:db8::7"],
        email: ["ops@example.com"],
        uri: ["spiffe://example.com/node1"]
      },
      notBefore: seconds("2026-01-01T00:00:00Z"),
      notAfter: seconds("2036-01-01T00:00:00Z")
    })
  })
  afterAll(async () => {
    await pki.cleanup()
  })

  describe("parsePem / fromDer", () => {
    it("reads every field of a leaf", async () => {
      const cert = one(leaf.certPem, leaf.certFile)
      const node = new X509Certificate(leaf.certPem)
      expect(cert.subjectString).toBe("CN=node1,OU=Mirror,O=Example Corp,C=US")
      expect(cert.subjectString).toBe(await Openssl.dn(leaf.certFile, "subject"))
      expect(cert.issuerString).toBe("CN=Sleeve Issuing CA,O=Example Corp")
      expect(cert.issuerString).toBe(await Openssl.dn(leaf.certFile, "issuer"))
      expect(Dn.equals(cert.subject, Result.getOrThrow(Dn.parse("CN=node1,OU=Mirror,O=Example Corp,C=US")))).toBe(true)
      expect(Dn.format(cert.issuer)).toBe(cert.issuerString)
      expect(cert.serialNumber).toBe(node.serialNumber)
      expect(cert.serialNumber).toMatch(/^[0-9A-F]{32}$/)
      expect(cert.notBefore.toISOString()).toBe("2026-01-01T00:00:00.000Z")
      expect(cert.notAfter.toISOString()).toBe("2036-01-01T00:00:00.000Z")
      expect(cert.fingerprint256).toBe(node.fingerprint256)
      expect(cert.subjectAltNames).toEqual({
        dns: ["node1.example.com", "localhost"],
        ip: ["127.0.0.1", "::1", "2001:db8::7"],
        email: ["ops@example.com"],
        uri: ["spiffe://example.com/node1"]
      })
      expect(cert.basicConstraints).toEqual({ ca: false, pathLength: undefined })
      expect(cert.keyUsage).toEqual(["digitalSignature", "keyEncipherment"])
      expect(cert.extendedKeyUsage).toEqual(["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"])
      expect(Certificate.extendedKeyUsageNames(cert)).toEqual(["serverAuth", "clientAuth"])
      expect(cert.publicKeyType).toBe("EC")
      expect(Buffer.from(cert.spki)).toEqual(node.publicKey.export({ type: "spki", format: "der" }))
      expect(Buffer.from(cert.der)).toEqual(node.raw)
      expect(cert.pem).toBe(leaf.certPem)
      expect(cert.source).toBe(leaf.certFile)
      expect(Certificate.isSelfIssued(cert)).toBe(false)
    })

    it("reads CA constraints, key types and absent extensions", async () => {
      const rootCert = one(root.certPem)
      expect(rootCert.basicConstraints).toEqual({ ca: true, pathLength: 1 })
      expect(rootCert.keyUsage).toEqual(["keyCertSign", "cRLSign"])
      expect(rootCert.extendedKeyUsage).toBeUndefined()
      expect(rootCert.subjectAltNames).toEqual({ dns: [], ip: [], email: [], uri: [] })
      expect(Certificate.isSelfIssued(rootCert)).toBe(true)
      expect(one(intermediate.certPem).basicConstraints).toEqual({ ca: true, pathLength: 0 })

      const bare = await pki.leaf(root, {
        name: "bare",
        keyType: "Ed25519",
        keyUsage: null,
        extendedKeyUsage: null,
        san: null,
        isCa: null
      })
      const bareCert = one(bare.certPem)
      expect(bareCert.keyUsage).toBeUndefined()
      expect(bareCert.extendedKeyUsage).toBeUndefined()
      expect(bareCert.basicConstraints).toBeUndefined()
      expect(bareCert.publicKeyType).toBe("Ed25519")
      expect(Certificate.extendedKeyUsageNames(bareCert)).toBeUndefined()

      const rsa = await pki.ca({ name: "rsa-root", keyType: "RSA" })
      expect(one(rsa.certPem).publicKeyType).toBe("RSA")

      const odd = await pki.leaf(root, {
        name: "odd",
        keyUsage: ["nonRepudiation", "dataEncipherment", "keyAgreement", "encipherOnly", "decipherOnly"],
        extendedKeyUsage: ["codeSigning", "1.3.6.1.4.1.311.10.3.4"]
      })
      const oddCert = one(odd.certPem)
      // decipherOnly is bit 8: it lives in the second byte of the BIT STRING.
      expect(oddCert.keyUsage).toEqual([
        "nonRepudiation",
        "dataEncipherment",
        "keyAgreement",
        "encipherOnly",
        "decipherOnly"
      ])
      expect(Certificate.extendedKeyUsageNames(oddCert)).toEqual(["codeSigning", "1.3.6.1.4.1.311.10.3.4"])
    })

    it("reads every CERTIFICATE block in order, skipping keys and text, with CRLF line ends", () => {
      const text =
        `subject=whatever\r\n${leaf.certPem}${leaf.keyPem}\nsome note\n${intermediate.certPem}${root.certPem}`.replace(
          /\n/g,
          "\r\n"
        )
      const certs = Result.getOrThrow(Certificate.parsePem(text, "/etc/sleeve/chain.pem"))
      expect(certs.map((c) => c.subjectString)).toEqual([
        "CN=node1,OU=Mirror,O=Example Corp,C=US",
        "CN=Sleeve Issuing CA,O=Example Corp",
        "CN=Sleeve Root,O=Example Corp"
      ])
      expect(certs.every((c) => c.source === "/etc/sleeve/chain.pem")).toBe(true)
    })

    it("accepts DER", () => {
      const der = new Uint8Array(new X509Certificate(root.certPem).raw)
      const cert = Result.getOrThrow(Certificate.fromDer(der, "root.der"))
      expect(cert.subjectString).toBe("CN=Sleeve Root,O=Example Corp")
      expect(cert.pem).toBe(root.certPem)
    })

    it("refuses a text without certificates, naming the source", () => {
      const error = failureOf(Certificate.parsePem(leaf.keyPem, "/etc/sleeve/ca.pem"))
      expect(error._tag).toBe("CertificateError")
      expect(error.reason).toBe("NoCertificate")
      expect(error.message).toBe('/etc/sleeve/ca.pem: no "-----BEGIN CERTIFICATE-----" block found')
      expect(failureOf(Certificate.parsePem("")).reason).toBe("NoCertificate")
    })

    it("refuses malformed PEM blocks, naming the block and its line", () => {
      const body = leaf.certPem.split("\n")
      const badBase64 = [...body.slice(0, 3), `${body[3]!.slice(0, -2)}!!`, ...body.slice(4)].join("\n")
      const e1 = failureOf(Certificate.parsePem(`${root.certPem}\n${badBase64}`, "ca.pem"))
      const line = root.certPem.split("\n").length + 1 // root's lines, then a blank line
      expect(e1).toMatchObject({ reason: "MalformedPem", index: 1, line, source: "ca.pem" })
      expect(e1.message).toBe(`ca.pem: certificate #2 (line ${line}) is not valid base64`)

      const e2 = failureOf(Certificate.parsePem(root.certPem.replace("-----END CERTIFICATE-----", ""), "ca.pem"))
      expect(e2).toMatchObject({ reason: "MalformedPem", index: 0, line: 1 })
      expect(e2.message).toContain("has no END line")

      const e3 = failureOf(Certificate.parsePem(root.certPem.replace(/CERTIFICATE/g, "TRUSTED CERTIFICATE")))
      expect(e3.reason).toBe("MalformedPem")
      expect(e3.message).toContain("TRUSTED CERTIFICATE")

      // A chain cut in the middle of the next certificate's BEGIN line (a file read while it is
      // being written) is not taken for the certificates before it.
      const e4 = failureOf(Certificate.parsePem(`${root.certPem}-----BEGIN CERT`, "chain.pem"))
      expect(e4).toMatchObject({ reason: "MalformedPem", index: 1 })
      expect(e4.message).toContain("incomplete PEM BEGIN line")
      expect(failureOf(Certificate.parsePem(`${root.certPem}---`)).reason).toBe("MalformedPem")
      // Text after the last block is still allowed.
      expect(Result.isSuccess(Certificate.parsePem(`${root.certPem}subject=CN = root\n`))).toBe(true)

      const withHeader = root.certPem.replace("-----\n", "-----\nProc-Type: 4,ENCRYPTED\n\n")
      expect(failureOf(Certificate.parsePem(withHeader)).message).toContain("has PEM headers")
    })

    it("refuses blocks whose content is not an X.509 certificate", () => {
      const noise = `-----BEGIN CERTIFICATE-----\n${randomBytes(300).toString("base64")}\n-----END CERTIFICATE-----\n`
      const e1 = failureOf(Certificate.parsePem(`${root.certPem}${noise}`, "x.pem"))
      expect(e1).toMatchObject({ _tag: "CertificateError", reason: "MalformedDer", index: 1, source: "x.pem" })
      const line = root.certPem.split("\n").length
      expect(e1.message.startsWith(`x.pem: certificate #2 (line ${line}) is not a valid X.509 certificate: `)).toBe(
        true
      )

      // Trailing bytes after the Certificate SEQUENCE: OpenSSL tolerates them, this parser does not.
      const der = Buffer.concat([new X509Certificate(root.certPem).raw, Buffer.from([0x05, 0x00])])
      const e2 = failureOf(Certificate.fromDer(der, "trailing.der"))
      expect(e2.reason).toBe("MalformedDer")
      expect(e2.message).toContain("trailing.der")
    })

    it("refuses a certificate with a duplicated extension (RFC 5280 §4.2)", async () => {
      const keys = generateKeyPairSync("ec", { namedCurve: "P-256" })
      const alg = { name: "ECDSA", namedCurve: "P-256" }
      const cert = await x509.X509CertificateGenerator.createSelfSigned({
        name: "CN=dup",
        keys: {
          privateKey: keys.privateKey.toCryptoKey(alg, false, ["sign"]),
          publicKey: keys.publicKey.toCryptoKey(alg, true, ["verify"])
        },
        signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
        extensions: [
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyEncipherment, true)
        ]
      })
      const error = failureOf(Certificate.parsePem(cert.toString("pem")))
      expect(error.reason).toBe("MalformedDer")
      expect(error.message).toContain("extension 2.5.29.15 appears twice")
    })
  })

  describe("checkDualUse (mirror rule)", () => {
    type Ku = ReadonlyArray<TestPki.KeyUsageName> | null
    type Eku = ReadonlyArray<string> | null
    const kuCases: ReadonlyArray<[string, Ku, ReadonlyArray<string>]> = [
      ["KU absent", null, []],
      ["KU digitalSignature only", ["digitalSignature"], ["keyEncipherment"]],
      ["KU both", ["digitalSignature", "keyEncipherment"], []]
    ]
    const ekuCases: ReadonlyArray<[string, Eku, ReadonlyArray<string>]> = [
      ["EKU absent", null, []],
      ["EKU serverAuth only", ["serverAuth"], ["clientAuth"]],
      ["EKU both", ["serverAuth", "clientAuth"], []]
    ]
    for (const [kuLabel, keyUsage, missingKu] of kuCases) {
      for (const [ekuLabel, extendedKeyUsage, missingEku] of ekuCases) {
        const valid = missingKu.length === 0 && missingEku.length === 0
        it(`${kuLabel} + ${ekuLabel} → ${valid ? "valid" : "invalid"}`, async () => {
          const id = await pki.leaf(root, { keyUsage, extendedKeyUsage, subject: [{ CN: "m1" }] })
          const cert = one(id.certPem, id.certFile)
          const result = Certificate.checkDualUse(cert)
          if (valid) {
            expect(Result.isSuccess(result)).toBe(true)
            return
          }
          const error = failureOf(result)
          expect(error).toMatchObject({
            _tag: "CertificateUsageError",
            reason: "NotDualUse",
            role: "dual",
            subject: "CN=m1",
            source: id.certFile,
            missingKeyUsage: missingKu,
            missingExtendedKeyUsage: missingEku
          })
          expect(error.message).toContain("sslv3 alert unsupported certificate")
          expect(error.message).toContain(`${id.certFile}: certificate "CN=m1"`)
          for (const m of missingKu) expect(error.message).toContain(`Key Usage lacks ${m}`)
          for (const m of missingEku) expect(error.message).toContain(`Extended Key Usage lacks ${m}`)
        })
      }
    }

    it("names both missing usages when a certificate is server-only in both extensions", async () => {
      const id = await pki.leaf(root, { keyUsage: ["keyEncipherment"], extendedKeyUsage: ["serverAuth"] })
      const error = failureOf(Certificate.checkDualUse(one(id.certPem)))
      expect(error.missingKeyUsage).toEqual(["digitalSignature"])
      expect(error.missingExtendedKeyUsage).toEqual(["clientAuth"])
      expect(error.message).toContain(
        "its Key Usage lacks digitalSignature and its Extended Key Usage lacks clientAuth"
      )
    })

    it("rejects an EKU with neither TLS purpose, naming both", async () => {
      const id = await pki.leaf(root, { extendedKeyUsage: ["codeSigning"] })
      expect(failureOf(Certificate.checkDualUse(one(id.certPem))).missingExtendedKeyUsage).toEqual([
        "clientAuth",
        "serverAuth"
      ])
    })
  })

  describe("checkRoleUsage agrees with openssl verify -purpose", () => {
    const cases: ReadonlyArray<{
      readonly name: string
      readonly keyUsage: Array<TestPki.KeyUsageName> | null
      readonly eku: Array<string> | null
    }> = [
      { name: "none", keyUsage: null, eku: null },
      { name: "dual", keyUsage: ["digitalSignature", "keyEncipherment"], eku: ["serverAuth", "clientAuth"] },
      { name: "server-eku", keyUsage: null, eku: ["serverAuth"] },
      { name: "client-eku", keyUsage: null, eku: ["clientAuth"] },
      { name: "kE-only", keyUsage: ["keyEncipherment"], eku: null },
      { name: "kA-only", keyUsage: ["keyAgreement"], eku: null },
      { name: "nonRep-only", keyUsage: ["nonRepudiation"], eku: ["serverAuth", "clientAuth"] },
      { name: "code-signing", keyUsage: ["digitalSignature"], eku: ["codeSigning"] }
    ]
    for (const c of cases) {
      it(c.name, async () => {
        const id = await pki.leaf(root, { name: `role-${c.name}`, keyUsage: c.keyUsage, extendedKeyUsage: c.eku })
        const cert = one(id.certPem)
        for (const [role, purpose, eku] of [
          ["server", "sslserver", "serverAuth"],
          ["client", "sslclient", "clientAuth"]
        ] as const) {
          const verdict = await Openssl.verdict("verify", "-purpose", purpose, "-CAfile", pki.caFile, id.certFile)
          const result = Certificate.checkRoleUsage(cert, role)
          expect({ role, ok: Result.isSuccess(result) }).toEqual({ role, ok: verdict.code === 0 })
          if (Result.isFailure(result)) {
            expect(result.failure).toMatchObject({ reason: "NotForRole", role })
            const ekuMissing = c.eku !== null && !c.eku.includes(eku)
            expect(result.failure.missingExtendedKeyUsage).toEqual(ekuMissing ? [eku] : [])
            const alternatives: ReadonlyArray<TestPki.KeyUsageName> =
              role === "server"
                ? ["digitalSignature", "keyEncipherment", "keyAgreement"]
                : ["digitalSignature", "keyAgreement"]
            const kuMissing = c.keyUsage !== null && !alternatives.some((u) => c.keyUsage?.includes(u))
            expect(result.failure.missingKeyUsage).toEqual(kuMissing ? alternatives : [])
            expect(result.failure.message).toContain(`cannot be used as a TLS ${role}`)
          }
        }
      })
    }
  })

  describe("checkChainOrder (CA file: this instance first, then its issuers)", () => {
    const certsOf = (...ids: Array<TestPki.Identity>) => ids.map((id) => one(id.certPem, "ca.pem"))

    it("accepts leaf → intermediate → root, a partial chain and a single certificate", () => {
      expect(Result.isSuccess(Certificate.checkChainOrder(certsOf(leaf, intermediate, root)))).toBe(true)
      expect(Result.isSuccess(Certificate.checkChainOrder(certsOf(leaf, intermediate)))).toBe(true)
      expect(Result.isSuccess(Certificate.checkChainOrder(certsOf(intermediate, root)))).toBe(true)
      expect(Result.isSuccess(Certificate.checkChainOrder(certsOf(root)))).toBe(true)
    })

    it("reports the first certificate that is not the issuer of the previous one", () => {
      const e1 = failureOf(Certificate.checkChainOrder(certsOf(leaf, root, intermediate)))
      expect(e1).toMatchObject({
        _tag: "ChainOrderError",
        reason: "IssuerMismatch",
        index: 1,
        subject: "CN=Sleeve Root,O=Example Corp",
        expectedIssuer: "CN=Sleeve Issuing CA,O=Example Corp"
      })
      expect(e1.message).toContain("certificate #2 (CN=Sleeve Root,O=Example Corp) is not the issuer of certificate #1")
      expect(e1.message).toContain("this instance's certificate first")

      const e2 = failureOf(Certificate.checkChainOrder(certsOf(root, intermediate, leaf)))
      expect(e2).toMatchObject({ reason: "IssuerMismatch", index: 1, subject: "CN=Sleeve Issuing CA,O=Example Corp" })

      const e3 = failureOf(Certificate.checkChainOrder(certsOf(leaf, intermediate, root, leaf)))
      expect(e3).toMatchObject({
        reason: "IssuerMismatch",
        index: 3,
        subject: "CN=node1,OU=Mirror,O=Example Corp,C=US"
      })
    })

    it("reports an issuer with the right name but the wrong key", async () => {
      const impostor = await pki.ca({ name: "impostor", subject: [{ CN: "Sleeve Issuing CA" }, { O: "Example Corp" }] })
      const error = failureOf(Certificate.checkChainOrder(certsOf(leaf, impostor)))
      expect(error).toMatchObject({
        reason: "SignatureMismatch",
        index: 1,
        subject: "CN=Sleeve Issuing CA,O=Example Corp"
      })
      expect(error.message).toContain("its key did not sign certificate #1")
    })

    it("matches issuer and subject names that differ only in string type and case", async () => {
      // The CA's subject is O=example corp as UTF8String; the child names its issuer
      // O=Example Corp as PrintableString: the same DN under RFC 4517 caseIgnoreMatch (and for
      // OpenSSL, which compares canonical encodings).
      const alg = { name: "ECDSA", namedCurve: "P-256" }
      const caKeys = generateKeyPairSync("ec", { namedCurve: "P-256" })
      const childKeys = generateKeyPairSync("ec", { namedCurve: "P-256" })
      const signingKey = caKeys.privateKey.toCryptoKey(alg, false, ["sign"])
      const make = (subject: x509.JsonNameParams, issuer: x509.JsonNameParams, publicKey: Uint8Array<ArrayBuffer>) =>
        x509.X509CertificateGenerator.create({
          subject: new x509.Name(subject),
          issuer: new x509.Name(issuer),
          publicKey,
          signingKey,
          signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
          extensions: [new x509.BasicConstraintsExtension(true, undefined, true)]
        })
      const spki = (k: typeof caKeys) =>
        new Uint8Array(k.publicKey.export({ type: "spki", format: "der" })) as Uint8Array<ArrayBuffer>
      const caName = [{ "2.5.4.10": [{ utf8String: "example corp" }] }, { "2.5.4.3": [{ utf8String: "Case CA" }] }]
      const asIssuer = [
        { "2.5.4.10": [{ printableString: "Example  Corp" }] },
        { "2.5.4.3": [{ printableString: "CASE CA" }] }
      ]
      const ca = await make(caName, caName, spki(caKeys))
      const child = await make([{ "2.5.4.3": [{ utf8String: "child" }] }], asIssuer, spki(childKeys))
      const certs = [one(child.toString("pem")), one(ca.toString("pem"))]
      expect(Buffer.from(certs[0]!.issuerDer)).not.toEqual(Buffer.from(certs[1]!.subjectDer))
      expect(new X509Certificate(certs[0]!.der).checkIssued(new X509Certificate(certs[1]!.der))).toBe(true)
      expect(Result.isSuccess(Certificate.checkChainOrder(certs))).toBe(true)
    })

    it("refuses an empty chain", () => {
      expect(failureOf(Certificate.checkChainOrder([])).reason).toBe("EmptyChain")
    })
  })

  describe("checkValidity", () => {
    const day = 86_400
    let cert: Certificate.Certificate
    beforeAll(() => {
      cert = one(leaf.certPem, "node1.crt") // 2026-01-01 .. 2036-01-01
    })

    it("is Valid well inside the window", () => {
      const result = Result.getOrThrow(Certificate.checkValidity(cert, new Date("2030-01-01T00:00:00Z"), 30 * day))
      expect(result).toEqual({
        _tag: "Valid",
        secondsLeft: Math.floor((Date.UTC(2036, 0, 1) - Date.UTC(2030, 0, 1)) / 1000)
      })
    })

    it("warns inside the horizon, with the date", () => {
      const now = new Date("2035-12-22T00:00:00Z")
      const result = Result.getOrThrow(Certificate.checkValidity(cert, now, 30 * day))
      expect(result).toMatchObject({ _tag: "ExpiresSoon", secondsLeft: 10 * day, notAfter: cert.notAfter })
      if (result._tag === "ExpiresSoon") {
        expect(result.message).toBe(
          'node1.crt: certificate "CN=node1,OU=Mirror,O=Example Corp,C=US" expires at 2036-01-01T00:00:00.000Z, in 10 days'
        )
      }
      expect(Certificate.checkValidity(cert, new Date("2036-01-01T00:00:00Z"), 30 * day)).toMatchObject({
        success: { _tag: "ExpiresSoon", secondsLeft: 0 }
      })
    })

    it("fails when expired or not yet valid, with both dates", () => {
      const late = new Date("2036-01-01T00:00:01Z")
      const expired = failureOf(Certificate.checkValidity(cert, late, 30 * day))
      expect(expired).toMatchObject({
        _tag: "CertificateValidityError",
        reason: "Expired",
        now: late,
        notAfter: cert.notAfter
      })
      expect(expired.message).toBe(
        'node1.crt: certificate "CN=node1,OU=Mirror,O=Example Corp,C=US" expired at 2036-01-01T00:00:00.000Z (now 2036-01-01T00:00:01.000Z)'
      )
      const early = failureOf(Certificate.checkValidity(cert, new Date("2025-12-31T23:59:59Z"), 30 * day))
      expect(early.reason).toBe("NotYetValid")
      expect(early.message).toContain("is not valid before 2026-01-01T00:00:00.000Z (now 2025-12-31T23:59:59.000Z)")
    })

    it("reads dates of generated expired and future certificates", async () => {
      const expired = await pki.leaf(root, {
        notBefore: new Date(Date.now() - 10 * day * 1000),
        notAfter: new Date(Date.now() - 1000 * day)
      })
      expect(failureOf(Certificate.checkValidity(one(expired.certPem), new Date(), 0)).reason).toBe("Expired")
      const future = await pki.leaf(root, { notBefore: new Date(Date.now() + day * 1000) })
      expect(failureOf(Certificate.checkValidity(one(future.certPem), new Date(), 0)).reason).toBe("NotYetValid")
    })
  })
})
