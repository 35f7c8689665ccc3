import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Redacted, Result } from "effect"
import { constants as cryptoConstants, generateKeyPairSync, webcrypto } from "node:crypto"
import { mkdir } from "node:fs/promises"
import { join } from "node:path"
import * as Tls from "node:tls"
import { inspect } from "node:util"
// @sleeve/testing is not a dependency of core (it depends on core); import its source directly.
import * as TestPki from "../../testing/src/TestPki.ts"
import * as Certificate from "../src/Certificate.ts"
import * as ConfigFile from "../src/ConfigFile.ts"
import { x509 } from "../src/internal/x509.ts"
import * as PeerPolicy from "../src/PeerPolicy.ts"
import * as TlsMaterial from "../src/TlsMaterial.ts"

const PASSWORD = "correct horse battery staple"
const DAY = 86_400_000
const FILE = "sleeve.yaml"

const certOf = (pem: string): Certificate.Certificate => {
  const r = Certificate.parsePem(pem)
  if (Result.isFailure(r)) throw new Error(r.failure.message)
  return r.success[0]!
}

/** Everything an error could leak through. */
const rendered = (value: unknown): string => [inspect(value, { depth: 6 }), JSON.stringify(value)].join("\n")

interface Outcome {
  readonly server: {
    readonly error: string | undefined
    readonly authorized: boolean
    readonly verifyError: string | undefined
    readonly chain: ReadonlyArray<Certificate.Certificate>
  }
  readonly client: {
    readonly error: string | undefined
    readonly authorized: boolean
    readonly protocol: string | null
    readonly cipher: string | undefined
    readonly received: string
    readonly chain: ReadonlyArray<Certificate.Certificate>
  }
}

const peerChain = (socket: Tls.TLSSocket): ReadonlyArray<Certificate.Certificate> => {
  const out: Array<Certificate.Certificate> = []
  const seen = new Set<string>()
  let c: Tls.DetailedPeerCertificate | undefined = socket.getPeerCertificate(true)
  while (c?.raw !== undefined && !seen.has(c.fingerprint256)) {
    seen.add(c.fingerprint256)
    out.push(Result.getOrThrow(Certificate.fromDer(c.raw)))
    c = c.issuerCertificate
  }
  return out
}

/**
 * One real TLS connection over loopback; the server answers "pong" and closes. Resolves once the
 * client socket has closed and the server has an outcome (or 5 s have passed).
 */
const handshake = (serverOptions: Tls.TlsOptions, clientOptions: Tls.ConnectionOptions): Promise<Outcome> =>
  new Promise((resolve, reject) => {
    let server: Outcome["server"] | undefined
    let client: Outcome["client"] | undefined
    let received = ""
    let clientInfo: Omit<Outcome["client"], "error" | "received"> = {
      authorized: false,
      protocol: null,
      cipher: undefined,
      chain: []
    }
    const deadline = Date.now() + 5_000
    const srv = Tls.createServer(serverOptions, (socket) => {
      server = {
        error: undefined,
        authorized: socket.authorized,
        verifyError: socket.authorizationError === null ? undefined : String(socket.authorizationError),
        chain: peerChain(socket)
      }
      socket.on("error", () => {})
      socket.end("pong")
    })
    srv.on("tlsClientError", (e: NodeJS.ErrnoException) => {
      server = { error: e.code ?? e.message, authorized: false, verifyError: undefined, chain: [] }
    })
    srv.on("error", reject)
    const finish = () => {
      if (client === undefined) return
      if (server === undefined && Date.now() < deadline) {
        setTimeout(finish, 10)
        return
      }
      srv.close()
      resolve({
        server: server ?? { error: "no server outcome", authorized: false, verifyError: undefined, chain: [] },
        client
      })
    }
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as { port: number }
      const socket = Tls.connect({ ...clientOptions, host: "127.0.0.1", port })
      socket.on("secureConnect", () => {
        clientInfo = {
          authorized: socket.authorized,
          protocol: socket.getProtocol(),
          cipher: socket.getCipher()?.standardName,
          chain: peerChain(socket)
        }
      })
      socket.on("data", (d: Buffer) => {
        received += d.toString()
      })
      socket.on("error", (e: NodeJS.ErrnoException) => {
        client ??= { ...clientInfo, error: e.code ?? e.message, received }
      })
      socket.on("close", () => {
        client ??= { ...clientInfo, error: undefined, received }
        finish()
      })
    })
  })

