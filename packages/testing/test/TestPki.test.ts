import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { createPrivateKey, createPublicKey, X509Certificate } from "node:crypto"
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as tls from "node:tls"
import * as Openssl from "../src/Openssl.ts"
import * as TestPki from "../src/TestPki.ts"

interface HandshakeResult {
  readonly client: { readonly ok: boolean; readonly error?: string; readonly peerCN?: string | undefined }
  readonly server: {
    readonly authorized: boolean
    readonly peerCN?: string | undefined
    readonly authorizationError?: string
    readonly error?: string
  }
}

/** One TLS handshake over loopback between a `tls.Server` and `tls.connect`, then both close. */
const handshake = (serverOptions: tls.TlsOptions, clientOptions: tls.ConnectionOptions): Promise<HandshakeResult> =>
  new Promise((resolve, reject) => {
    let serverSide: HandshakeResult["server"] = { authorized: false }
    const server = tls.createServer(serverOptions, (socket) => {
      const peer = socket.getPeerCertificate()
      serverSide = {
        authorized: socket.authorized,
        peerCN: peer?.subject?.CN as string | undefined,
        ...(socket.authorizationError ? { authorizationError: String(socket.authorizationError) } : {})
      }
      socket.end("hello")
    })
    server.on("tlsClientError", (error) => {
      // Keep the first error: the handshake verdict, not the reset that may follow it.
      if (serverSide.error === undefined) {
        serverSide = { authorized: false, error: (error as NodeJS.ErrnoException).code ?? error.message }
      }
    })
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo
      const client = tls.connect({ host: "127.0.0.1", port, servername: "localhost", ...clientOptions })
      let done = false
      const finish = (result: HandshakeResult["client"]) => {
        if (done) return
        done = true
        client.destroy()
        server.close(() => resolve({ client: result, server: serverSide }))
      }
      client.once("secureConnect", () => {
        const peerCN = client.getPeerCertificate()?.subject?.CN as string | undefined
        client.once("data", () => finish({ ok: true, peerCN }))
        client.once("error", (error) =>
          finish({ ok: false, error: (error as NodeJS.ErrnoException).code ?? error.message })
        )
      })
      client.once("error", (error) =>
        finish({ ok: false, error: (error as NodeJS.ErrnoException).code ?? error.message })
      )
      client.once("close", () => finish({ ok: false, error: "closed before any data" }))
    })
    server.once("error", reject)
  })

const extensionsText = async (certFile: string): Promise<string> =>
  (
    await Openssl.verdict(
      "x509",
      "-in",
      certFile,
      "-noout",
      "-ext",
      "basicConstraints,keyUsage,extendedKeyUsage,subjectAltName"
    )
  ).out

