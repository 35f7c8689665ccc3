/**
 * Every way a peer is turned away, each asserted at the client (no application byte, the
 * connection closed) and in the counters (`sleeve_tls_handshakes_total` by result,
 * `sleeve_tls_handshake_failures_total` by reason, `sleeve_tls_dn_rejections_total`), and each
 * proving that a rejected peer never reaches the application (the target accepts nothing).
 */
import { afterAll, afterEach, assert, beforeAll, describe, it } from "@effect/vitest"
import { MetricName } from "@sleeve/metrics/Metrics"
import * as TestPki from "@sleeve/testing/TestPki"
import { eventually, within } from "@sleeve/testing/Wait"
import {
  type Cleanup,
  clientTls,
  connectTcp,
  connectTls,
  type DataPki,
  failureReasons,
  handshakeCounts,
  makeCleanup,
  makeDataPki,
  makeReader,
  type Probe,
  type ProxyUnderTest,
  probeTls,
  startProxy,
  startTarget,
  startTlsTarget,
  type Target,
  terminateTls,
  writeConfig
} from "./support/DataPathHarness.ts"

const DAY = 86_400_000

let pki: DataPki
/** A second PKI whose CA the proxy does not trust. */
let foreign: TestPki.TestPki
let ids: {
  /** Trusted CA, DN not authorized. */
  intruder: TestPki.Identity
  /** Untrusted CA, DN authorized (it copies the client's DN). */
  impostor: TestPki.Identity
  /** `CN=node1,O=Trusted`: two RDNs, authorized. */
  node1: TestPki.Identity
  /** One RDN whose CN value is `node1,O=Trusted`: prints like the authorized DN, is not it. */
  lookalike: TestPki.Identity
  /** Authorized DN, expired yesterday. */
  expired: TestPki.Identity
  /** Authorized DN, clientAuth only: fails the mirror dual-use rule. */
  clientOnly: TestPki.Identity
  /** A remote whose DN the originate listener does not authorize. */
  rogueTarget: TestPki.Identity
  /** A remote with an authorized DN but signed by the untrusted CA. */
  foreignTarget: TestPki.Identity
}

beforeAll(async () => {
  pki = await makeDataPki()
  foreign = await TestPki.make()
  const otherCa = await foreign.ca({ name: "other-ca", subject: [{ CN: "Sleeve Data Path CA" }, { O: "Sleeve Test" }] })
  const now = Date.now()
  const [intruder, impostor, node1, lookalike, expired, clientOnly, rogueTarget, foreignTarget] = await Promise.all([
    pki.pki.leaf(pki.ca, { name: "intruder", subject: [{ CN: "intruder" }, { O: "Sleeve Test" }] }),
    foreign.leaf(otherCa, { name: "impostor", subject: [{ CN: "client" }, { O: "Sleeve Test" }] }),
    pki.pki.leaf(pki.ca, { name: "node1", subject: [{ CN: "node1" }, { O: "Trusted" }] }),
    pki.pki.leaf(pki.ca, { name: "lookalike", subject: [{ CN: "node1,O=Trusted" }] }),
    pki.pki.leaf(pki.ca, {
      name: "expired",
      subject: [{ CN: "expired" }, { O: "Sleeve Test" }],
      notBefore: new Date(now - 3 * DAY),
      notAfter: new Date(now - DAY)
    }),
    pki.pki.leaf(pki.ca, {
      name: "client-only",
      subject: [{ CN: "client-only" }, { O: "Sleeve Test" }],
      extendedKeyUsage: ["clientAuth"]
    }),
    pki.pki.leaf(pki.ca, { name: "rogue-target", subject: [{ CN: "rogue" }, { O: "Sleeve Test" }] }),
    foreign.leaf(otherCa, { name: "foreign-target", subject: [{ CN: "target" }, { O: "Sleeve Test" }] })
  ])
  ids = { intruder, impostor, node1, lookalike, expired, clientOnly, rogueTarget, foreignTarget }
}, 30_000)
afterAll(async () => {
  await pki.pki.cleanup()
  await foreign.cleanup()
})

let cleanup: Cleanup
afterEach(async () => {
  await cleanup.run()
})

