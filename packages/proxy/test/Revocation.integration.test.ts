/**
 * Revocation (issue 13 §2) with real peers: a CA revokes certificates in a CRL (TestPki.crl,
 * verified by `openssl crl` in TestPki's own tests) and
 *
 * - a terminate listener refuses a revoked `openssl s_client` certificate (and serves a good one);
 * - an originate listener refuses a revoked `openssl s_server` certificate (and serves a good one);
 * - a stale CRL fails closed by default (`crlStale: reject`): every covered peer is refused with
 *   reason `crl_unavailable`; with `crlStale: warn` good peers are served and revoked ones are
 *   still refused, by Sleeve;
 * - the whole chain is checked: a CA certificate revoked by its root refuses its leaves;
 * - the decision remembered for a peer (PeerPolicy.makeCache) never outlives the CRL it was taken
 *   under: a client served twice is refused once a reloaded CRL revokes it, by OpenSSL and, with a
 *   stale CRL and `crlStale: warn`, by Sleeve, and served again once a CRL no longer lists it.
 *
 * Each refusal is asserted at the peer (no application byte), in the counters
 * (`sleeve_tls_handshake_failures_total{reason}`) and in the log (once, with the revoked
 * certificate's serial and issuer); the application never sees a revoked peer.
 */
import { afterAll, assert, beforeAll, describe, it, vi } from "@effect/vitest"
import { MetricName } from "@sleeve/metrics/Metrics"
import { freePort } from "@sleeve/testing/Net"
import * as Process from "@sleeve/testing/Process"
import * as TestPki from "@sleeve/testing/TestPki"
import { eventually } from "@sleeve/testing/Wait"
import { Result } from "effect"
import { copyFileSync, writeFileSync } from "node:fs"
import * as Net from "node:net"
import { join } from "node:path"
import * as ProxyRuntime from "../src/ProxyRuntime.ts"
import * as ProxyUnderTest from "./support/ProxyUnderTest.ts"

const DAY = 86_400_000
vi.setConfig({ testTimeout: 60_000, hookTimeout: 60_000 })

let pki: TestPki.TestPki
let root: TestPki.Identity
let issuing: TestPki.Identity
const id: Record<string, TestPki.Identity> = {}
let crl: TestPki.CrlFile
let issuingCrl: TestPki.CrlFile
/** The application behind terminate listeners: an echo server that records every connection. */
let app: Net.Server
let appPort = 0
let appConnections = 0
const proxies: Array<ProxyUnderTest.ProxyUnderTest> = []
const daemons: Array<Process.Daemon> = []

beforeAll(async () => {
  pki = await TestPki.make()
  root = await pki.ca({ name: "root", subject: [{ CN: "Revocation Root" }, { O: "Sleeve Test" }] })
  issuing = await pki.intermediate(root, {
    name: "issuing",
    subject: [{ CN: "Revocation Issuing" }, { O: "Sleeve Test" }]
  })
  for (const name of ["proxy", "good-client", "revoked-client", "good-server", "revoked-server"]) {
    id[name] = await pki.leaf(root, { name, subject: [{ CN: name }, { O: "Sleeve Test" }] })
  }
  id["via-issuing"] = await pki.leaf(issuing, {
    name: "via-issuing",
    subject: [{ CN: "via-issuing" }, { O: "Sleeve Test" }]
  })
  crl = await pki.crl(root, { name: "root-crl", revoked: [id["revoked-client"]!, id["revoked-server"]!] })
  issuingCrl = await pki.crl(issuing, { name: "issuing-crl" })
  app = Net.createServer((s) => {
    appConnections++
    s.pipe(s)
  })
  await new Promise<void>((r) => app.listen(0, "127.0.0.1", r))
  appPort = (app.address() as Net.AddressInfo).port
}, 60_000)

afterAll(async () => {
  for (const d of daemons) await d.stop()
  for (const p of proxies) await p.running.drain(0)
  if (app !== undefined) await new Promise((r) => app.close(r))
  await pki.cleanup()
})

const yaml = (body: string): string => {
  const file = join(pki.dir, `sleeve-${proxies.length}-${Math.random().toString(36).slice(2)}.yaml`)
  writeFileSync(file, body)
  return file
}

const start = async (body: string): Promise<ProxyUnderTest.ProxyUnderTest> => {
  const p = await ProxyUnderTest.start(yaml(body))
  proxies.push(p)
  return p
}

/** A terminate listener "front" with mutual TLS and `crlFile`, in front of the echo app. */
const terminate = (crlFile: string, extra = "", caFile = root.certFile) =>
  start(`tls:
  front:
    type: server
    certificateFile: ${id.proxy!.certFile}
    privateKeyFile: ${id.proxy!.keyFile}
    caFile: ${caFile}
    verifyPeer: require
    crlFile: ${crlFile}
${extra}listeners:
  - { name: front, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${appPort}", tls: front }
`)