describe("TestPki", () => {
  let pki: TestPki.TestPki
  let root: TestPki.Identity
  let intermediate: TestPki.Identity

  beforeAll(async () => {
    pki = await TestPki.make()
    root = await pki.ca({ name: "root", subject: [{ CN: "Test Root" }, { O: "Sleeve" }] })
    intermediate = await pki.intermediate(root, { name: "intermediate", pathLength: 0 })
  })
  afterAll(async () => {
    await pki.cleanup()
  })

  it("writes subjects in RFC 4514 order, exactly as openssl prints them", async () => {
    const leaf = await pki.leaf(root, {
      name: "ordered",
      subject: [{ CN: "node1" }, { OU: "Mirror" }, { O: "Example, Corp" }, { C: "US" }]
    })
    expect(leaf.subject).toBe("CN=node1,OU=Mirror,O=Example\\, Corp,C=US")
    const printed = await Openssl.verdict("x509", "-in", leaf.certFile, "-noout", "-subject", "-nameopt", "RFC2253")
    expect(printed.out.trim()).toBe(`subject=${leaf.subject}`)
    // The DER holds the reverse (ASN.1) order: C is the first RDN of the sequence.
    expect(new X509Certificate(leaf.certPem).subject.split("\n")).toEqual([
      "C=US",
      "O=Example\\, Corp",
      "OU=Mirror",
      "CN=node1"
    ])
    const issuer = await Openssl.verdict("x509", "-in", leaf.certFile, "-noout", "-issuer", "-nameopt", "RFC2253")
    expect(issuer.out.trim()).toBe("issuer=CN=Test Root,O=Sleeve")
  })

  it("accepts a plain RFC 4514 string subject, a multi-valued RDN and defaults CN to the name", async () => {
    const fromString = await pki.leaf(root, { name: "strsubj", subject: "CN=db1,OU=Data,O=Example" })
    expect(
      (
        await Openssl.verdict("x509", "-in", fromString.certFile, "-noout", "-subject", "-nameopt", "RFC2253")
      ).out.trim()
    ).toBe("subject=CN=db1,OU=Data,O=Example")
    const multi = await pki.leaf(root, { name: "multi", subject: [{ CN: "m", UID: "42" }, { DC: ["example"] }] })
    expect(multi.subject).toBe("CN=m+UID=42,DC=example")
    const dn = new X509Certificate(multi.certPem).subject
    expect(dn).toContain("CN=m")
    expect(dn).toContain("UID=42")
    const defaulted = await pki.leaf(root, { name: "plain-name" })
    expect(defaulted.subject).toBe("CN=plain-name")
    expect(new X509Certificate(defaulted.certPem).subject).toBe("CN=plain-name")
  })

  it("gives leaves the dual-use defaults and CAs CA:TRUE + keyCertSign, linked by SKI/AKI", async () => {
    const leaf = await pki.leaf(intermediate, { name: "defaults" })
    const text = await extensionsText(leaf.certFile)
    expect(text).toMatch(/Basic Constraints: critical\s+CA:FALSE/)
    expect(text).toMatch(/Key Usage: critical\s+Digital Signature, Key Encipherment/)
    expect(text).toMatch(/Extended Key Usage:\s+TLS Web Server Authentication, TLS Web Client Authentication/)
    expect(text).toMatch(/DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1/)

    const caText = await extensionsText(intermediate.certFile)
    expect(caText).toMatch(/Basic Constraints: critical\s+CA:TRUE, pathlen:0/)
    expect(caText).toMatch(/Key Usage: critical\s+Certificate Sign, CRL Sign/)
    expect(caText).not.toMatch(/Extended Key Usage/)

    const node = new X509Certificate(leaf.certPem)
    const now = Date.now()
    expect(Math.abs(node.validFromDate.getTime() - (now - 3_600_000))).toBeLessThan(60_000)
    expect(Math.abs(node.validToDate.getTime() - (now + 30 * 86_400_000))).toBeLessThan(60_000)

    const ski = (f: string) =>
      Openssl.verdict("x509", "-in", f, "-noout", "-ext", "subjectKeyIdentifier,authorityKeyIdentifier")
    const leafIds = (await ski(leaf.certFile)).out
    const caIds = (await ski(intermediate.certFile)).out
    const caSki = /Subject Key Identifier:\s+([0-9A-F:]+)/.exec(caIds)?.[1]
    expect(caSki).toBeDefined()
    expect(leafIds).toMatch(new RegExp(`Authority Key Identifier:\\s+${caSki}\\s`))
    expect(node.checkIssued(new X509Certificate(intermediate.certPem))).toBe(true)
    expect(node.verify(new X509Certificate(intermediate.certPem).publicKey)).toBe(true)
  })

  it("omits KU, EKU, SAN and basicConstraints when asked with null, and sets chosen values", async () => {
    const bare = await pki.leaf(root, { name: "bare", keyUsage: null, extendedKeyUsage: null, san: null, isCa: null })
    expect((await extensionsText(bare.certFile)).trim()).toBe("No extensions in certificate")
    const chosen = await pki.leaf(root, {
      name: "chosen",
      keyUsage: ["digitalSignature"],
      extendedKeyUsage: ["clientAuth", "1.3.6.1.4.1.99999.1"],
      san: { dns: ["db.example.com"], ip: ["10.0.0.7"] }
    })
    const text = await extensionsText(chosen.certFile)
    expect(text).toMatch(/Key Usage: critical\s+Digital Signature\n/)
    expect(text).toMatch(/Extended Key Usage:\s+TLS Web Client Authentication, 1.3.6.1.4.1.99999.1/)
    expect(text).toMatch(/DNS:db.example.com, IP Address:10.0.0.7/)
  })

  it("issues random positive serial numbers", async () => {
    const a = new X509Certificate((await pki.leaf(root, { name: "serial-a" })).certPem).serialNumber
    const b = new X509Certificate((await pki.leaf(root, { name: "serial-b" })).certPem).serialNumber
    expect(a).not.toBe(b)
    for (const serial of [a, b]) {
      expect(serial).toMatch(/^[4-7][0-9A-F]{31}$/)
    }
  })

  it("builds chains that `openssl verify` accepts only with the intermediate, and writes chain files", async () => {
    const leaf = await pki.leaf(intermediate, { name: "chained" })
    const ok = await Openssl.verdict(
      "verify",
      "-CAfile",
      pki.caFile,
      "-untrusted",
      intermediate.certFile,
      leaf.certFile
    )
    expect(ok.code).toBe(0)
    expect(ok.out).toContain(`${leaf.certFile}: OK`)
    const missing = await Openssl.verdict("verify", "-CAfile", pki.caFile, leaf.certFile)
    expect(missing.code).not.toBe(0)
    expect(missing.out).toContain("unable to get local issuer certificate")
    expect(readFileSync(leaf.chainFile, "utf8")).toBe(leaf.certPem + intermediate.certPem)
    expect(readFileSync(leaf.certFile, "utf8")).toBe(leaf.certPem)
    expect(readFileSync(pki.caFile, "utf8")).toBe(pki.caPem)
    expect(pki.caPem).toContain(root.certPem)
    expect(statSync(leaf.keyFile).mode & 0o777).toBe(0o600)
  })

  it("serves a leaf that Node's tls client verifies against pki.caFile (server auth)", async () => {
    const server = await pki.leaf(intermediate, { name: "tls-server" })
    const result = await handshake(
      { cert: server.chainPem, key: server.keyPem },
      { ca: readFileSync(pki.caFile), rejectUnauthorized: true }
    )
    expect(result.client).toEqual({ ok: true, peerCN: "tls-server" })
  })

  it("completes mutual TLS with requestCert + rejectUnauthorized and refuses a foreign CA's client", async () => {
    const server = await pki.leaf(root, { name: "mtls-server" })
    const client = await pki.leaf(intermediate, { name: "mtls-client" })
    const serverOptions: tls.TlsOptions = {
      cert: server.certPem,
      key: server.keyPem,
      ca: pki.caPem,
      requestCert: true,
      rejectUnauthorized: true
    }
    const good = await handshake(serverOptions, { ca: pki.caPem, cert: client.chainPem, key: client.keyPem })
    expect(good.client.ok).toBe(true)
    expect(good.server).toEqual({ authorized: true, peerCN: "mtls-client" })

    const other = await TestPki.make()
    try {
      const foreignCa = await other.ca({ name: "foreign" })
      const stranger = await other.leaf(foreignCa, { name: "stranger" })
      const bad = await handshake(serverOptions, { ca: pki.caPem, cert: stranger.certPem, key: stranger.keyPem })
      // Under TLS 1.3 the client finishes first; the server then drops it without a word.
      expect(bad.client.ok).toBe(false)
      expect(bad.server.authorized).toBe(false)
      expect(bad.server.peerCN).toBeUndefined()
      // The same server without rejectUnauthorized tells why it would have refused.
      const why = await handshake(
        { ...serverOptions, rejectUnauthorized: false },
        { ca: pki.caPem, cert: stranger.certPem, key: stranger.keyPem }
      )
      expect(why.server).toEqual({
        authorized: false,
        peerCN: "stranger",
        authorizationError: "UNABLE_TO_VERIFY_LEAF_SIGNATURE"
      })
    } finally {
      await other.cleanup()
    }
  })

  it("makes Ed25519 and RSA identities that work in a TLS handshake", async () => {
    const ed = await pki.leaf(root, { name: "ed", keyType: "Ed25519" })
    const rsaCa = await pki.ca({ name: "rsa-ca", keyType: "RSA" })
    expect(createPrivateKey(ed.keyPem).asymmetricKeyType).toBe("ed25519")
    expect(createPrivateKey(rsaCa.keyPem).asymmetricKeyDetails?.modulusLength).toBe(2048)
    // An EC leaf signed by the RSA CA (sha256WithRSAEncryption) and an Ed25519 leaf (TLS 1.3).
    const ecUnderRsa = await pki.leaf(rsaCa, { name: "ec-under-rsa" })
    expect(new X509Certificate(ecUnderRsa.certPem).verify(new X509Certificate(rsaCa.certPem).publicKey)).toBe(true)
    for (const id of [ed, ecUnderRsa]) {
      const result = await handshake({ cert: id.certPem, key: id.keyPem }, { ca: pki.caPem })
      expect(result.client).toEqual({ ok: true, peerCN: id.name })
    }
  })

  it("makes expired and not-yet-valid leaves that TLS and openssl reject for that reason", async () => {
    const day = 86_400_000
    const expired = await pki.leaf(root, {
      name: "expired",
      notBefore: new Date(Date.now() - 10 * day),
      notAfter: new Date(Date.now() - day)
    })
    const result = await handshake({ cert: expired.certPem, key: expired.keyPem }, { ca: pki.caPem })
    expect(result.client).toEqual({ ok: false, error: "CERT_HAS_EXPIRED" })

    const future = await pki.leaf(root, { name: "future", notBefore: new Date(Date.now() + day) })
    const verdict = await Openssl.verdict("verify", "-CAfile", pki.caFile, future.certFile)
    expect(verdict.code).not.toBe(0)
    expect(verdict.out).toContain("certificate is not yet valid")
  })

  it("encrypts keys as PKCS#8 or legacy PEM that openssl and Node decrypt only with the password", async () => {
    const cases = [
      { keyType: "EC", keyFormat: "pkcs8", header: "-----BEGIN ENCRYPTED PRIVATE KEY-----" },
      { keyType: "EC", keyFormat: "legacy", header: "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED" },
      { keyType: "Ed25519", keyFormat: "pkcs8", header: "-----BEGIN ENCRYPTED PRIVATE KEY-----" }
    ] as const
    for (const [i, c] of cases.entries()) {
      const id = await pki.leaf(root, {
        name: `enc-${i}`,
        keyType: c.keyType,
        keyFormat: c.keyFormat,
        keyPassword: "p4ss"
      })
      expect(id.keyPem.startsWith(c.header)).toBe(true)
      expect(id.keyPassword).toBe("p4ss")
      expect(readFileSync(id.keyFile, "utf8")).toBe(id.keyPem)
      expect((await Openssl.verdict("pkey", "-in", id.keyFile, "-passin", "pass:p4ss", "-noout")).code).toBe(0)
      expect((await Openssl.verdict("pkey", "-in", id.keyFile, "-passin", "pass:nope", "-noout")).code).not.toBe(0)
      const key = createPrivateKey({ key: id.keyPem, passphrase: "p4ss" })
      const fromKey = createPublicKey(key).export({ type: "spki", format: "der" })
      const fromCert = new X509Certificate(id.certPem).publicKey.export({ type: "spki", format: "der" })
      expect(Buffer.compare(fromKey, fromCert)).toBe(0)
    }
    const plainLegacy = await pki.leaf(root, { name: "plain-legacy", keyFormat: "legacy" })
    expect(plainLegacy.keyPem.startsWith("-----BEGIN EC PRIVATE KEY-----\nMH")).toBe(true)
    expect(plainLegacy.keyPassword).toBeUndefined()
    await expect(pki.leaf(root, { name: "ed-legacy", keyType: "Ed25519", keyFormat: "legacy" })).rejects.toThrow(
      /no legacy/
    )
  })

  it("writes legacy RSA keys as PKCS#1 with Proc-Type: 4,ENCRYPTED", async () => {
    const id = await pki.leaf(root, { name: "rsa-legacy", keyType: "RSA", keyFormat: "legacy", keyPassword: "r" })
    expect(id.keyPem).toMatch(/^-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,/)
    expect(createPrivateKey({ key: id.keyPem, passphrase: "r" }).asymmetricKeyType).toBe("rsa")
  })

  it("refuses to issue from a non-CA and to reuse a name", async () => {
    const leaf = await pki.leaf(root, { name: "not-a-ca" })
    await expect(pki.leaf(leaf, { name: "child" })).rejects.toThrow(/not a CA/)
    await expect(pki.leaf(root, { name: "not-a-ca" })).rejects.toThrow(/already used/)
    await expect(pki.leaf(root, { name: "../escape" })).rejects.toThrow(/safe file name/)
    await expect(pki.leaf(root, { name: "bad-attr", subject: [{ XYZ: "1" }] })).rejects.toThrow(/unknown DN attribute/)
  })

  it("writes CRLs that openssl verifies against the CA and that make Node's TLS refuse a revoked peer", async () => {
    const server = await pki.leaf(root, { name: "crl-server" })
    const good = await pki.leaf(root, { name: "crl-good" })
    const bad = await pki.leaf(root, { name: "crl-bad" })
    const crl = await pki.crl(root, { name: "root-crl", revoked: [bad], crlNumber: 7 })
    const text = (await Openssl.verdict("crl", "-in", crl.file, "-CAfile", pki.caFile, "-noout", "-text")).out
    expect(text).toContain("verify OK")
    expect(text).toContain(`Serial Number: ${bad.x509.serialNumber.toUpperCase()}`)
    expect(text).not.toContain(`Serial Number: ${good.x509.serialNumber.toUpperCase()}`)
    expect(text).toMatch(/X509v3 CRL Number:\s+7/)
    const why = (client: TestPki.Identity, crlPem: string | ReadonlyArray<string>) =>
      handshake(
        {
          cert: server.certPem,
          key: server.keyPem,
          ca: pki.caPem,
          crl: crlPem as string | Array<string>,
          requestCert: true,
          rejectUnauthorized: false
        },
        { ca: pki.caPem, cert: client.chainPem, key: client.keyPem }
      )
    expect((await why(good, crl.pem)).server).toEqual({ authorized: true, peerCN: "crl-good" })
    expect((await why(bad, crl.pem)).server.authorizationError).toBe("CERT_REVOKED")
    // A CRL past its nextUpdate: OpenSSL refuses every peer it covers (fails closed by itself).
    const stale = await pki.crl(root, {
      name: "root-stale",
      thisUpdate: new Date(Date.now() - 2 * 86_400_000),
      nextUpdate: new Date(Date.now() - 86_400_000)
    })
    expect((await why(good, stale.pem)).server.authorizationError).toBe("CRL_HAS_EXPIRED")
    // Node turns on CRL checking for the whole chain (X509_V_FLAG_CRL_CHECK_ALL): a leaf of the
    // intermediate needs the intermediate's CRL and the root's (which covers the intermediate).
    const viaIntermediate = await pki.leaf(intermediate, { name: "crl-via-intermediate" })
    const interCrl = await pki.crl(intermediate, { name: "intermediate-crl" })
    expect((await why(viaIntermediate, interCrl.pem)).server.authorizationError).toBe("UNABLE_TO_GET_CRL")
    expect((await why(viaIntermediate, crl.pem)).server.authorizationError).toBe("UNABLE_TO_GET_CRL")
    // Node reads one CRL per `crl` entry: a PEM string with two CRLs gives OpenSSL only the first.
    expect((await why(viaIntermediate, interCrl.pem + crl.pem)).server.authorizationError).toBe("UNABLE_TO_GET_CRL")
    expect((await why(viaIntermediate, [interCrl.pem, crl.pem])).server).toEqual({
      authorized: true,
      peerCN: "crl-via-intermediate"
    })
    const interRevoked = await pki.crl(root, { name: "root-revokes-intermediate", revoked: [intermediate] })
    expect((await why(viaIntermediate, [interCrl.pem, interRevoked.pem])).server.authorizationError).toBe(
      "CERT_REVOKED"
    )
  })

  it("cleans up its own temp dir, or only its files in a given dir", async () => {
    const own = await TestPki.make()
    const ca = await own.ca()
    const extra = await own.write("extra.txt", "x")
    expect(existsSync(extra)).toBe(true)
    await own.cleanup()
    expect(existsSync(own.dir)).toBe(false)
    expect(existsSync(ca.certFile)).toBe(false)

    const given = mkdtempSync(join(tmpdir(), "sleeve-given-"))
    try {
      {
        await using inGiven = await TestPki.make({ dir: given })
        await inGiven.ca({ name: "g" })
        expect(existsSync(join(given, "g.crt"))).toBe(true)
      }
      expect(existsSync(given)).toBe(true)
      expect(existsSync(join(given, "g.crt"))).toBe(false)
      expect(existsSync(join(given, "ca-bundle.pem"))).toBe(false)
    } finally {
      rmSync(given, { recursive: true, force: true })
    }
  })
})
