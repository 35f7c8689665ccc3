/**
 * Hostile client certificates, as real mutual-TLS handshakes through a terminate listener
 * (issue 12, "Hostile input / Certificates"). Complements Rejections.integration.test.ts (DN not
 * authorized, untrusted CA with an authorized DN, the `CN=node1\,O=Trusted` single-CN trap,
 * expired, no certificate, requireDualUse): here the DN tricks that target a string-matching
 * authorizer — an escaped comma, a multi-valued RDN, a duplicated attribute, an extra or missing
 * RDN, a Cyrillic look-alike — the case variant that RFC 4517 caseIgnoreMatch does authorize, a
 * certificate not yet valid, and Key Usage / Extended Key Usage that forbid client authentication.
 *
 * Each refused peer: no application byte, the application never sees a connection, the
 * handshake is counted with its result and reason, logged once, and the listener keeps serving
 * the authorized client.
 */
import { afterAll, afterEach, assert, beforeAll, describe, it } from "@effect/vitest"
import { MetricName } from "@sleeve/metrics/Metrics"
import type * as TestPki from "@sleeve/testing/TestPki"
import { eventually } from "@sleeve/testing/Wait"
import {
  type Cleanup,
  clientTls,
  connectTls,
  type DataPki,
  failureReasons,
  handshakeCounts,
  makeCleanup,
  makeDataPki,
  makeReader,
  type ProxyUnderTest,
  probeTls,
  startProxy,
  startTarget,
  type Target,
  terminateTls,
  writeConfig
} from "./support/DataPathHarness.ts"

const DAY = 86_400_000

/** The authorized DN every trick below imitates. */
const AUTHORIZED = "CN=node2.example.com,O=Example Corp"

let pki: DataPki
let ids: Record<
  | "node2"
  | "escapedComma"
  | "multiValued"
  | "duplicatedO"
  | "duplicatedCn"
  | "extraRdn"
  | "missingRdn"
  | "reordered"
  | "cyrillic"
  | "caseVariant"
  | "notYetValid"
  | "kuNoSignature"
  | "ekuServerOnly",
  TestPki.Identity
>

beforeAll(async () => {
  pki = await makeDataPki()
  const leaf = (name: string, options: TestPki.LeafOptions) => pki.pki.leaf(pki.ca, { name, ...options })
  const now = Date.now()
  const entries = await Promise.all([
    ["node2", leaf("node2", { subject: [{ CN: "node2.example.com" }, { O: "Example Corp" }] })],
    // One RDN: CN = "node2.example.com,O=Example Corp" (prints as CN=node2.example.com\,O=Example Corp).
    ["escapedComma", leaf("escaped-comma", { subject: [{ CN: "node2.example.com,O=Example Corp" }] })],
    // One multi-valued RDN {CN, O} (DER sorts it O=…+CN=…): same attributes, other structure.
    ["multiValued", leaf("multi-valued", { subject: [{ CN: "node2.example.com", O: "Example Corp" }] })],
    [
      "duplicatedO",
      leaf("duplicated-o", { subject: [{ CN: "node2.example.com" }, { O: "Example Corp" }, { O: "Example Corp" }] })
    ],
    [
      "duplicatedCn",
      leaf("duplicated-cn", {
        subject: [{ CN: "node2.example.com" }, { CN: "node2.example.com" }, { O: "Example Corp" }]
      })
    ],
    ["extraRdn", leaf("extra-rdn", { subject: [{ CN: "node2.example.com" }, { OU: "Ops" }, { O: "Example Corp" }] })],
    ["missingRdn", leaf("missing-rdn", { subject: [{ CN: "node2.example.com" }] })],
    ["reordered", leaf("reordered", { subject: [{ O: "Example Corp" }, { CN: "node2.example.com" }] })],
    // U+043E CYRILLIC SMALL LETTER O in "nоde2".
    ["cyrillic", leaf("cyrillic", { subject: [{ CN: "n\u043ede2.example.com" }, { O: "Example Corp" }] })],
    ["caseVariant", leaf("case-variant", { subject: [{ CN: "NODE2.Example.COM" }, { O: "example corp" }] })],
    [
      "notYetValid",
      leaf("not-yet-valid", {
        subject: [{ CN: "node2.example.com" }, { O: "Example Corp" }],
        notBefore: new Date(now + DAY),
        notAfter: new Date(now + 30 * DAY)
      })
    ],
    [
      "kuNoSignature",
      leaf("ku-no-signature", {
        subject: [{ CN: "node2.example.com" }, { O: "Example Corp" }],
        keyUsage: ["keyEncipherment"]
      })
    ],
    [
      "ekuServerOnly",
      leaf("eku-server-only", {
        subject: [{ CN: "node2.example.com" }, { O: "Example Corp" }],
        extendedKeyUsage: ["serverAuth"]
      })
    ]
  ] as const)
  ids = Object.fromEntries(await Promise.all(entries.map(async ([k, p]) => [k, await p] as const))) as typeof ids
}, 60_000)
afterAll(() => pki.pki.cleanup())

let cleanup: Cleanup
afterEach(async () => {
  await cleanup.run()
})