/**
 * `openssl s_client` presenting `client`'s chain sends one line; resolves with everything it
 * printed once the echo is back (then it is stopped) or once it exited (the proxy closed).
 */
const sClient = async (port: number, client: TestPki.Identity): Promise<string> => {
  const d = Process.startDaemon(
    "openssl",
    [
      "s_client",
      "-connect",
      `127.0.0.1:${port}`,
      "-servername",
      "localhost",
      "-CAfile",
      root.certFile,
      "-cert",
      client.chainFile,
      "-key",
      client.keyFile,
      "-verify_return_error",
      "-quiet"
    ],
    { stdin: "pipe", killAfterMs: 20_000 }
  )
  d.child.stdin?.write("ping through sleeve\n")
  await Promise.race([d.waitForOutput("ping through sleeve", { timeoutMs: 20_000 }).catch(() => undefined), d.exited])
  await d.stop()
  return d.stdout() + d.stderr()
}

/** The one `handshake_failed` / `peer_rejected` event of a listener. */
const rejection = (p: ProxyUnderTest.ProxyUnderTest, listener: string) => {
  const events = p
    .events()
    .filter((e) => e.listener === listener && (e.event === "handshake_failed" || e.event === "peer_rejected"))
  assert.strictEqual(events.length, 1, JSON.stringify(events))
  return events[0]!
}

describe("terminate: a revoked client certificate", () => {
  it("is refused with reason revoked, logged once with its serial and issuer; a good one is served", async () => {
    const p = await terminate(crl.file)
    const before = appConnections
    const good = await sClient(p.port("front"), id["good-client"]!)
    assert.include(good, "ping through sleeve")
    await p.counted(MetricName.handshakesTotal, { listener: "front", result: "ok" }, 1)

    const bad = await sClient(p.port("front"), id["revoked-client"]!)
    assert.notInclude(bad, "ping through sleeve")
    await p.counted(MetricName.handshakeFailuresTotal, { listener: "front", role: "server", reason: "revoked" }, 1)
    await p.counted(MetricName.handshakesTotal, { listener: "front", result: "failed" }, 1)
    const e = rejection(p, "front")
    assert.strictEqual(e.reason, "revoked")
    assert.strictEqual(e.revokedSerial, id["revoked-client"]!.x509.serialNumber.toUpperCase())
    assert.strictEqual(e.revokedIssuer, "CN=Revocation Root,O=Sleeve Test")
    assert.strictEqual(e.revokedSubject, "CN=revoked-client,O=Sleeve Test")
    // Only the good client reached the application.
    assert.strictEqual(appConnections - before, 1)
  })

  it("checks the whole chain: a CA certificate revoked by the root refuses the leaves it issued", async () => {
    const both = await pki.write("root-and-issuing.pem", issuing.certPem + root.certPem)
    const revokesIssuing = await pki.crl(root, { name: "root-revokes-issuing", revoked: [issuing] })
    const bundle = await pki.write("chain-revoked.crl.pem", issuingCrl.pem + revokesIssuing.pem)
    const p = await terminate(bundle, "", both)
    const before = appConnections
    const out = await sClient(p.port("front"), id["via-issuing"]!)
    assert.notInclude(out, "ping through sleeve")
    await p.counted(MetricName.handshakeFailuresTotal, { listener: "front", reason: "revoked" }, 1)
    const e = rejection(p, "front")
    assert.strictEqual(e.revokedSerial, issuing.x509.serialNumber.toUpperCase())
    assert.strictEqual(e.revokedSubject, "CN=Revocation Issuing,O=Sleeve Test")
    assert.strictEqual(appConnections, before)
    // With both CRLs clean, the same leaf is served.
    const clean = await pki.write("chain-clean.crl.pem", issuingCrl.pem + crl.pem)
    const ok = await terminate(clean, "", both)
    assert.include(await sClient(ok.port("front"), id["via-issuing"]!), "ping through sleeve")
  })
})