/** A terminate listener "front" with mutual TLS in front of an echo target. */
const terminate = async (
  authorizedPeers: ReadonlyArray<string>,
  extra: { readonly requireDualUse?: boolean } = {}
): Promise<{ proxy: ProxyUnderTest; app: Target; port: number }> => {
  cleanup = makeCleanup()
  const app = await startTarget(cleanup)
  const proxy = await startProxy(
    cleanup,
    writeConfig(pki.path("rejections.json"), {
      tls: {
        front: { ...terminateTls(pki, authorizedPeers), ...extra }
      },
      listeners: [
        { name: "front", mode: "terminate", listen: "127.0.0.1:0", target: `127.0.0.1:${app.port}`, tls: "front" }
      ]
    })
  )
  return { proxy, app, port: proxy.port("front") }
}

/** The client saw no application byte and the connection is over. */
const assertTurnedAway = (probe: Probe) => {
  assert.strictEqual(probe.received, "", "no application byte reached the client")
}

/** The counters after one rejected handshake on "front". */
const assertCounted = async (
  proxy: ProxyUnderTest,
  result: "failed" | "rejected" | "timeout",
  reason: string,
  dnRejections: number
) => {
  await eventually("connection closed", () => proxy.events().some((e) => e.event === "closed"))
  assert.deepEqual(await handshakeCounts(proxy, "front", "server"), {
    ok: 0,
    failed: result === "failed" ? 1 : 0,
    timeout: result === "timeout" ? 1 : 0,
    rejected: result === "rejected" ? 1 : 0
  })
  assert.deepEqual(await failureReasons(proxy, "front", "server"), { [reason]: 1 })
  assert.strictEqual(
    await proxy.value(MetricName.dnRejectionsTotal, { listener: "front", role: "server" }),
    dnRejections
  )
  assert.strictEqual(await proxy.value(MetricName.connectionsActive, { listener: "front" }), 0)
}

describe("terminate: the client is turned away", () => {
  it("when its DN is not in authorizedPeers", async () => {
    const { proxy, app, port } = await terminate([pki.client.subject])
    const probe = await probeTls({ port, ...clientTls(pki.ca, ids.intruder) })
    assertTurnedAway(probe)
    await assertCounted(proxy, "rejected", "dn_rejected", 1)
    assert.strictEqual(app.accepts(), 0, "the application never saw a connection")
    const event = proxy.events().find((e) => e.event === "peer_rejected")!
    assert.strictEqual(event.peerSubject, "CN=intruder,O=Sleeve Test")
    assert.strictEqual(event.nearestAuthorized, "CN=client,O=Sleeve Test")
  })

  it("when its certificate comes from an untrusted CA, even with an authorized DN and a look-alike CA name", async () => {
    const { proxy, app, port } = await terminate([pki.client.subject])
    const probe = await probeTls({ port, ...clientTls(pki.ca, ids.impostor) })
    assertTurnedAway(probe)
    await assertCounted(proxy, "failed", "unknown_ca", 0)
    assert.strictEqual(app.accepts(), 0)
  })

  it("when its single CN is `node1,O=Trusted` and CN=node1,O=Trusted is authorized (while the real node1 passes)", async () => {
    const { proxy, app, port } = await terminate(["CN=node1,O=Trusted"])
    // The real two-RDN DN is served: the rule is not simply "refuse everyone".
    const served = await connectTls(cleanup, { port, ...clientTls(pki.ca, ids.node1) })
    const echo = makeReader(served)
    served.write("ping\n")
    await echo.until("ping\n")
    assert.strictEqual(app.accepts(), 1)
    const lookalike = await probeTls({ port, ...clientTls(pki.ca, ids.lookalike) })
    assertTurnedAway(lookalike)
    assert.strictEqual(app.accepts(), 1, "the look-alike never reached the application")
    await eventually("look-alike rejected", () => proxy.events().some((e) => e.event === "peer_rejected"))
    assert.strictEqual(proxy.events().find((e) => e.event === "peer_rejected")!.peerSubject, "CN=node1\\,O=Trusted")
    assert.strictEqual(await proxy.value(MetricName.dnRejectionsTotal, { listener: "front", role: "server" }), 1)
    assert.deepEqual(await failureReasons(proxy, "front", "server"), { dn_rejected: 1 })
  })

  it("when its certificate has expired", async () => {
    const { proxy, app, port } = await terminate([ids.expired.subject])
    const probe = await probeTls({ port, ...clientTls(pki.ca, ids.expired) })
    assertTurnedAway(probe)
    await assertCounted(proxy, "failed", "expired", 0)
    assert.strictEqual(app.accepts(), 0)
  })

  it("when it presents no certificate", async () => {
    const { proxy, app, port } = await terminate([pki.client.subject])
    const probe = await probeTls({ port, ...clientTls(pki.ca) })
    assertTurnedAway(probe)
    // OpenSSL refuses the handshake with a certificate_required alert the client can read.
    assert.match(probe.error ?? "", /CERTIFICATE_REQUIRED/)
    await assertCounted(proxy, "failed", "no_certificate", 0)
    assert.strictEqual(app.accepts(), 0)
  })

  it("when requireDualUse is set and its certificate is clientAuth only", async () => {
    const { proxy, app, port } = await terminate([ids.clientOnly.subject], { requireDualUse: true })
    const probe = await probeTls({ port, ...clientTls(pki.ca, ids.clientOnly) })
    assertTurnedAway(probe)
    await assertCounted(proxy, "failed", "dual_use", 0)
    assert.strictEqual(app.accepts(), 0)
  })
})