const terminate = async (): Promise<{ proxy: ProxyUnderTest; app: Target; port: number }> => {
  cleanup = makeCleanup()
  const app = await startTarget(cleanup)
  const proxy = await startProxy(
    cleanup,
    writeConfig(pki.path("hostile-certificates.json"), {
      tls: { front: terminateTls(pki, [AUTHORIZED]) },
      listeners: [
        { name: "front", mode: "terminate", listen: "127.0.0.1:0", target: `127.0.0.1:${app.port}`, tls: "front" }
      ]
    })
  )
  return { proxy, app, port: proxy.port("front") }
}

/** The authorized node2 completes a round trip: the listener still serves. */
const served = async (port: number, who: TestPki.Identity = ids.node2): Promise<void> => {
  const s = await connectTls(cleanup, { port, ...clientTls(pki.ca, who) })
  const r = makeReader(s)
  s.write("ping\n")
  await r.until("ping\n")
  s.destroy()
}

/** `who` is refused with `result`/`reason`, logged once, and node2 is served afterwards. */
const refused = async (
  who: TestPki.Identity,
  result: "failed" | "rejected",
  reason: string,
  expectedSubject?: string
): Promise<void> => {
  const { proxy, app, port } = await terminate()
  const probe = await probeTls({ port, ...clientTls(pki.ca, who) })
  assert.strictEqual(probe.received, "", "no application byte reached the client")
  assert.strictEqual(app.accepts(), 0, "the application never saw a connection")
  await eventually("closed", () => proxy.events().some((e) => e.event === "closed"))
  assert.deepEqual(await handshakeCounts(proxy, "front", "server"), {
    ok: 0,
    failed: result === "failed" ? 1 : 0,
    timeout: 0,
    rejected: result === "rejected" ? 1 : 0
  })
  assert.deepEqual(await failureReasons(proxy, "front", "server"), { [reason]: 1 })
  const logged = proxy
    .events()
    .filter((e) => e.event === (result === "rejected" ? "peer_rejected" : "handshake_failed"))
  assert.strictEqual(logged.length, 1, "logged once")
  if (expectedSubject !== undefined) assert.strictEqual(logged[0]!.peerSubject, expectedSubject)
  assert.strictEqual(
    await proxy.value(MetricName.dnRejectionsTotal, { listener: "front", role: "server" }),
    result === "rejected" ? 1 : 0
  )
  await served(port)
  assert.strictEqual(app.accepts(), 1)
  await proxy.counted(MetricName.handshakesTotal, { listener: "front", role: "server", result: "ok" }, 1)
}

describe("DN tricks against authorizedPeers [CN=node2.example.com,O=Example Corp]", () => {
  it("the genuine DN is served", async () => {
    const { proxy, port } = await terminate()
    await served(port)
    await proxy.counted(MetricName.handshakesTotal, { listener: "front", role: "server", result: "ok" }, 1)
  })

  it("an escaped comma in the CN (one RDN) is refused", () =>
    refused(ids.escapedComma, "rejected", "dn_rejected", "CN=node2.example.com\\,O=Example Corp"))

  it("a multi-valued RDN CN=…+O=… is refused", () =>
    refused(ids.multiValued, "rejected", "dn_rejected", "O=Example Corp+CN=node2.example.com"))

  it("a duplicated O attribute is refused", () =>
    refused(ids.duplicatedO, "rejected", "dn_rejected", "CN=node2.example.com,O=Example Corp,O=Example Corp"))

  it("a duplicated CN attribute is refused", () =>
    refused(ids.duplicatedCn, "rejected", "dn_rejected", "CN=node2.example.com,CN=node2.example.com,O=Example Corp"))

  it("an extra RDN in the middle is refused", () =>
    refused(ids.extraRdn, "rejected", "dn_rejected", "CN=node2.example.com,OU=Ops,O=Example Corp"))

  it("a missing RDN (a prefix of the authorized DN) is refused", () =>
    refused(ids.missingRdn, "rejected", "dn_rejected", "CN=node2.example.com"))

  it("the same RDNs in reverse order are refused", () =>
    refused(ids.reordered, "rejected", "dn_rejected", "O=Example Corp,CN=node2.example.com"))

  it("a Cyrillic look-alike letter (U+043E in nоde2) is refused", () =>
    refused(ids.cyrillic, "rejected", "dn_rejected"))

  it("a case variant is the same DN under RFC 4517 caseIgnoreMatch, and is served", async () => {
    const { proxy, app, port } = await terminate()
    await served(port, ids.caseVariant)
    assert.strictEqual(app.accepts(), 1)
    await proxy.counted(MetricName.handshakesTotal, { listener: "front", role: "server", result: "ok" }, 1)
    assert.strictEqual(await proxy.value(MetricName.dnRejectionsTotal, { listener: "front", role: "server" }), 0)
  })
})

describe("validity and key usage, with the authorized DN", () => {
  it("a certificate not yet valid is refused as not_yet_valid", () =>
    refused(ids.notYetValid, "failed", "not_yet_valid"))

  // OpenSSL's X509_V_ERR_INVALID_PURPOSE: the key usage forbids the role; counted as dual_use.
  it("Key Usage without digitalSignature (keyEncipherment only) is refused", () =>
    refused(ids.kuNoSignature, "failed", "dual_use"))

  it("Extended Key Usage serverAuth only (no clientAuth) is refused", () =>
    refused(ids.ekuServerOnly, "failed", "dual_use"))
})