describe("originate: a revoked server certificate", () => {
  const sServer = async (server: TestPki.Identity, port?: number) => {
    port ??= await freePort()
    const d = Process.startDaemon("openssl", [
      "s_server",
      "-accept",
      `127.0.0.1:${port}`,
      "-cert",
      server.certFile,
      "-key",
      server.keyFile,
      "-naccept",
      "1",
      "-rev"
    ])
    daemons.push(d)
    await d.waitForOutput("ACCEPT")
    return { port, daemon: d }
  }
  const originate = (port: number, serverName = "localhost") =>
    start(`tls:
  back:
    type: client
    caFile: ${root.certFile}
    crlFile: ${crl.file}
listeners:
  - { name: back, mode: originate, listen: "127.0.0.1:0", target: "127.0.0.1:${port}", serverName: ${serverName}, tls: back }
`)
  /** A plaintext app talking through the originate listener: what came back before the close. */
  const talk = (port: number): Promise<string> =>
    new Promise((resolve, reject) => {
      let got = ""
      const s = Net.connect(port, "127.0.0.1", () => s.write("sleeve originates\n"))
      s.on("data", (d) => {
        got += d.toString()
        if (got.includes("\n")) s.end()
      })
      s.on("error", reject)
      s.on("close", () => resolve(got))
    })

  it("is refused with reason revoked and logged once with its serial and issuer; a good one is served", async () => {
    const good = await sServer(id["good-server"]!)
    const p1 = await originate(good.port)
    assert.include(await talk(p1.port("back")), "setanigiro eveels")
    await p1.counted(MetricName.handshakesTotal, { listener: "back", role: "client", result: "ok" }, 1)

    const bad = await sServer(id["revoked-server"]!)
    const p2 = await originate(bad.port)
    assert.strictEqual(await talk(p2.port("back")), "")
    await p2.counted(MetricName.handshakeFailuresTotal, { listener: "back", role: "client", reason: "revoked" }, 1)
    const e = rejection(p2, "back")
    assert.strictEqual(e.reason, "revoked")
    assert.strictEqual(e.code, "CERT_REVOKED")
    assert.strictEqual(e.revokedSerial, id["revoked-server"]!.x509.serialNumber.toUpperCase())
    assert.strictEqual(e.revokedIssuer, "CN=Revocation Root,O=Sleeve Test")
  })
  it("a reloaded CRL reaches the client role: a server served before is refused after the reload", async () => {
    // The client role's SecureContext (CA and CRLs) is built once per activated material.
    const file = join(pki.dir, "originate-current.crl.pem")
    copyFileSync((await pki.crl(root, { name: "originate-clean" })).file, file)
    const revokes = await pki.crl(root, { name: "originate-revokes-good", revoked: [id["good-server"]!] })
    const first = await sServer(id["good-server"]!)
    const p = await start(`tls:
  back:
    type: client
    caFile: ${root.certFile}
    crlFile: ${file}
listeners:
  - { name: back, mode: originate, listen: "127.0.0.1:0", target: "127.0.0.1:${first.port}", serverName: localhost, tls: back }
`)
    assert.include(await talk(p.port("back")), "setanigiro eveels")
    await first.daemon.exited
    await sServer(id["good-server"]!, first.port)
    assert.include(await talk(p.port("back")), "setanigiro eveels", "served twice under the same material")
    await p.counted(MetricName.handshakesTotal, { listener: "back", role: "client", result: "ok" }, 2)

    copyFileSync(revokes.file, file)
    await p.running.reload(Result.getOrThrow(ProxyRuntime.activate(p.file)))
    await sServer(id["good-server"]!, first.port)
    assert.strictEqual(await talk(p.port("back")), "")
    await p.counted(MetricName.handshakeFailuresTotal, { listener: "back", role: "client", reason: "revoked" }, 1)
  })

  it("still verifies the host name with a crlFile (the verdict is judged after the handshake)", async () => {
    const good = await sServer(id["good-server"]!)
    const p = await originate(good.port, "other.example.com")
    assert.strictEqual(await talk(p.port("back")), "")
    await p.counted(
      MetricName.handshakeFailuresTotal,
      { listener: "back", role: "client", reason: "bad_certificate" },
      1
    )
    assert.strictEqual(rejection(p, "back").code, "ERR_TLS_CERT_ALTNAME_INVALID")
  })
})