describe("TlsMaterial", () => {
  let pki: TestPki.TestPki
  let root: TestPki.Identity
  let intermediate: TestPki.Identity
  let otherRoot: TestPki.Identity
  /** Mirror member, key encrypted with PASSWORD, issued by the intermediate. */
  let node1: TestPki.Identity
  /** Mirror member, unencrypted key, issued by the intermediate. */
  let node2: TestPki.Identity
  /** KU present, EKU serverAuth only: not dual-use, not a client. */
  let serverOnly: TestPki.Identity
  /** Issued by the root directly, for revocation. */
  let revoked: TestPki.Identity
  let rootCaFile: string
  let passwordFile: string

  beforeAll(async () => {
    pki = await TestPki.make()
    root = await pki.ca({ name: "root", subject: [{ CN: "Sleeve Test Root" }, { O: "Example Corp" }] })
    intermediate = await pki.intermediate(root, {
      name: "intermediate",
      subject: [{ CN: "Sleeve Issuing CA" }, { O: "Example Corp" }]
    })
    otherRoot = await pki.ca({ name: "other-root", subject: [{ CN: "Other Root" }, { O: "Elsewhere" }] })
    node1 = await pki.leaf(intermediate, {
      name: "node1",
      subject: [{ CN: "node1" }, { OU: "Mirror" }, { O: "Example Corp" }],
      keyPassword: PASSWORD
    })
    node2 = await pki.leaf(intermediate, {
      name: "node2",
      subject: [{ CN: "node2" }, { OU: "Mirror" }, { O: "Example Corp" }]
    })
    serverOnly = await pki.leaf(intermediate, { name: "server-only", extendedKeyUsage: ["serverAuth"] })
    revoked = await pki.leaf(root, { name: "revoked" })
    rootCaFile = await pki.write("root-ca.pem", root.certPem)
    await pki.write("other-ca.pem", otherRoot.certPem)
    passwordFile = await pki.write("node1.password", `${PASSWORD}\n`)
  })
  afterAll(async () => {
    await pki.cleanup()
  })

  /** Decodes `tls: { X: <body> }` as if from <pki.dir>/sleeve.yaml, so relative paths are the PKI's files. */
  const configOf = (body: string, name = "X"): ConfigFile.TlsConfig => {
    const r = ConfigFile.decode(`tls:\n  ${name}:\n${body.replace(/^/gm, "    ")}\n`, join(pki.dir, "sleeve.yaml"))
    if (Result.isFailure(r)) throw new Error(r.failure.message)
    return r.success.tls.get(name)!
  }

  const load = (config: ConfigFile.TlsConfig, options: Partial<TlsMaterial.LoadOptions> = {}): TlsMaterial.Loaded =>
    TlsMaterial.load(config, {
      file: FILE,
      now: new Date(),
      expiryWarningMs: 14 * DAY,
      env: { NODE1_PW: PASSWORD },
      ...options
    })

  const lines = (loaded: TlsMaterial.Loaded): ReadonlyArray<string> => loaded.problems.map(ConfigFile.formatProblem)

  const mirrorServer = () =>
    configOf(`type: server
caFile: root-ca.pem
certificateFile: node1.chain.pem
privateKeyFile: node1.key
privateKeyPassword: { env: NODE1_PW }
verifyPeer: require
authorizedPeers: ["CN=node2,OU=Mirror,O=Example Corp"]
requireDualUse: true`)

  const mirrorClient = () =>
    configOf(`type: client
caFile: root-ca.pem
certificateFile: node2.chain.pem
privateKeyFile: node2.key
authorizedPeers: ["CN=node1,OU=Mirror,O=Example Corp"]
requireDualUse: true`)

  describe("success", () => {
    it("loads a mirror server configuration: chain, decrypted key, CA, files, Node options", () => {
      const loaded = load(mirrorServer())
      expect(loaded.problems).toEqual([])
      const m = loaded.material!
      expect(m.chain?.map((c) => c.subjectString)).toEqual([
        "CN=node1,OU=Mirror,O=Example Corp",
        "CN=Sleeve Issuing CA,O=Example Corp"
      ])
      expect(m.ca.map((c) => c.subjectString)).toEqual(["CN=Sleeve Test Root,O=Example Corp"])
      expect(m.caPem).toBe(root.certPem)
      expect(m.crlPem).toBeUndefined()
      expect(m.files).toEqual([rootCaFile, node1.chainFile, node1.keyFile])
      // The key is decrypted in memory, never shown.
      const key = Redacted.value(m.keyPem!)
      expect(key).toMatch(/^-----BEGIN PRIVATE KEY-----\n/)
      expect(rendered(m.keyPem)).not.toContain("PRIVATE KEY")
      const o = m.secureContextOptions
      expect(o.minVersion).toBe("TLSv1.2")
      expect(o.maxVersion).toBe("TLSv1.3")
      expect(o.ciphers).toBe(ConfigFile.defaults.cipherList)
      expect(o.cert).toBe(node1.chainPem)
      expect(o.key).toBe(key)
      expect(o.ca).toBe(root.certPem)
      expect(o.honorCipherOrder).toBe(true)
      expect((o.secureOptions ?? 0) & cryptoConstants.SSL_OP_NO_RENEGOTIATION).toBe(
        cryptoConstants.SSL_OP_NO_RENEGOTIATION
      )
      expect(() => Tls.createSecureContext(o)).not.toThrow()
    })

    it("the material of both sides makes a real mutual-TLS handshake over loopback, which PeerPolicy allows", async () => {
      const server = load(mirrorServer()).material!
      const client = load(mirrorClient()).material!
      const outcome = await handshake(
        { ...server.secureContextOptions, requestCert: true, rejectUnauthorized: true },
        { ...client.secureContextOptions, servername: "localhost" }
      )
      expect(outcome.client.error).toBeUndefined()
      expect(outcome.client.authorized).toBe(true)
      expect(outcome.client.protocol).toBe("TLSv1.3")
      expect(outcome.client.received).toBe("pong")
      expect(outcome.server.error).toBeUndefined()
      expect(outcome.server.authorized).toBe(true)
      // The client sees the verified chain up to the root. (On the server side this Node reports
      // only the leaf: nodejs/node#65579.)
      expect(outcome.client.chain.map((c) => c.subjectString)).toEqual([
        "CN=node1,OU=Mirror,O=Example Corp",
        "CN=Sleeve Issuing CA,O=Example Corp",
        "CN=Sleeve Test Root,O=Example Corp"
      ])
      expect(outcome.server.chain[0]?.subjectString).toBe("CN=node2,OU=Mirror,O=Example Corp")
      // Each side's decision on what it observed: both allowed by authorizedPeers and requireDualUse.
      const observed = (chain: ReadonlyArray<Certificate.Certificate>): PeerPolicy.Observed => ({
        chain,
        verified: true,
        verifyError: undefined
      })
      expect(PeerPolicy.authorize(server.config, observed(outcome.server.chain))._tag).toBe("Allow")
      expect(PeerPolicy.authorize(client.config, observed(outcome.client.chain))._tag).toBe("Allow")
      // Each would refuse the other's certificate in its own place: the DNs differ.
      expect(PeerPolicy.authorize(server.config, observed(outcome.client.chain))._tag).toBe("Deny")
    })

    it("only caFile is trusted: a client trusting another CA rejects the server", async () => {
      const server = load(mirrorServer()).material!
      const client = load(configOf("type: client\ncaFile: other-ca.pem")).material!
      const outcome = await handshake(server.secureContextOptions, {
        ...client.secureContextOptions,
        servername: "localhost"
      })
      expect(outcome.client.error).toBe("UNABLE_TO_GET_ISSUER_CERT_LOCALLY")
    })

    it("protocols and cipherSuites are applied: TLS 1.2 with the default ECDHE/AEAD list; the chosen TLS 1.3 suite", async () => {
      const tls12 = load(
        configOf(
          "type: server\ncertificateFile: node2.chain.pem\nprivateKeyFile: node2.key\nprotocols: { max: TLSv1.2 }"
        )
      ).material!
      const client = load(configOf("type: client\ncaFile: root-ca.pem")).material!
      const a = await handshake(tls12.secureContextOptions, { ...client.secureContextOptions, servername: "localhost" })
      expect(a.client.protocol).toBe("TLSv1.2")
      expect(a.client.cipher).toBe("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256")
      // Node has no `ciphersuites` option: the suites must travel in `ciphers` to take effect.
      const chacha = load(
        configOf(
          "type: server\ncertificateFile: node2.chain.pem\nprivateKeyFile: node2.key\ncipherSuites: TLS_CHACHA20_POLY1305_SHA256"
        )
      ).material!
      expect(chacha.secureContextOptions.ciphers).toBe(`${ConfigFile.defaults.cipherList}:TLS_CHACHA20_POLY1305_SHA256`)
      const b = await handshake(chacha.secureContextOptions, {
        ...client.secureContextOptions,
        servername: "localhost"
      })
      expect(b.client.protocol).toBe("TLSv1.3")
      expect(b.client.cipher).toBe("TLS_CHACHA20_POLY1305_SHA256")
    })

    it("a client configuration without a certificate, and without verification, needs no file at all", () => {
      const loaded = load(configOf("type: client\nverifyPeer: none"))
      expect(loaded.problems).toEqual([])
      expect(loaded.material?.chain).toBeUndefined()
      expect(loaded.material?.keyPem).toBeUndefined()
      expect(loaded.material?.files).toEqual([])
    })

    it("crlFile: a real CRL is loaded and makes the server refuse a revoked client certificate", async () => {
      const signingKey = await webcrypto.subtle.importKey(
        "pkcs8",
        root.privateKey.export({ type: "pkcs8", format: "der" }),
        { name: "ECDSA", namedCurve: "P-256" },
        false,
        ["sign"]
      )
      const crl = await x509.X509CrlGenerator.create({
        issuer: root.x509.subject,
        thisUpdate: new Date(Date.now() - 60_000),
        nextUpdate: new Date(Date.now() + DAY),
        entries: [{ serialNumber: revoked.x509.serialNumber, revocationDate: new Date(Date.now() - 60_000) }],
        signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
        signingKey: signingKey as unknown as Parameters<typeof x509.X509CrlGenerator.create>[0]["signingKey"]
      })
      const crlFile = await pki.write("root.crl.pem", x509.PemConverter.encode(crl.rawData, "X509 CRL"))
      const loaded = load(
        configOf(
          "type: server\ncertificateFile: node2.chain.pem\nprivateKeyFile: node2.key\ncaFile: root-ca.pem\nverifyPeer: require\ncrlFile: root.crl.pem"
        )
      )
      expect(lines(loaded)).toEqual([])
      expect(loaded.material?.crlPem).toContain("-----BEGIN X509 CRL-----")
      expect(loaded.material?.files).toContain(crlFile)
      const server = loaded.material!
      const clientOf = (name: string) =>
        load(
          configOf(
            `type: client\ncaFile: root-ca.pem\ncertificateFile: ${name}.crt\nprivateKeyFile: ${name}.key`,
            name.replace("-", "")
          )
        ).material!
      const refused = await handshake(
        { ...server.secureContextOptions, requestCert: true, rejectUnauthorized: false },
        { ...clientOf("revoked").secureContextOptions, servername: "localhost" }
      )
      // OpenSSL's verdict on the revoked certificate, as PeerPolicy receives it.
      expect(refused.server.error).toBeUndefined()
      expect(refused.server.authorized).toBe(false)
      expect(refused.server.verifyError).toBe("CERT_REVOKED")
      const decision = PeerPolicy.authorize(server.config, {
        chain: refused.server.chain,
        verified: refused.server.authorized,
        verifyError: refused.server.verifyError
      })
      expect(decision).toMatchObject({ _tag: "Deny", reason: "unverified", verifyError: "CERT_REVOKED" })
      const direct = await pki.leaf(root, { name: "direct" })
      expect(direct.issuer).toBe(root)
      const accepted = await handshake(
        { ...server.secureContextOptions, requestCert: true, rejectUnauthorized: true },
        { ...clientOf("direct").secureContextOptions, servername: "localhost" }
      )
      expect(accepted.server.error).toBeUndefined()
      expect(accepted.server.authorized).toBe(true)
    })
  })

  describe("files", () => {
    it("a missing file, a directory", async () => {
      await mkdir(join(pki.dir, "a-directory"), { recursive: true })
      const loaded = load(
        configOf(
          "type: server\ncaFile: missing-ca.pem\ncertificateFile: a-directory\nprivateKeyFile: missing.key\nverifyPeer: require"
        )
      )
      expect(loaded.material).toBeUndefined()
      expect(lines(loaded)).toEqual([
        `sleeve.yaml: tls.X.caFile: file not found: ${join(pki.dir, "missing-ca.pem")}`,
        `sleeve.yaml: tls.X.certificateFile: is a directory, not a file: ${join(pki.dir, "a-directory")}`,
        `sleeve.yaml: tls.X.privateKeyFile: file not found: ${join(pki.dir, "missing.key")}`
      ])
    })

    it("a CA file that holds no certificate, or a broken one", async () => {
      const text = await pki.write("not-a-ca.pem", "this is not a certificate\n")
      const broken = await pki.write(
        "broken-ca.pem",
        "-----BEGIN CERTIFICATE-----\nnot*base64\n-----END CERTIFICATE-----\n"
      )
      expect(lines(load(configOf("type: client\ncaFile: not-a-ca.pem")))).toEqual([
        `sleeve.yaml: tls.X.caFile: ${text}: no "-----BEGIN CERTIFICATE-----" block found`
      ])
      expect(lines(load(configOf("type: client\ncaFile: broken-ca.pem")))).toEqual([
        `sleeve.yaml: tls.X.caFile: ${broken}: certificate #1 (line 1) is not valid base64`
      ])
    })

    it("a CRL file without a CRL, or with one that cannot be parsed", async () => {
      const empty = await pki.write("empty.crl", "nothing here\n")
      const garbage = await pki.write("garbage.crl", "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
      const base = "type: client\ncaFile: root-ca.pem\n"
      expect(lines(load(configOf(`${base}crlFile: empty.crl`)))).toEqual([
        `sleeve.yaml: tls.X.crlFile: ${empty} holds no X509 CRL block`
      ])
      const broken = lines(load(configOf(`${base}crlFile: garbage.crl`)))
      expect(broken).toHaveLength(1)
      expect(broken[0]).toMatch(new RegExp(`^sleeve\\.yaml: tls\\.X\\.crlFile: ${garbage}: CRL #1 cannot be parsed: `))
    })

    it("a CRL must be signed by its issuer in caFile, with cRLSign, and already valid; every CRL is put in force", async () => {
      const base = "type: client\ncaFile: root-ca.pem\n"
      // Issued by a CA that is not in caFile.
      const foreign = await pki.crl(otherRoot, { name: "other-root-crl" })
      expect(lines(load(configOf(`${base}crlFile: ${foreign.file}`)))).toEqual([
        `sleeve.yaml: tls.X.crlFile: CRL #1 (issuer "CN=Other Root,O=Elsewhere") was not issued by a CA in caFile; OpenSSL could not verify it and would reject every peer it applies to`
      ])
      // Same issuer DN, another key: a forged CRL.
      const impostorPki = await TestPki.make()
      try {
        const impostor = await impostorPki.ca({
          name: "impostor",
          subject: [{ CN: "Sleeve Test Root" }, { O: "Example Corp" }]
        })
        const forged = await impostorPki.crl(impostor, { name: "forged" })
        expect(lines(load(configOf(`${base}crlFile: ${forged.file}`)))).toEqual([
          `sleeve.yaml: tls.X.crlFile: CRL #1 (issuer "CN=Sleeve Test Root,O=Example Corp"): its signature does not verify with the key of "CN=Sleeve Test Root,O=Example Corp" in caFile (a forged, corrupted or re-keyed CRL)`
        ])
        const noCrlSign = await impostorPki.ca({ name: "no-crl-sign", keyUsage: ["keyCertSign"] })
        const unusable = await impostorPki.crl(noCrlSign, { name: "unusable" })
        expect(
          lines(load(configOf(`type: client\ncaFile: ${impostorPki.caFile}\ncrlFile: ${unusable.file}`))).filter((l) =>
            l.includes("cRLSign")
          )
        ).toEqual([
          `sleeve.yaml: tls.X.crlFile: CRL #1 (issuer "CN=no-crl-sign"): the issuing CA's Key Usage does not include cRLSign, so OpenSSL refuses its CRLs`
        ])
      } finally {
        await impostorPki.cleanup()
      }
      const future = await pki.crl(root, { name: "future", thisUpdate: new Date(Date.now() + DAY) })
      expect(lines(load(configOf(`${base}crlFile: ${future.file}`)))[0]).toMatch(
        /^sleeve\.yaml: tls\.X\.crlFile: CRL #1 \(issuer "CN=Sleeve Test Root,O=Example Corp"\) is not valid yet \(thisUpdate /
      )
      // A good CRL followed by a bad one: nothing is put in force (all or nothing).
      const good = await pki.crl(root, { name: "good" })
      const mixed = await pki.write("mixed.crl.pem", good.pem + foreign.pem)
      const loadedMixed = load(configOf(`${base}crlFile: ${mixed}`))
      expect(loadedMixed.material).toBeUndefined()
      expect(lines(loadedMixed)).toEqual([
        `sleeve.yaml: tls.X.crlFile: CRL #2 (issuer "CN=Other Root,O=Elsewhere") was not issued by a CA in caFile; OpenSSL could not verify it and would reject every peer it applies to`
      ])
      // Two CRLs, two CAs: both reach OpenSSL, one `crl` entry each.
      const both = await pki.write("root-and-intermediate-ca.pem", intermediate.certPem + root.certPem)
      const interCrl = await pki.crl(intermediate, { name: "inter" })
      const two = await pki.write("two.crl.pem", good.pem + interCrl.pem)
      const loaded = load(configOf(`type: client\ncaFile: ${both}\ncrlFile: ${two}`))
      expect(lines(loaded)).toEqual([])
      expect(loaded.material?.revocation).toBe("openssl")
      expect(loaded.material?.crls.map((c) => [c.index, c.issuerString, c.crlNumber])).toEqual([
        [1, "CN=Sleeve Test Root,O=Example Corp", expect.any(String)],
        [2, "CN=Sleeve Issuing CA,O=Example Corp", expect.any(String)]
      ])
      expect(loaded.material?.secureContextOptions.crl).toEqual([good.pem, interCrl.pem])
      // The same file cut in the middle of its second CRL (written in place while read): broken,
      // not a file of one CRL.
      const cut = good.pem + interCrl.pem.slice(0, Math.floor(interCrl.pem.length / 2))
      const halfWritten = await pki.write("two-cut.crl.pem", cut)
      const loadedCut = load(configOf(`type: client\ncaFile: ${both}\ncrlFile: ${halfWritten}`))
      expect(loadedCut.material).toBeUndefined()
      expect(lines(loadedCut).join("\n")).toMatch(/CRL #2 is incomplete: a BEGIN X509 CRL line without its END line/)
    })

    it("a CA of caFile without a CRL, and a stale CRL, are warned about; crlStale decides who applies the CRL", async () => {
      const both = await pki.write("root-and-intermediate-ca-2.pem", intermediate.certPem + root.certPem)
      const rootCrl = await pki.crl(root, { name: "root-only" })
      const missing = load(configOf(`type: client\ncaFile: ${both}\ncrlFile: ${rootCrl.file}`))
      expect(lines(missing)).toEqual([
        'sleeve.yaml: tls.X.crlFile: warning: no CRL for CA "CN=Sleeve Issuing CA,O=Example Corp" of caFile: revocation is checked for every certificate of a peer\'s chain, so peers whose chain goes through this CA are rejected (UNABLE_TO_GET_CRL); add its CRL'
      ])
      expect(missing.material?.revocation).toBe("openssl")
      const nextUpdate = new Date(Date.now() - 600_000)
      const stale = await pki.crl(root, { name: "stale", thisUpdate: new Date(Date.now() - DAY), nextUpdate })
      const rejecting = load(configOf(`type: client\ncaFile: root-ca.pem\ncrlFile: ${stale.file}`))
      expect(lines(rejecting)).toEqual([
        `sleeve.yaml: tls.X.crlFile: warning: CRL #1 (issuer "CN=Sleeve Test Root,O=Example Corp") is stale: its nextUpdate ${nextUpdate.toISOString().replace(/\.\d{3}Z$/, ".000Z")} has passed; with crlStale: reject every peer whose chain it covers is rejected (CRL_HAS_EXPIRED) until a fresh CRL is installed`
      ])
      expect(rejecting.material?.revocation).toBe("openssl")
      expect(rejecting.material?.secureContextOptions.crl).toEqual([stale.pem])
      const warning = load(configOf(`type: client\ncaFile: root-ca.pem\ncrlFile: ${stale.file}\ncrlStale: warn`))
      expect(lines(warning)[0]).toContain("crlStale: warn keeps serving, still rejecting the certificates it lists")
      expect(warning.material?.revocation).toBe("sleeve")
      expect(warning.material?.secureContextOptions.crl).toBeUndefined()
      expect(warning.material?.crls).toHaveLength(1)
      // The same CRL before its nextUpdate is not stale.
      const before = load(configOf(`type: client\ncaFile: root-ca.pem\ncrlFile: ${stale.file}\ncrlStale: warn`), {
        now: new Date(nextUpdate.getTime() - 60_000)
      })
      expect(lines(before)).toEqual([])
      expect(before.material?.revocation).toBe("openssl")
    })

    it("a malformed key file, and a key of a refused kind (reported against the key file, not the password)", async () => {
      const notKey = await pki.write("not-a-key.pem", node2.certPem)
      const k1 = generateKeyPairSync("ec", { namedCurve: "secp256k1" })
      const secp256k1 = await pki.write(
        "secp256k1.key",
        k1.privateKey.export({ type: "pkcs8", format: "pem" }) as string
      )
      const base = "type: server\ncertificateFile: node2.crt\n"
      expect(lines(load(configOf(`${base}privateKeyFile: not-a-key.pem`)))).toEqual([
        `sleeve.yaml: tls.X.privateKeyFile: TLS configuration "X": private key file ${notKey} has no "-----BEGIN … PRIVATE KEY-----" block`
      ])
      expect(
        lines(load(configOf(`${base}privateKeyFile: secp256k1.key\nprivateKeyPassword: { env: NODE1_PW }`)))
      ).toEqual([
        `sleeve.yaml: tls.X.privateKeyFile: TLS configuration "X": private key file ${secp256k1} holds an EC key on curve secp256k1; use P-256, P-384 or P-521`
      ])
    })
  })

  describe("key password", () => {
    const withPassword = (source: string) =>
      configOf(`type: server\ncertificateFile: node1.crt\nprivateKeyFile: node1.key\nprivateKeyPassword: ${source}`)

    it("from the environment; a missing or empty variable is named", () => {
      expect(lines(load(withPassword("{ env: NODE1_PW }")))).toEqual([])
      const missing =
        "sleeve.yaml: tls.X.privateKeyPassword: environment variable SLEEVE_KEY_PW is not set (it should hold the key password)"
      expect(lines(load(withPassword("{ env: SLEEVE_KEY_PW }")))).toEqual([missing])
      expect(lines(load(withPassword("{ env: SLEEVE_KEY_PW }"), { env: { SLEEVE_KEY_PW: "" } }))).toEqual([missing])
    })

    it("from a file, without its trailing newline; a missing file is named", async () => {
      const loaded = load(withPassword("{ file: node1.password }"))
      expect(lines(loaded)).toEqual([])
      expect(loaded.material?.files).toEqual([node1.certFile, node1.keyFile, passwordFile])
      await pki.write("node1.password.crlf", `${PASSWORD}\r\n`)
      expect(lines(load(withPassword("{ file: node1.password.crlf }")))).toEqual([])
      await pki.write("node1.password.bare", PASSWORD)
      expect(lines(load(withPassword("{ file: node1.password.bare }")))).toEqual([])
      // Only one trailing newline is stripped: anything else is part of the password.
      await pki.write("node1.password.spaces", `${PASSWORD} \n`)
      expect(lines(load(withPassword("{ file: node1.password.spaces }")))).toEqual([
        `sleeve.yaml: tls.X.privateKeyPassword: TLS configuration "X": private key file ${node1.keyFile} could not be decrypted with the configured password`
      ])
      expect(lines(load(withPassword("{ file: secrets/nope }")))).toEqual([
        `sleeve.yaml: tls.X.privateKeyPassword: password file not found: ${join(pki.dir, "secrets/nope")}`
      ])
    })

    it("from a prompt: asked with the configuration's name; without a terminal it is an error", () => {
      const asked: Array<string> = []
      const ok = load(withPassword("{ prompt: true }"), {
        prompt: (name) => {
          asked.push(name)
          return Redacted.make(PASSWORD)
        }
      })
      expect(lines(ok)).toEqual([])
      expect(asked).toEqual(["X"])
      const noTty =
        "sleeve.yaml: tls.X.privateKeyPassword: { prompt: true } needs an interactive terminal at start; use { env } or { file } for services"
      expect(lines(load(withPassword("{ prompt: true }")))).toEqual([noTty])
      expect(lines(load(withPassword("{ prompt: true }"), { prompt: () => undefined }))).toEqual([noTty])
    })

    it("a wrong password, or none for an encrypted key; the password never shows", () => {
      const wrong = load(withPassword("{ env: NODE1_PW }"), { env: { NODE1_PW: "Tr0ub4dor&3" } })
      expect(lines(wrong)).toEqual([
        `sleeve.yaml: tls.X.privateKeyPassword: TLS configuration "X": private key file ${node1.keyFile} could not be decrypted with the configured password`
      ])
      expect(rendered(wrong)).not.toContain("Tr0ub4dor")
      expect(lines(load(configOf("type: server\ncertificateFile: node1.crt\nprivateKeyFile: node1.key")))).toEqual([
        `sleeve.yaml: tls.X.privateKeyPassword: TLS configuration "X": private key file ${node1.keyFile} is encrypted and the configuration has no private key password`
      ])
      const good = load(withPassword("{ env: NODE1_PW }"))
      expect(rendered(good.material)).not.toContain(PASSWORD)
    })

    it("a password given at open time wins over the configured source", () => {
      const loaded = load(withPassword("{ env: NOT_SET }"), { env: {}, password: Redacted.make(PASSWORD) })
      expect(lines(loaded)).toEqual([])
      expect(loaded.material?.files).toEqual([node1.certFile, node1.keyFile])
      expect(lines(load(withPassword("{ env: NODE1_PW }"), { password: Redacted.make("wrong") }))).toEqual([
        `sleeve.yaml: tls.X.privateKeyPassword: TLS configuration "X": private key file ${node1.keyFile} could not be decrypted with the configured password`
      ])
    })

    it("resolvePassword on its own", () => {
      const value = (r: Result.Result<Redacted.Redacted<string>, string>) => Redacted.value(Result.getOrThrow(r))
      expect(value(TlsMaterial.resolvePassword({ _tag: "Env", name: "A" }, "X", { env: { A: "pw" } }))).toBe("pw")
      expect(value(TlsMaterial.resolvePassword({ _tag: "File", path: passwordFile }, "X", {}))).toBe(PASSWORD)
      expect(
        TlsMaterial.resolvePassword({ _tag: "Prompt" }, "X", { prompt: () => Redacted.make("typed") }).pipe(
          Result.map(Redacted.value)
        )
      ).toEqual(Result.succeed("typed"))
    })
  })

  describe("key and certificate checks", () => {
    it("privateKeyType must match the key", () => {
      expect(
        lines(
          load(configOf("type: server\ncertificateFile: node2.crt\nprivateKeyFile: node2.key\nprivateKeyType: RSA"))
        )
      ).toEqual([
        `sleeve.yaml: tls.X.privateKeyType: expected an RSA key, but ${node2.keyFile} holds an EC key (prime256v1)`
      ])
      expect(
        lines(load(configOf("type: server\ncertificateFile: node2.crt\nprivateKeyFile: node2.key\nprivateKeyType: EC")))
      ).toEqual([])
    })

    it("the key must belong to the certificate", () => {
      expect(lines(load(configOf("type: server\ncertificateFile: node1.crt\nprivateKeyFile: node2.key")))).toEqual([
        `sleeve.yaml: tls.X.privateKeyFile: TLS configuration "X": private key file ${node2.keyFile} does not belong to certificate "CN=node1,OU=Mirror,O=Example Corp" (${node1.certFile}): their public keys differ`
      ])
    })

    it("an expired certificate is an error; one inside the expiry horizon a warning", () => {
      const config = configOf("type: server\ncertificateFile: node2.crt\nprivateKeyFile: node2.key")
      const notAfter = certOf(node2.certPem).notAfter
      const late = new Date(notAfter.getTime() + DAY)
      const expired = load(config, { now: late })
      expect(expired.material).toBeUndefined()
      expect(lines(expired)).toEqual([
        `sleeve.yaml: tls.X.certificateFile: ${node2.certFile}: certificate "CN=node2,OU=Mirror,O=Example Corp" expired at ${notAfter.toISOString()} (now ${late.toISOString()})`
      ])
      const soon = new Date(notAfter.getTime() - 3 * DAY - 3_600_000)
      const warned = load(config, { now: soon })
      expect(warned.material).toBeDefined()
      expect(warned.problems.map((p) => p.severity)).toEqual(["warning"])
      expect(lines(warned)).toEqual([
        `sleeve.yaml: tls.X.certificateFile: warning: ${node2.certFile}: certificate "CN=node2,OU=Mirror,O=Example Corp" expires at ${notAfter.toISOString()}, in 3 days`
      ])
      // The horizon is the configuration's expiryWarning.
      expect(load(config, { now: soon, expiryWarningMs: 3 * DAY }).problems).toEqual([])
    })

    it("requireDualUse: the own certificate must allow both TLS roles", () => {
      const config = configOf(`type: server
certificateFile: server-only.chain.pem
privateKeyFile: server-only.key
caFile: root-ca.pem
verifyPeer: require
requireDualUse: true`)
      expect(lines(load(config))).toEqual([
        `sleeve.yaml: tls.X.certificateFile: ${serverOnly.chainFile}: certificate "CN=server-only" cannot serve as both TLS client and server (required for mirroring): its Extended Key Usage lacks clientAuth. Peers reject such a certificate during the handshake with "sslv3 alert unsupported certificate" (error:14094413:SSL routines:SSL3_READ_BYTES). Reissue it with Key Usage digitalSignature + keyEncipherment and Extended Key Usage serverAuth + clientAuth, or without these extensions.`
      ])
      // Without requireDualUse the one role of the configuration is checked.
      expect(
        lines(load(configOf("type: server\ncertificateFile: server-only.crt\nprivateKeyFile: server-only.key")))
      ).toEqual([])
      expect(
        lines(
          load(
            configOf(
              "type: client\nverifyPeer: none\ncertificateFile: server-only.crt\nprivateKeyFile: server-only.key"
            )
          )
        )
      ).toEqual([
        `sleeve.yaml: tls.X.certificateFile: ${serverOnly.certFile}: certificate "CN=server-only" cannot be used as a TLS client: its Extended Key Usage lacks clientAuth. Peers reject such a certificate during the handshake with "sslv3 alert unsupported certificate" (error:14094413:SSL routines:SSL3_READ_BYTES).`
      ])
    })

    it("an own certificate that does not chain to caFile is a warning", () => {
      const loaded = load(
        configOf("type: server\ncaFile: other-ca.pem\ncertificateFile: node2.chain.pem\nprivateKeyFile: node2.key")
      )
      expect(loaded.material).toBeDefined()
      expect(lines(loaded)).toEqual([
        'sleeve.yaml: tls.X.certificateFile: warning: certificate "CN=node2,OU=Mirror,O=Example Corp" does not chain to a certificate in caFile; peers that trust only that CA will reject it'
      ])
      // Through the intermediate in the certificate file, or directly, it chains: no warning.
      expect(
        lines(
          load(
            configOf("type: server\ncaFile: root-ca.pem\ncertificateFile: node2.chain.pem\nprivateKeyFile: node2.key")
          )
        )
      ).toEqual([])
      expect(
        lines(
          load(configOf("type: server\ncaFile: root-ca.pem\ncertificateFile: revoked.crt\nprivateKeyFile: revoked.key"))
        )
      ).toEqual([])
    })
  })

  describe("CA file order (leaf first; unrelated roots allowed)", () => {
    let r: Certificate.Certificate
    let i: Certificate.Certificate
    let l: Certificate.Certificate
    let o: Certificate.Certificate
    const tail = "; the file must hold this instance's certificate first, then each issuer in turn"

    beforeAll(() => {
      r = certOf(root.certPem)
      i = certOf(intermediate.certPem)
      l = certOf(node2.certPem)
      o = certOf(otherRoot.certPem)
    })

    it("in order, or unrelated certificates next to each other", () => {
      for (const certs of [[i, r], [l, i, r], [r], [i], [o, r], [r, o], [o, i, r], [i, r, o], [l, i]]) {
        expect(TlsMaterial.checkCaFileOrder(certs)).toBeUndefined()
      }
    })

    it("an issuer before the certificate it issued, or separated from it", () => {
      expect(TlsMaterial.checkCaFileOrder([r, i])).toBe(
        "certificates are out of order: the issuer of certificate #2 (CN=Sleeve Issuing CA,O=Example Corp) is certificate #1 (CN=Sleeve Test Root,O=Example Corp), but it comes before it" +
          tail
      )
      expect(TlsMaterial.checkCaFileOrder([i, o, r])).toBe(
        "certificates are out of order: the issuer of certificate #1 (CN=Sleeve Issuing CA,O=Example Corp) is certificate #3 (CN=Sleeve Test Root,O=Example Corp), but certificate #2 (CN=Other Root,O=Elsewhere) follows it" +
          tail
      )
      expect(TlsMaterial.checkCaFileOrder([l, r, i])).toBe(
        "certificates are out of order: the issuer of certificate #1 (CN=node2,OU=Mirror,O=Example Corp) is certificate #3 (CN=Sleeve Issuing CA,O=Example Corp), but certificate #2 (CN=Sleeve Test Root,O=Example Corp) follows it" +
          tail
      )
    })

    it("load reports an out-of-order CA file against caFile", async () => {
      await pki.write("reversed-ca.pem", root.certPem + intermediate.certPem)
      expect(lines(load(configOf("type: client\ncaFile: reversed-ca.pem")))).toEqual([
        `sleeve.yaml: tls.X.caFile: certificates are out of order: the issuer of certificate #2 (CN=Sleeve Issuing CA,O=Example Corp) is certificate #1 (CN=Sleeve Test Root,O=Example Corp), but it comes before it${tail}`
      ])
      await pki.write("bundle-ca.pem", otherRoot.certPem + intermediate.certPem + root.certPem)
      expect(lines(load(configOf("type: client\ncaFile: bundle-ca.pem")))).toEqual([])
    })
  })

  describe("ciphers", () => {
    const server = (extra: string) =>
      configOf(`type: server\ncertificateFile: node2.crt\nprivateKeyFile: node2.key\n${extra}`)

    it("a cipher list OpenSSL rejects", () => {
      expect(lines(load(server("cipherList: NOT-A-CIPHER")))).toEqual([
        `sleeve.yaml: tls.X.cipherList: rejected by this Node/OpenSSL (${process.versions.openssl}): error:0A0000B9:SSL routines::no cipher match`
      ])
    })

    it("TLS 1.3 suites belong in cipherSuites, and every name there must be known", () => {
      expect(lines(load(server("cipherList: ECDHE-ECDSA-AES128-GCM-SHA256:TLS_AES_128_GCM_SHA256")))).toEqual([
        "sleeve.yaml: tls.X.cipherList: TLS_AES_128_GCM_SHA256 is a TLS 1.3 suite; put TLS 1.3 suites in cipherSuites"
      ])
      const known = Tls.getCiphers()
        .filter((c) => c.startsWith("tls_"))
        .map((c) => c.toUpperCase())
      expect(known).toContain("TLS_AES_256_GCM_SHA384")
      // OpenSSL alone would silently drop the unknown name and keep the known one.
      expect(
        lines(load(server("cipherSuites: TLS_AES_256_GCM_SHA384:TLS_AES_512_GCM_SHA1024:ECDHE-RSA-AES128-GCM-SHA256")))
      ).toEqual([
        `sleeve.yaml: tls.X.cipherSuites: unknown TLS 1.3 suites "TLS_AES_512_GCM_SHA1024", "ECDHE-RSA-AES128-GCM-SHA256"; this Node/OpenSSL (${process.versions.openssl}) knows ${known.join(", ")}`
      ])
    })

    it("a TLS 1.2 list with suites lacking forward secrecy or AEAD gives a warning; exclusions do not", () => {
      const weak = load(
        server(
          "cipherList: ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-SHA256:AES128-GCM-SHA256:!RC4:!aNULL:-3DES:+SHA"
        )
      )
      expect(weak.material).toBeDefined()
      expect(lines(weak)).toEqual([
        "sleeve.yaml: tls.X.cipherList: warning: includes suites without AEAD or forward secrecy: ECDHE-ECDSA-AES128-SHA256, AES128-GCM-SHA256"
      ])
      expect(lines(load(server("cipherList: ECDHE-ECDSA-AES256-GCM-SHA384:!aNULL:!eNULL:!RC4")))).toEqual([])
      expect(lines(load(server("cipherList: ALL:!aNULL")))).toEqual([
        "sleeve.yaml: tls.X.cipherList: warning: includes suites without AEAD or forward secrecy: ALL"
      ])
      // TLS 1.3 only: the TLS 1.2 list is never used.
      expect(lines(load(server("cipherList: ECDHE-ECDSA-AES128-SHA256\nprotocols: { min: TLSv1.3 }")))).toEqual([])
    })
  })

  it("every problem of a configuration is reported at once", () => {
    const loaded = load(
      configOf(`type: server
caFile: missing-ca.pem
certificateFile: server-only.crt
privateKeyFile: node1.key
privateKeyPassword: { env: UNSET_PW }
verifyPeer: require
requireDualUse: true
cipherSuites: TLS_NOPE`)
    )
    expect(loaded.material).toBeUndefined()
    expect(loaded.problems.map((p) => `${p.severity} ${p.path}`)).toEqual([
      "error tls.X.caFile",
      "error tls.X.certificateFile",
      "error tls.X.privateKeyPassword",
      "error tls.X.cipherSuites"
    ])
  })
})
