import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Result } from "effect"
// @sleeve/testing is not a dependency of core (it depends on core); import its source directly.
import * as TestPki from "../../testing/src/TestPki.ts"
import * as Certificate from "../src/Certificate.ts"
import type * as ConfigFile from "../src/ConfigFile.ts"
import * as Dn from "../src/DistinguishedName.ts"
import * as PeerPolicy from "../src/PeerPolicy.ts"

const dn = (s: string): Dn.DistinguishedName => Result.getOrThrow(Dn.parse(s))

/** A TLS configuration as ConfigFile would produce it, with only the fields PeerPolicy reads varied. */
const config = (
  overrides: Partial<Pick<ConfigFile.TlsConfig, "verifyPeer" | "verifyDepth" | "requireDualUse">> & {
    readonly authorizedPeers?: ReadonlyArray<string>
  } = {}
): ConfigFile.TlsConfig => ({
  name: "MirrorServer",
  description: "",
  enabled: true,
  type: "server",
  caFile: "/etc/sleeve/ca.pem",
  certificateFile: "/etc/sleeve/node1.pem",
  privateKeyFile: "/etc/sleeve/node1.key",
  privateKeyType: undefined,
  privateKeyPassword: undefined,
  minVersion: "TLSv1.2",
  maxVersion: "TLSv1.3",
  cipherList: "ECDHE-ECDSA-AES128-GCM-SHA256",
  cipherSuites: undefined,
  verifyPeer: overrides.verifyPeer ?? "require",
  verifyDepth: overrides.verifyDepth ?? 9,
  crlFile: undefined,
  crlStale: "reject",
  authorizedPeers: (overrides.authorizedPeers ?? []).map(dn),
  requireDualUse: overrides.requireDualUse ?? false
})

const verified = (chain: ReadonlyArray<Certificate.Certificate>): PeerPolicy.Observed => ({
  chain,
  verified: true,
  verifyError: undefined
})