describe("originate: the remote server is turned away", () => {
  const originate = async (remote: TestPki.Identity) => {
    cleanup = makeCleanup()
    const target = await startTlsTarget(cleanup, {
      cert: remote.certPem,
      key: remote.keyPem,
      ca: pki.ca.certPem,
      requestCert: true,
      rejectUnauthorized: false
    })
    const proxy = await startProxy(
      cleanup,
      writeConfig(pki.path("rejections-out.json"), {
        tls: {
          back: {
            type: "client",
            certificateFile: pki.proxy.certFile,
            privateKeyFile: pki.proxy.keyFile,
            caFile: pki.ca.certFile,
            authorizedPeers: [pki.target.subject]
          }
        },
        listeners: [
          {
            name: "back",
            mode: "originate",
            listen: "127.0.0.1:0",
            target: `127.0.0.1:${target.port}`,
            serverName: "localhost",
            tls: "back"
          }
        ]
      })
    )
    // The application speaks first, before the TLS leg is up: none of it may leak.
    const app = await connectTcp(cleanup, { host: "127.0.0.1", port: proxy.port("back") })
    const reader = makeReader(app)
    app.write("secret application bytes\n")
    // Closed by the proxy: FIN (the application half-opens, so it sees the end) or reset.
    const closed = new Promise<void>((r) => app.once("close", () => r()))
    await within("application connection closed", 3000, Promise.race([reader.ended, closed]))
    assert.strictEqual(reader.text(), "", "the application received nothing")
    await eventually("closed event", () => proxy.events().some((e) => e.event === "closed"))
    assert.strictEqual(target.received().length, 0, "the remote never received application bytes")
    return { proxy, target }
  }

  it("when its DN is not in authorizedPeers: the application's connection is closed, no byte reaches the remote", async () => {
    const { proxy, target } = await originate(ids.rogueTarget)
    assert.strictEqual(target.accepts(), 1)
    assert.deepEqual(await handshakeCounts(proxy, "back", "client"), { ok: 0, failed: 0, timeout: 0, rejected: 1 })
    assert.deepEqual(await failureReasons(proxy, "back", "client"), { dn_rejected: 1 })
    assert.strictEqual(await proxy.value(MetricName.dnRejectionsTotal, { listener: "back", role: "client" }), 1)
    const event = proxy.events().find((e) => e.event === "peer_rejected")!
    assert.strictEqual(event.peerSubject, "CN=rogue,O=Sleeve Test")
    assert.strictEqual(event.role, "client")
  })

  it("when its certificate comes from an untrusted CA, even with the authorized DN", async () => {
    const { proxy } = await originate(ids.foreignTarget)
    assert.deepEqual(await handshakeCounts(proxy, "back", "client"), { ok: 0, failed: 1, timeout: 0, rejected: 0 })
    assert.deepEqual(await failureReasons(proxy, "back", "client"), { unknown_ca: 1 })
    assert.strictEqual(await proxy.value(MetricName.dnRejectionsTotal, { listener: "back", role: "client" }), 0)
  })
})
