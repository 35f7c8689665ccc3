/**
 * Property tests of the authorization decision (issue 12, "Hostile input / Certificates"): with
 * a verified chain, a peer is allowed iff its subject DN equals one of `authorizedPeers` under
 * RFC 4517 matching (DistinguishedName.equals); every normalization variant of an authorized DN
 * (case, insignificant spaces, AVA order inside an RDN) is allowed; and every structural or value
 * mutation an attacker could try — an extra, missing or swapped RDN, two RDNs merged into one
 * multi-valued RDN, two RDNs folded into one CN with an escaped comma, one changed character, a
 * Cyrillic look-alike — is denied as `dn_not_authorized`.
 *
 * The peer is a real certificate from TestPki whose parsed subject is replaced by the generated
 * DN: PeerPolicy reads the parsed subject, and certificates with those subjects are exercised as
 * real handshakes in packages/proxy/test/HostileCertificates.integration.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Result } from "effect"
import * as fc from "fast-check"
// @sleeve/testing is not a dependency of core (it depends on core); import its source directly.
import * as TestPki from "../../testing/src/TestPki.ts"
import * as Certificate from "../src/Certificate.ts"
import type * as ConfigFile from "../src/ConfigFile.ts"
import * as Dn from "../src/DistinguishedName.ts"
import * as PeerPolicy from "../src/PeerPolicy.ts"

const policy = (authorizedPeers: ReadonlyArray<Dn.DistinguishedName>): ConfigFile.TlsConfig => ({
  name: "front",
  description: "",
  enabled: true,
  type: "server",
  caFile: "/etc/sleeve/ca.pem",
  certificateFile: "/etc/sleeve/proxy.pem",
  privateKeyFile: "/etc/sleeve/proxy.key",
  privateKeyType: undefined,
  privateKeyPassword: undefined,
  minVersion: "TLSv1.2",
  maxVersion: "TLSv1.3",
  cipherList: "ECDHE-ECDSA-AES128-GCM-SHA256",
  cipherSuites: undefined,
  verifyPeer: "require",
  verifyDepth: 9,
  crlFile: undefined,
  crlStale: "reject",
  authorizedPeers,
  requireDualUse: false
})

let pki: TestPki.TestPki
let leaf: Certificate.Certificate
let root: Certificate.Certificate

beforeAll(async () => {
  pki = await TestPki.make()
  const ca = await pki.ca({ name: "root", subject: [{ CN: "Root" }, { O: "Example Corp" }] })
  const peer = await pki.leaf(ca, { name: "peer", subject: [{ CN: "peer" }, { O: "Example Corp" }] })
  const parse = (id: TestPki.Identity) => Result.getOrThrow(Certificate.parsePem(id.certPem, id.certFile))[0]!
  leaf = parse(peer)
  root = parse(ca)
}, 30_000)
afterAll(() => pki.cleanup())

/** The decision for a verified peer whose subject is `subject`. */
const decide = (authorized: ReadonlyArray<Dn.DistinguishedName>, subject: Dn.DistinguishedName) =>
  PeerPolicy.authorize(policy(authorized), {
    chain: [{ ...leaf, subject, subjectString: Dn.format(subject) }, root],
    verified: true,
    verifyError: undefined
  })

// Generators: attribute types a DN of a mirror peer uses, values with the characters that need
// escaping, non-ASCII and spaces.
const types = ["2.5.4.3", "2.5.4.10", "2.5.4.11", "2.5.4.6", "2.5.4.7", "0.9.2342.19200300.100.1.25"]
const valueArb = fc
  .array(
    fc.oneof(
      fc.string({ unit: "grapheme-ascii", minLength: 1, maxLength: 4 }),
      fc.constantFrom(",", "+", '"', "\\", "=", "#", " ", "é", "o", "O", "日")
    ),
    { minLength: 1, maxLength: 6 }
  )
  .map((p) => p.join(""))
  // A value that is only spaces prepares to the empty string: keep values meaningful.
  .filter((v) => v.trim().length > 0)
const avaArb: fc.Arbitrary<Dn.AttributeTypeAndValue> = fc.record({ type: fc.constantFrom(...types), value: valueArb })
const dnArb: fc.Arbitrary<Dn.DistinguishedName> = fc
  .array(fc.array(avaArb, { minLength: 1, maxLength: 2 }), { minLength: 1, maxLength: 4 })
  .map((rdns) => ({ rdns }))

/** An equivalent spelling: other case, extra inner/outer spaces, AVAs of an RDN rotated. */
const variantArb = (dn: Dn.DistinguishedName): fc.Arbitrary<Dn.DistinguishedName> =>
  fc
    .array(fc.tuple(fc.boolean(), fc.boolean(), fc.nat()), { minLength: dn.rdns.length, maxLength: dn.rdns.length })
    .map((choices) => ({
      rdns: dn.rdns.map((rdn, i) => {
        const [upper, pad, rot] = choices[i]!
        const avas = rdn.map((ava) => {
          const prepared = Dn.normalizeCaseIgnore(ava.value)
          if (prepared === undefined) return ava
          const cased = upper ? ava.value.toUpperCase() : ava.value.toLowerCase()
          const value = Dn.normalizeCaseIgnore(cased) === prepared ? cased : ava.value
          return { type: ava.type, value: pad ? `  ${value.replace(/ /g, "   ")} ` : value }
        })
        const k = rot % avas.length
        return [...avas.slice(k), ...avas.slice(0, k)]
      })
    }))