describe("a stale CRL (past its nextUpdate)", () => {
  const staleCrl = () =>
    pki.crl(root, {
      name: `stale-${Math.random().toString(36).slice(2)}`,
      revoked: [id["revoked-client"]!],
      thisUpdate: new Date(Date.now() - 2 * DAY),
      nextUpdate: new Date(Date.now() - DAY)
    })

  it("crlStale: reject (the default) fails closed: even a good peer is refused, reason crl_unavailable", async () => {
    const stale = await staleCrl()
    const p = await terminate(stale.file)
    const before = appConnections
    assert.notInclude(await sClient(p.port("front"), id["good-client"]!), "ping through sleeve")
    await p.counted(MetricName.handshakeFailuresTotal, { listener: "front", reason: "crl_unavailable" }, 1)
    const e = rejection(p, "front")
    assert.strictEqual(e.code, "CRL_HAS_EXPIRED")
    assert.strictEqual(appConnections, before)
  })

  it("crlStale: warn keeps serving good peers and still refuses the revoked ones, by Sleeve", async () => {
    const stale = await staleCrl()
    const p = await terminate(stale.file, "    crlStale: warn\n")
    assert.strictEqual(p.running.current().materials.get("front")?.revocation, "sleeve")
    assert.match(
      p.running
        .current()
        .warnings.map((w) => w.rule)
        .join("\n"),
      /is stale: its nextUpdate .* has passed; crlStale: warn keeps serving/
    )
    const before = appConnections
    assert.include(await sClient(p.port("front"), id["good-client"]!), "ping through sleeve")
    await p.counted(MetricName.handshakesTotal, { listener: "front", result: "ok" }, 1)
    assert.notInclude(await sClient(p.port("front"), id["revoked-client"]!), "ping through sleeve")
    await p.counted(MetricName.handshakeFailuresTotal, { listener: "front", reason: "revoked" }, 1)
    await eventually("the rejection is logged", () => p.events().some((e) => e.event === "peer_rejected"))
    const e = rejection(p, "front")
    assert.strictEqual(e.event, "peer_rejected")
    assert.strictEqual(e.revokedSerial, id["revoked-client"]!.x509.serialNumber.toUpperCase())
    assert.strictEqual(e.revokedIssuer, "CN=Revocation Root,O=Sleeve Test")
    assert.strictEqual(appConnections - before, 1)
  })
})

describe("the remembered peer decision and a CRL change", () => {
  it("a client served twice is refused once a reloaded CRL revokes it, and served again once none does", async () => {
    const file = join(pki.dir, "cache-current.crl.pem")
    const clean = await pki.crl(root, { name: "cache-clean" })
    const revokesGood = await pki.crl(root, { name: "cache-revokes-good", revoked: [id["good-client"]!] })
    const staleRevokesGood = await pki.crl(root, {
      name: "cache-stale-revokes-good",
      revoked: [id["good-client"]!],
      thisUpdate: new Date(Date.now() - 2 * DAY),
      nextUpdate: new Date(Date.now() - DAY)
    })
    copyFileSync(clean.file, file)
    const p = await terminate(file, "    crlStale: warn\n")
    const reload = async (crlFile: string, revocation: "openssl" | "sleeve") => {
      copyFileSync(crlFile, file)
      await p.running.reload(Result.getOrThrow(ProxyRuntime.activate(p.file)))
      assert.strictEqual(p.running.current().materials.get("front")?.revocation, revocation)
    }
    const before = appConnections
    // Twice under the same material: the second handshake is judged from the decision cache.
    assert.include(await sClient(p.port("front"), id["good-client"]!), "ping through sleeve")
    assert.include(await sClient(p.port("front"), id["good-client"]!), "ping through sleeve")
    await p.counted(MetricName.handshakesTotal, { listener: "front", result: "ok" }, 2)

    // The CA revokes it: OpenSSL refuses it under the new material.
    await reload(revokesGood.file, "openssl")
    assert.notInclude(await sClient(p.port("front"), id["good-client"]!), "ping through sleeve")
    await p.counted(MetricName.handshakeFailuresTotal, { listener: "front", reason: "revoked" }, 1)

    // Back to a clean CRL, served and remembered again; then a stale CRL that lists it, with
    // crlStale: warn: Sleeve applies the CRL itself and refuses it, the allowed decision
    // remembered before notwithstanding.
    await reload(clean.file, "openssl")
    assert.include(await sClient(p.port("front"), id["good-client"]!), "ping through sleeve")
    await reload(staleRevokesGood.file, "sleeve")
    assert.notInclude(await sClient(p.port("front"), id["good-client"]!), "ping through sleeve")
    await p.counted(MetricName.handshakeFailuresTotal, { listener: "front", reason: "revoked" }, 2)
    await eventually("Sleeve's own refusal is logged", () =>
      p.events().some((e) => e.event === "peer_rejected" && e.reason === "revoked")
    )
    const sleeveRefusal = p.events().find((e) => e.event === "peer_rejected" && e.reason === "revoked")!
    assert.strictEqual(sleeveRefusal.revokedSerial, id["good-client"]!.x509.serialNumber.toUpperCase())

    // And with a clean CRL once more it is served: no refusal was remembered either.
    await reload(clean.file, "openssl")
    assert.include(await sClient(p.port("front"), id["good-client"]!), "ping through sleeve")
    await p.counted(MetricName.handshakesTotal, { listener: "front", result: "ok" }, 4)
    assert.strictEqual(appConnections - before, 4)
  })
})