describe("PeerPolicy.authorize", () => {
  let pki: TestPki.TestPki
  let root: Certificate.Certificate
  let issuing: Certificate.Certificate
  let sub: Certificate.Certificate
  /** CN=node2,OU=Mirror,O=Example Corp, dual-use, issued by `issuing` (root → issuing → node2). */
  let node2: Certificate.Certificate
  /** CN=node3 issued by `sub` (root → issuing → sub → node3). */
  let deep: Certificate.Certificate
  /** Key Usage without keyEncipherment, EKU without clientAuth. */
  let notDualUse: Certificate.Certificate
  /** A CN whose value is `node1,O=Trusted` (one RDN). */
  let trap: Certificate.Certificate
  /** CN=node1,O=Trusted (two RDNs). */
  let trusted: Certificate.Certificate

  const certOf = (identity: TestPki.Identity): Certificate.Certificate => {
    const r = Certificate.parsePem(identity.certPem, identity.certFile)
    if (Result.isFailure(r)) throw new Error(r.failure.message)
    return r.success[0]!
  }

  beforeAll(async () => {
    pki = await TestPki.make()
    const rootId = await pki.ca({ name: "root", subject: [{ CN: "Root" }, { O: "Example Corp" }] })
    const issuingId = await pki.intermediate(rootId, {
      name: "issuing",
      subject: [{ CN: "Issuing" }, { O: "Example Corp" }]
    })
    const subId = await pki.intermediate(issuingId, { name: "sub", subject: [{ CN: "Sub" }, { O: "Example Corp" }] })
    root = certOf(rootId)
    issuing = certOf(issuingId)
    sub = certOf(subId)
    node2 = certOf(
      await pki.leaf(issuingId, { name: "node2", subject: [{ CN: "node2" }, { OU: "Mirror" }, { O: "Example Corp" }] })
    )
    deep = certOf(await pki.leaf(subId, { name: "node3", subject: [{ CN: "node3" }, { O: "Example Corp" }] }))
    notDualUse = certOf(
      await pki.leaf(issuingId, {
        name: "server-only",
        subject: [{ CN: "server-only" }, { O: "Example Corp" }],
        keyUsage: ["digitalSignature"],
        extendedKeyUsage: ["serverAuth"]
      })
    )
    trap = certOf(await pki.leaf(issuingId, { name: "trap", subject: [{ CN: "node1,O=Trusted" }] }))
    trusted = certOf(await pki.leaf(issuingId, { name: "trusted", subject: [{ CN: "node1" }, { O: "Trusted" }] }))
  })
  afterAll(async () => {
    await pki.cleanup()
  })

  describe("1. a certificate was presented", () => {
    it("verifyPeer: require denies a peer without a certificate", () => {
      expect(PeerPolicy.authorize(config(), { chain: [], verified: false, verifyError: undefined })).toEqual({
        _tag: "Deny",
        reason: "no_certificate",
        detail: "the peer presented no certificate",
        peer: undefined
      })
    })

    it("verifyPeer: request lets a peer without a certificate pass, but still judges one that is sent", () => {
      const request = config({ verifyPeer: "request" })
      expect(PeerPolicy.authorize(request, { chain: [], verified: false, verifyError: undefined })).toEqual({
        _tag: "Allow",
        peer: undefined
      })
      expect(
        PeerPolicy.authorize(request, {
          chain: [node2],
          verified: false,
          verifyError: "UNABLE_TO_GET_ISSUER_CERT_LOCALLY"
        })
      ).toMatchObject({ _tag: "Deny", reason: "unverified" })
    })

    it("verifyPeer: none allows anything, and reports the peer it saw", () => {
      const none = config({ verifyPeer: "none", authorizedPeers: ["CN=someone-else"], requireDualUse: true })
      expect(PeerPolicy.authorize(none, { chain: [], verified: false, verifyError: undefined })).toEqual({
        _tag: "Allow",
        peer: undefined
      })
      expect(
        PeerPolicy.authorize(none, { chain: [notDualUse], verified: false, verifyError: "CERT_HAS_EXPIRED" })
      ).toEqual({ _tag: "Allow", peer: notDualUse })
    })
  })

  describe("2. the chain verified (OpenSSL's verdict)", () => {
    it("an unverified chain is denied with OpenSSL's code", () => {
      expect(
        PeerPolicy.authorize(config(), { chain: [node2, issuing], verified: false, verifyError: "CERT_REVOKED" })
      ).toEqual({
        _tag: "Deny",
        reason: "unverified",
        detail: "the peer certificate did not verify against caFile: CERT_REVOKED",
        peer: node2,
        verifyError: "CERT_REVOKED"
      })
      expect(PeerPolicy.authorize(config(), { chain: [node2], verified: false, verifyError: undefined })).toMatchObject(
        {
          reason: "unverified",
          detail: "the peer certificate did not verify against caFile: unknown error"
        }
      )
    })
  })

  describe("3. verifyDepth counts intermediate CAs, as OpenSSL does", () => {
    it("a chain with two intermediates, with or without the root at its end", () => {
      const withRoot = [deep, sub, issuing, root]
      const presented = [deep, sub, issuing]
      for (const chain of [withRoot, presented]) {
        expect(PeerPolicy.authorize(config({ verifyDepth: 2 }), verified(chain))._tag).toBe("Allow")
        expect(PeerPolicy.authorize(config({ verifyDepth: 1 }), verified(chain))).toEqual({
          _tag: "Deny",
          reason: "depth",
          detail: "the peer chain has 2 intermediate CA certificates, more than verifyDepth 1",
          peer: deep
        })
      }
    })

    it("verifyDepth 0 allows a leaf issued by the trust anchor itself, and nothing deeper", () => {
      expect(PeerPolicy.authorize(config({ verifyDepth: 0 }), verified([node2]))._tag).toBe("Allow")
      expect(PeerPolicy.authorize(config({ verifyDepth: 0 }), verified([node2, issuing]))).toMatchObject({
        reason: "depth",
        detail: "the peer chain has 1 intermediate CA certificate, more than verifyDepth 0"
      })
      // A self-issued leaf alone is not counted as a trust anchor below itself.
      expect(PeerPolicy.authorize(config({ verifyDepth: 0 }), verified([root]))._tag).toBe("Allow")
    })
  })

  describe("4. requireDualUse", () => {
    it("a leaf that cannot serve both roles is denied with the certificate rule's message", () => {
      const expected = Certificate.checkDualUse(notDualUse)
      if (Result.isSuccess(expected)) throw new Error("the test certificate must not be dual-use")
      expect(PeerPolicy.authorize(config({ requireDualUse: true }), verified([notDualUse, issuing, root]))).toEqual({
        _tag: "Deny",
        reason: "dual_use",
        detail: expected.failure.message,
        peer: notDualUse
      })
      expect(expected.failure.message).toContain(
        "cannot serve as both TLS client and server (required for mirroring): its Key Usage lacks keyEncipherment and its Extended Key Usage lacks clientAuth"
      )
      // Without requireDualUse the same leaf passes.
      expect(PeerPolicy.authorize(config(), verified([notDualUse, issuing, root]))._tag).toBe("Allow")
      expect(PeerPolicy.authorize(config({ requireDualUse: true }), verified([node2, issuing, root]))._tag).toBe(
        "Allow"
      )
    })
  })

  describe("5. authorizedPeers: structured DN equality", () => {
    const mirror = config({
      requireDualUse: true,
      authorizedPeers: ["CN=arbiter,OU=Mirror,O=Example Corp", "CN=node2,OU=Mirror,O=Example Corp"]
    })

    it("an authorized DN is allowed; another is denied with the nearest authorized DN", () => {
      expect(PeerPolicy.authorize(mirror, verified([node2, issuing, root]))).toEqual({ _tag: "Allow", peer: node2 })
      const other = config({ authorizedPeers: ["CN=node3,OU=Mirror,O=Example Corp", "CN=somebody,O=Elsewhere"] })
      const decision = PeerPolicy.authorize(other, verified([node2, issuing, root]))
      if (decision._tag !== "Deny") throw new Error("expected a denial")
      expect(decision.reason).toBe("dn_not_authorized")
      expect(decision.detail).toBe('peer DN "CN=node2,OU=Mirror,O=Example Corp" is not in authorizedPeers')
      expect(decision.peer).toBe(node2)
      expect(decision.nearest?.index).toBe(0)
      expect(decision.nearest?.distance).toBe(0.5)
      expect(decision.nearest?.differences).toEqual([
        { index: 0, expected: dn("CN=node3").rdns[0], actual: dn("CN=node2").rdns[0] }
      ])
    })

    it("the CN=node1\\,O=Trusted trap: an escaped comma is part of the CN, never a second RDN", () => {
      expect(trap.subjectString).toBe("CN=node1\\,O=Trusted")
      expect(trusted.subjectString).toBe("CN=node1,O=Trusted")
      const trustsTwoRdns = config({ authorizedPeers: ["CN=node1,O=Trusted"] })
      expect(PeerPolicy.authorize(trustsTwoRdns, verified([trap, issuing, root]))).toMatchObject({
        _tag: "Deny",
        reason: "dn_not_authorized",
        detail: 'peer DN "CN=node1\\,O=Trusted" is not in authorizedPeers'
      })
      expect(PeerPolicy.authorize(trustsTwoRdns, verified([trusted, issuing, root]))._tag).toBe("Allow")
      const trustsOneRdn = config({ authorizedPeers: ["CN=node1\\,O=Trusted"] })
      expect(PeerPolicy.authorize(trustsOneRdn, verified([trusted, issuing, root]))._tag).toBe("Deny")
      expect(PeerPolicy.authorize(trustsOneRdn, verified([trap, issuing, root]))._tag).toBe("Allow")
    })

    it("DNs compare case- and space-insensitively (RFC 4517 caseIgnoreMatch), RDN order still matters", () => {
      const relaxed = config({ authorizedPeers: ["cn=NODE2, ou=mirror, o=example   CORP"] })
      expect(PeerPolicy.authorize(relaxed, verified([node2, issuing, root]))._tag).toBe("Allow")
      const reordered = config({ authorizedPeers: ["O=Example Corp,OU=Mirror,CN=node2"] })
      expect(PeerPolicy.authorize(reordered, verified([node2, issuing, root]))._tag).toBe("Deny")
      const prefix = config({ authorizedPeers: ["CN=node2,OU=Mirror"] })
      expect(PeerPolicy.authorize(prefix, verified([node2, issuing, root]))._tag).toBe("Deny")
      const otherValue = config({ authorizedPeers: ["CN=node2,OU=Mirror,O=Example Corporation"] })
      expect(PeerPolicy.authorize(otherValue, verified([node2, issuing, root]))._tag).toBe("Deny")
    })

    it("an empty authorizedPeers list authorizes every verified peer", () => {
      expect(PeerPolicy.authorize(config(), verified([trap, issuing, root]))).toEqual({ _tag: "Allow", peer: trap })
    })
  })

  describe("the order of the checks: the first failure is the reason", () => {
    const strict = () =>
      config({ verifyDepth: 0, requireDualUse: true, authorizedPeers: ["CN=node2,OU=Mirror,O=Example Corp"] })

    it("unverified before depth, dual use and DN", () => {
      // This chain would fail all four checks.
      expect(
        PeerPolicy.authorize(strict(), {
          chain: [notDualUse, issuing, root],
          verified: false,
          verifyError: "CERT_HAS_EXPIRED"
        })
      ).toMatchObject({ reason: "unverified" })
    })

    it("depth before dual use and DN", () => {
      expect(PeerPolicy.authorize(strict(), verified([notDualUse, issuing, root]))).toMatchObject({ reason: "depth" })
    })

    it("dual use before DN", () => {
      expect(
        PeerPolicy.authorize(
          config({ requireDualUse: true, authorizedPeers: ["CN=x"] }),
          verified([notDualUse, issuing, root])
        )
      ).toMatchObject({ reason: "dual_use" })
    })

    it("the DN last", () => {
      expect(
        PeerPolicy.authorize(
          config({ requireDualUse: true, authorizedPeers: ["CN=x"] }),
          verified([node2, issuing, root])
        )
      ).toMatchObject({ reason: "dn_not_authorized" })
    })

    it("no certificate before anything else", () => {
      expect(
        PeerPolicy.authorize(strict(), { chain: [], verified: false, verifyError: "CERT_HAS_EXPIRED" })
      ).toMatchObject({ reason: "no_certificate" })
    })
  })

  describe("the decision cache (per verified chain, fail closed)", () => {
    /** A presentation of `chain` that counts how often the chain had to be parsed. */
    const presenting = (
      chain: ReadonlyArray<Certificate.Certificate>,
      observed: { readonly verified: boolean; readonly verifyError?: string } = { verified: true }
    ) => {
      const parses = { count: 0 }
      const presented: PeerPolicy.Presented = {
        verified: observed.verified,
        verifyError: observed.verifyError,
        fingerprints: chain.map((c) => c.fingerprint256),
        chain: () => {
          parses.count++
          return chain
        }
      }
      return { presented, parses }
    }
    const allowNode2 = () => config({ authorizedPeers: ["CN=node2,OU=Mirror,O=Example Corp"] })

    it("a verified chain is judged once; the same chain again is answered from the cache", () => {
      const cache = PeerPolicy.makeCache(allowNode2())
      const first = presenting([node2, issuing, root])
      expect(cache.authorize(first.presented)).toEqual({ _tag: "Allow", peer: node2 })
      const again = presenting([node2, issuing, root])
      expect(cache.authorize(again.presented)).toEqual({ _tag: "Allow", peer: node2 })
      expect([first.parses.count, again.parses.count]).toEqual([1, 0])
      expect(cache.size()).toBe(1)
    })

    it("never authorizes an unverified chain, even one whose fingerprints were allowed before", () => {
      const cache = PeerPolicy.makeCache(allowNode2())
      cache.authorize(presenting([node2, issuing, root]).presented)
      const forged = presenting([node2, issuing, root], { verified: false, verifyError: "CERT_REVOKED" })
      expect(cache.authorize(forged.presented)).toMatchObject({
        _tag: "Deny",
        reason: "unverified",
        verifyError: "CERT_REVOKED"
      })
      expect(forged.parses.count).toBe(1)
      // and the unverified verdict is not remembered either
      expect(cache.size()).toBe(1)
    })

    it("the chain identity is the whole chain: the same leaf under other certificates is judged afresh", () => {
      const cache = PeerPolicy.makeCache(config({ verifyDepth: 1 }))
      // verifyDepth 1: node2 under one intermediate passes; the same leaf under two does not
      expect(cache.authorize(presenting([node2, issuing, root]).presented)).toMatchObject({ _tag: "Allow" })
      const longer = presenting([node2, issuing, sub, root])
      expect(cache.authorize(longer.presented)).toMatchObject({ _tag: "Deny", reason: "depth" })
      expect(longer.parses.count).toBe(1)
    })

    it("a verified peer that is denied stays denied from the cache", () => {
      const cache = PeerPolicy.makeCache(allowNode2())
      expect(cache.authorize(presenting([deep, sub, issuing, root]).presented)).toMatchObject({
        reason: "dn_not_authorized"
      })
      const again = presenting([deep, sub, issuing, root])
      expect(cache.authorize(again.presented)).toMatchObject({ _tag: "Deny", reason: "dn_not_authorized" })
      expect(again.parses.count).toBe(0)
    })

    it("a reload's configuration starts from an empty cache: a peer removed from authorizedPeers is denied", () => {
      const before = PeerPolicy.makeCache(allowNode2())
      expect(before.authorize(presenting([node2, issuing, root]).presented)).toMatchObject({ _tag: "Allow" })
      const after = PeerPolicy.makeCache(config({ authorizedPeers: ["CN=node3,O=Example Corp"] }))
      expect(after.authorize(presenting([node2, issuing, root]).presented)).toMatchObject({
        _tag: "Deny",
        reason: "dn_not_authorized"
      })
    })

    it("no certificate is never cached and still denied under verifyPeer: require", () => {
      const cache = PeerPolicy.makeCache(config())
      expect(cache.authorize(presenting([]).presented)).toMatchObject({ reason: "no_certificate" })
      expect(cache.size()).toBe(0)
    })

    it("holds at most maxEntries chains, dropping the oldest", () => {
      const cache = PeerPolicy.makeCache(config(), { maxEntries: 2 })
      cache.authorize(presenting([node2, issuing, root]).presented)
      cache.authorize(presenting([deep, sub, issuing, root]).presented)
      cache.authorize(presenting([trusted, issuing, root]).presented)
      expect(cache.size()).toBe(2)
      const oldest = presenting([node2, issuing, root])
      cache.authorize(oldest.presented)
      expect(oldest.parses.count).toBe(1)
      const newest = presenting([trusted, issuing, root])
      cache.authorize(newest.presented)
      expect(newest.parses.count).toBe(0)
    })
  })
})