type Mutation = (
  dn: Dn.DistinguishedName,
  extra: Dn.AttributeTypeAndValue,
  at: number
) => Dn.DistinguishedName | undefined
const rdnsEqual = (a: Dn.Rdn, b: Dn.Rdn) => Dn.equals({ rdns: [a] }, { rdns: [b] })
/** Mutations that can never give an equal DN (undefined: not applicable to this DN). */
const mutations: Record<string, Mutation> = {
  "extra RDN at the end": (dn, extra) => ({ rdns: [...dn.rdns, [extra]] }),
  "extra RDN at the start": (dn, extra) => ({ rdns: [[extra], ...dn.rdns] }),
  "extra RDN inside": (dn, extra, at) => {
    const i = at % (dn.rdns.length + 1)
    return { rdns: [...dn.rdns.slice(0, i), [extra], ...dn.rdns.slice(i)] }
  },
  "one RDN removed": (dn, _e, at) => {
    const i = at % dn.rdns.length
    return { rdns: [...dn.rdns.slice(0, i), ...dn.rdns.slice(i + 1)] }
  },
  "two RDNs swapped": (dn, _e, at) => {
    if (dn.rdns.length < 2) return undefined
    const i = at % (dn.rdns.length - 1)
    if (rdnsEqual(dn.rdns[i]!, dn.rdns[i + 1]!)) return undefined
    const rdns = [...dn.rdns]
    ;[rdns[i], rdns[i + 1]] = [rdns[i + 1]!, rdns[i]!]
    return { rdns }
  },
  "two RDNs merged into one multi-valued RDN": (dn, _e, at) => {
    if (dn.rdns.length < 2) return undefined
    const i = at % (dn.rdns.length - 1)
    return { rdns: [...dn.rdns.slice(0, i), [...dn.rdns[i]!, ...dn.rdns[i + 1]!], ...dn.rdns.slice(i + 2)] }
  },
  "two RDNs folded into one value with an escaped comma": (dn, _e, at) => {
    if (dn.rdns.length < 2) return undefined
    const i = at % (dn.rdns.length - 1)
    const a = dn.rdns[i]!
    const folded = [{ type: a[0]!.type, value: `${a[0]!.value},${Dn.formatRdn(dn.rdns[i + 1]!)}` }]
    return { rdns: [...dn.rdns.slice(0, i), folded, ...dn.rdns.slice(i + 2)] }
  },
  "one value with a character appended": (dn, _e, at) => {
    const i = at % dn.rdns.length
    const rdn = dn.rdns[i]!
    const changed = [{ ...rdn[0]!, value: `${rdn[0]!.value}x` }, ...rdn.slice(1)]
    return { rdns: [...dn.rdns.slice(0, i), changed, ...dn.rdns.slice(i + 1)] }
  },
  "a Latin o replaced by a Cyrillic о (U+043E)": (dn) => {
    const i = dn.rdns.findIndex((rdn) => rdn.some((ava) => /o/i.test(ava.value)))
    if (i < 0) return undefined
    const rdn = dn.rdns[i]!
    const changed = rdn.map((ava) => ({ ...ava, value: ava.value.replace(/o/i, "\u043e") }))
    return { rdns: [...dn.rdns.slice(0, i), changed, ...dn.rdns.slice(i + 1)] }
  }
}

describe("PeerPolicy.authorize: properties of the DN decision", () => {
  it("a verified peer is allowed iff its DN equals one of authorizedPeers (RFC 4517), in any list order", () => {
    fc.assert(
      fc.property(fc.array(dnArb, { minLength: 1, maxLength: 4 }), dnArb, fc.boolean(), (list, peer, include) => {
        const authorized = include ? [...list, peer] : list
        const expected = authorized.some((a) => Dn.equals(a, peer))
        const d = decide(authorized, peer)
        expect(d._tag).toBe(expected ? "Allow" : "Deny")
        if (d._tag === "Deny") expect(d.reason).toBe("dn_not_authorized")
        expect(decide([...authorized].reverse(), peer)._tag).toBe(d._tag)
      }),
      { numRuns: 300 }
    )
  })

  it("every equivalent spelling of an authorized DN is allowed", () => {
    fc.assert(
      fc.property(
        dnArb.chain((dn) => fc.tuple(fc.constant(dn), variantArb(dn))),
        ([authorized, peer]) => {
          expect(decide([authorized], peer)._tag).toBe("Allow")
          // and the string an operator would write, parsed back, authorizes it too
          const written = Result.getOrThrow(Dn.parse(Dn.format(authorized)))
          expect(decide([written], peer)._tag).toBe("Allow")
        }
      ),
      { numRuns: 300 }
    )
  })

  for (const [name, mutate] of Object.entries(mutations)) {
    it(`a mutation of an authorized DN is never authorized: ${name}`, () => {
      fc.assert(
        fc.property(dnArb, avaArb, fc.nat(), (authorized, extra, at) => {
          const peer = mutate(authorized, extra, at)
          fc.pre(peer !== undefined && peer.rdns.length > 0)
          const d = decide([authorized], peer!)
          expect(d._tag).toBe("Deny")
          if (d._tag === "Deny") expect(d.reason).toBe("dn_not_authorized")
        }),
        { numRuns: 200 }
      )
    })
  }
})
