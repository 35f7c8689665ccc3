/**
 * The data path end to end, with real sockets and third-party TLS peers: `openssl s_client`
 * through a terminate listener, an originate listener to `openssl s_server`, the mirror pair
 * (originate → terminate sharing one dual-use certificate), half-close in both directions and
 * both roles, IPv6 and a UNIX-socket target, and the JSON event log of every connection
 * (with an encrypted key whose password must never appear in it).
 */
import { afterAll, afterEach, assert, beforeAll, describe, it } from "@effect/vitest"
import { MetricName } from "@sleeve/metrics/Metrics"
import { freePort } from "@sleeve/testing/Net"
import { eventually, sleep, within } from "@sleeve/testing/Wait"
import { Result } from "effect"
import type * as Net from "node:net"
import * as ProxyRuntime from "../src/ProxyRuntime.ts"
import {
  type Cleanup,
  clientTls,
  connectTcp,
  connectTls,
  type DataPki,
  handshakeCounts,
  makeCleanup,
  makeDataPki,
  makeReader,
  originateTls,
  type ProxyUnderTest,
  probeTls,
  spawnOpenssl,
  startProxy,
  startTarget,
  startTlsTarget,
  terminateTls,
  writeConfig
} from "./support/DataPathHarness.ts"

let pki: DataPki
let cleanup: Cleanup

beforeAll(async () => {
  pki = await makeDataPki()
}, 30_000)
afterAll(() => pki.pki.cleanup())
afterEach(async () => {
  await cleanup.run()
})
const fresh = () => {
  cleanup = makeCleanup()
  return cleanup
}

const closedEvents = (proxy: ProxyUnderTest, listener: string) =>
  proxy.events().filter((e) => e.event === "closed" && e.listener === listener)

describe("terminate", () => {
  it("relays a line from openssl s_client (mutual TLS) to the application and back", async () => {
    const c = fresh()
    const app = await startTarget(c)
    const proxy = await startProxy(
      c,
      writeConfig(pki.path("terminate.json"), {
        tls: { front: terminateTls(pki) },
        listeners: [
          { name: "front", mode: "terminate", listen: "127.0.0.1:0", target: `127.0.0.1:${app.port}`, tls: "front" }
        ]
      })
    )
    const client = spawnOpenssl(c, [
      "s_client",
      "-connect",
      `127.0.0.1:${proxy.port("front")}`,
      "-CAfile",
      pki.ca.certFile,
      "-cert",
      pki.client.certFile,
      "-key",
      pki.client.keyFile,
      "-servername",
      "localhost",
      "-verify_hostname",
      "localhost",
      "-verify_return_error"
    ])
    client.child.stdin!.write("hello through sleeve\n")
    await client.until("hello through sleeve")
    // openssl verified the proxy's certificate against the CA, for the name localhost.
    assert.include(client.stdout(), "Verify return code: 0 (ok)")
    assert.include(client.stdout(), "CN = proxy")
    // stdin EOF: s_client closes the connection.
    client.child.stdin!.end()
    assert.strictEqual(await client.exited, 0)
    assert.strictEqual(app.received().toString(), "hello through sleeve\n")

    await eventually("closed event", () => closedEvents(proxy, "front").length === 1)
    assert.deepEqual(await handshakeCounts(proxy, "front", "server"), { ok: 1, failed: 0, timeout: 0, rejected: 0 })
    assert.strictEqual(await proxy.value(MetricName.connectionsTotal, { listener: "front" }), 1)
    assert.strictEqual(await proxy.value(MetricName.connectionsActive, { listener: "front" }), 0)
    const line = "hello through sleeve\n".length
    assert.strictEqual(
      await proxy.value(MetricName.bytesTotal, { listener: "front", direction: "client_to_target" }),
      line
    )
    assert.strictEqual(
      await proxy.value(MetricName.bytesTotal, { listener: "front", direction: "target_to_client" }),
      line
    )
  })
})

describe("originate", () => {
  it("relays a plaintext application to openssl s_server, which requires and verifies our certificate", async () => {
    const c = fresh()
    const port = await freePort()
    const server = spawnOpenssl(c, [
      "s_server",
      "-accept",
      `127.0.0.1:${port}`,
      "-cert",
      pki.target.certFile,
      "-key",
      pki.target.keyFile,
      "-CAfile",
      pki.ca.certFile,
      "-Verify",
      "1",
      "-verify_return_error",
      "-naccept",
      "1",
      "-rev"
    ])
    await server.until("ACCEPT")
    const proxy = await startProxy(
      c,
      writeConfig(pki.path("originate.json"), {
        tls: { back: originateTls(pki) },
        listeners: [
          {
            name: "back",
            mode: "originate",
            listen: "127.0.0.1:0",
            target: `127.0.0.1:${port}`,
            serverName: "localhost",
            tls: "back"
          }
        ]
      })
    )
    const app = await connectTcp(c, { host: "127.0.0.1", port: proxy.port("back") })
    const reader = makeReader(app)
    app.write("sleeve originates\n")
    // s_server -rev answers each line reversed.
    await reader.until("setanigiro eveels")
    // s_server required, received and verified the certificate the proxy presented.
    await server.until("Verification: OK", 5000, "stderr")
    assert.match(server.stderr(), /Peer certificate: .*CN = proxy\b/)
    app.end()
    await reader.ended
    await eventually("closed event", () => closedEvents(proxy, "back").length === 1)
    assert.deepEqual(await handshakeCounts(proxy, "back", "client"), { ok: 1, failed: 0, timeout: 0, rejected: 0 })
    assert.strictEqual(
      await proxy.value(MetricName.bytesTotal, { listener: "back", direction: "client_to_target" }),
      "sleeve originates\n".length
    )
  })
})

describe("mirror pair", () => {
  it("one `type: mirror` entry serves a terminate and an originate listener (%MirrorServer + %MirrorClient)", async () => {
    const c = fresh()
    const node = await pki.pki.leaf(pki.ca, {
      name: "mirror-node",
      subject: [{ CN: "mirror-node" }, { O: "Sleeve Test" }]
    })
    // verifyPeer: require and requireDualUse: true are a mirror entry's defaults.
    const mirror = {
      type: "mirror" as const,
      certificateFile: node.certFile,
      privateKeyFile: node.keyFile,
      caFile: pki.ca.certFile,
      authorizedPeers: [node.subject]
    }
    const app = await startTarget(c)
    const inPort = await freePort()
    const proxy = await startProxy(
      c,
      writeConfig(pki.path("mirror.json"), {
        tls: { Mirror: mirror },
        listeners: [
          {
            name: "mirror-in",
            mode: "terminate",
            listen: `127.0.0.1:${inPort}`,
            target: `127.0.0.1:${app.port}`,
            tls: "Mirror"
          },
          {
            name: "mirror-out",
            mode: "originate",
            listen: "127.0.0.1:0",
            target: `127.0.0.1:${inPort}`,
            serverName: "localhost",
            tls: "Mirror"
          }
        ]
      })
    )
    const sock = await connectTcp(c, { host: "127.0.0.1", port: proxy.port("mirror-out") })
    const reader = makeReader(sock)
    sock.write("mirrored\n")
    await reader.until("mirrored\n")
    sock.end()
    await reader.ended
    assert.strictEqual(app.received().toString(), "mirrored\n")
    await eventually(
      "both legs closed",
      () => closedEvents(proxy, "mirror-in").length + closedEvents(proxy, "mirror-out").length === 2
    )
    assert.deepEqual(await handshakeCounts(proxy, "mirror-in", "server"), { ok: 1, failed: 0, timeout: 0, rejected: 0 })
    assert.deepEqual(await handshakeCounts(proxy, "mirror-out", "client"), {
      ok: 1,
      failed: 0,
      timeout: 0,
      rejected: 0
    })
    // Each side authorized the other as the same DN.
    const ok = proxy.events().filter((e) => e.event === "handshake_ok")
    assert.deepEqual(ok.map((e) => [e.listener, e.peerSubject]).sort(), [
      ["mirror-in", "CN=mirror-node,O=Sleeve Test"],
      ["mirror-out", "CN=mirror-node,O=Sleeve Test"]
    ])
  })
})

describe("half-close", () => {
  /** A target that answers only once the request has ended, after a pause. */
  const answerAfterEnd = (s: Net.Socket) => {
    let request = ""
    s.setEncoding("utf8")
    s.on("data", (d: string) => (request += d))
    s.once("end", () => setTimeout(() => s.end(`reply to ${request.trim()} after your FIN\n`), 100))
  }
  /** A target that says goodbye and ends its side at once, then keeps listening. */
  const endFirst = (s: Net.Socket) => s.end("bye\n")

  const terminate = async (c: Cleanup, handle: (s: Net.Socket) => void) => {
    const app = await startTarget(c, handle)
    const proxy = await startProxy(
      c,
      writeConfig(pki.path("half-terminate.json"), {
        tls: { front: terminateTls(pki) },
        listeners: [
          { name: "front", mode: "terminate", listen: "127.0.0.1:0", target: `127.0.0.1:${app.port}`, tls: "front" }
        ]
      })
    )
    const client = await connectTls(c, { port: proxy.port("front"), ...clientTls(pki.ca, pki.client) })
    return { app, proxy, client: client as Net.Socket }
  }

  const originate = async (c: Cleanup, handle: (s: Net.Socket) => void) => {
    const app = await startTlsTarget(
      c,
      {
        cert: pki.target.certPem,
        key: pki.target.keyPem,
        ca: pki.ca.certPem,
        requestCert: true,
        rejectUnauthorized: true
      },
      handle
    )
    const proxy = await startProxy(
      c,
      writeConfig(pki.path("half-originate.json"), {
        tls: { back: originateTls(pki) },
        listeners: [
          {
            name: "back",
            mode: "originate",
            listen: "127.0.0.1:0",
            target: `127.0.0.1:${app.port}`,
            serverName: "localhost",
            tls: "back"
          }
        ]
      })
    )
    const client = await connectTcp(c, { host: "127.0.0.1", port: proxy.port("back") })
    return { app, proxy, client }
  }

  for (const [mode, setup] of [
    ["terminate", terminate],
    ["originate", originate]
  ] as const) {
    it(`${mode}: the client ends its side and still receives the target's reply`, async () => {
      const c = fresh()
      const { client, proxy } = await setup(c, answerAfterEnd)
      const reader = makeReader(client)
      client.end("question")
      await reader.ended
      assert.strictEqual(reader.text(), "reply to question after your FIN\n")
      await eventually("closed", () => proxy.events().some((e) => e.event === "closed"))
      const closed = proxy.events().find((e) => e.event === "closed")!
      assert.strictEqual(closed.reason, "closed")
      assert.strictEqual(closed.bytesClientToTarget, "question".length)
      assert.strictEqual(closed.bytesTargetToClient, "reply to question after your FIN\n".length)
    })

    it(`${mode}: the target ends first and the client can still send`, async () => {
      const c = fresh()
      const { client, app, proxy } = await setup(c, endFirst)
      const reader = makeReader(client)
      await reader.ended
      assert.strictEqual(reader.text(), "bye\n")
      // Our side is still open: what we send now reaches the target.
      client.end("still here\n")
      await eventually("target got the late bytes", () => app.received().toString() === "still here\n")
      await eventually("closed", () => proxy.events().some((e) => e.event === "closed"))
      const closed = proxy.events().find((e) => e.event === "closed")!
      assert.strictEqual(closed.reason, "closed")
      assert.strictEqual(closed.bytesClientToTarget, "still here\n".length)
    })
  }
})

describe("addresses", () => {
  it("listens on [::1] and relays to an IPv6 target", async () => {
    const c = fresh()
    const app = await startTarget(c, undefined, { host: "::1" })
    const proxy = await startProxy(
      c,
      writeConfig(pki.path("ipv6.json"), {
        tls: { front: terminateTls(pki) },
        listeners: [{ name: "v6", mode: "terminate", listen: "[::1]:0", target: `[::1]:${app.port}`, tls: "front" }]
      })
    )
    assert.strictEqual(proxy.running.listener("v6")!.address().family, "IPv6")
    const client = await connectTls(c, { host: "::1", port: proxy.port("v6"), ...clientTls(pki.ca, pki.client) })
    const reader = makeReader(client)
    client.write("over v6\n")
    await reader.until("over v6\n")
    assert.strictEqual(app.sockets.values().next().value?.remoteAddress, "::1")
  })

  it("originates to an IPv6 target, verifying its IP address SAN", async () => {
    const c = fresh()
    const remote = await startTlsTarget(
      c,
      {
        cert: pki.target.certPem,
        key: pki.target.keyPem,
        ca: pki.ca.certPem,
        requestCert: true,
        rejectUnauthorized: true
      },
      undefined,
      { host: "::1" }
    )
    const proxy = await startProxy(
      c,
      writeConfig(pki.path("ipv6-out.json"), {
        tls: { back: originateTls(pki) },
        // No serverName: the target's literal IP is what the certificate must match.
        listeners: [
          { name: "v6-out", mode: "originate", listen: "[::1]:0", target: `[::1]:${remote.port}`, tls: "back" }
        ]
      })
    )
    const app = await connectTcp(c, { host: "::1", port: proxy.port("v6-out") })
    const reader = makeReader(app)
    app.write("to v6\n")
    await reader.until("to v6\n")
    assert.deepEqual(await handshakeCounts(proxy, "v6-out", "client"), { ok: 1, failed: 0, timeout: 0, rejected: 0 })
  })

  it("relays to a UNIX-socket target", async () => {
    const c = fresh()
    const path = pki.path("app.sock")
    const app = await startTarget(c, undefined, { path })
    const proxy = await startProxy(
      c,
      writeConfig(pki.path("unix.json"), {
        tls: { front: terminateTls(pki) },
        listeners: [{ name: "unix", mode: "terminate", listen: "127.0.0.1:0", target: `unix:${path}`, tls: "front" }]
      })
    )
    const client = await connectTls(c, { port: proxy.port("unix"), ...clientTls(pki.ca, pki.client) })
    const reader = makeReader(client)
    client.write("over a unix socket\n")
    await reader.until("over a unix socket\n")
    assert.strictEqual(app.accepts(), 1)
    assert.strictEqual(app.received().toString(), "over a unix socket\n")
  })
})

describe("event log", () => {
  it("writes one JSON event per connection event, with a connection id, and never the key password", async () => {
    const c = fresh()
    const password = "Tr0ub4dor&3-sleeve-key-password"
    const locked = await pki.pki.leaf(pki.ca, {
      name: "locked-proxy",
      subject: [{ CN: "proxy" }, { O: "Sleeve Test" }],
      keyPassword: password
    })
    const intruder = await pki.pki.leaf(pki.ca, {
      name: "log-intruder",
      subject: [{ CN: "intruder" }, { O: "Sleeve Test" }]
    })
    const app = await startTarget(c)
    const proxy = await startProxy(
      c,
      writeConfig(pki.path("log.json"), {
        tls: {
          front: {
            ...terminateTls(pki),
            certificateFile: locked.certFile,
            privateKeyFile: locked.keyFile,
            privateKeyPassword: { env: "SLEEVE_DATAPATH_KEY_PASSWORD" }
          }
        },
        listeners: [
          { name: "front", mode: "terminate", listen: "127.0.0.1:0", target: `127.0.0.1:${app.port}`, tls: "front" }
        ]
      }),
      { env: { SLEEVE_DATAPATH_KEY_PASSWORD: password } }
    )
    const port = proxy.port("front")
    // Two served connections, one DN rejected, one without a certificate.
    for (let i = 0; i < 2; i++) {
      const served = await connectTls(c, { port, ...clientTls(pki.ca, pki.client) })
      const reader = makeReader(served)
      served.end("logged\n")
      await reader.ended
    }
    await probeTls({ port, ...clientTls(pki.ca, intruder) })
    await probeTls({ port, ...clientTls(pki.ca) })
    await eventually("four connections closed", () => closedEvents(proxy, "front").length === 4)

    // Every line is one JSON object with a time, a level and an event name.
    for (const line of proxy.lines) {
      assert.isTrue(line.endsWith("\n") && !line.slice(0, -1).includes("\n"), `one line per event: ${line}`)
      const parsed = JSON.parse(line) as Record<string, unknown>
      assert.isString(parsed.time)
      assert.isString(parsed.event)
    }
    assert.notInclude(proxy.lines.join(""), password)

    const events = proxy.events()
    const byConn = new Map<string, Array<string>>()
    for (const e of events) {
      if (e.conn === undefined) continue
      assert.isString(e.conn)
      assert.strictEqual(e.listener, "front")
      byConn.set(e.conn as string, [...(byConn.get(e.conn as string) ?? []), e.event])
    }
    const sequences = [...byConn.values()]
    assert.strictEqual(sequences.length, 4, "four connection ids")
    assert.deepEqual(sequences.filter((s) => s.join() === "accepted,handshake_ok,closed").length, 2)
    assert.deepEqual(sequences.filter((s) => s.join() === "accepted,peer_rejected,closed").length, 1)
    assert.deepEqual(sequences.filter((s) => s.join() === "accepted,handshake_failed,closed").length, 1)

    const rejected = events.find((e) => e.event === "peer_rejected")!
    assert.strictEqual(rejected.peerSubject, "CN=intruder,O=Sleeve Test")
    assert.strictEqual(rejected.peerIssuer, "CN=Sleeve Data Path CA,O=Sleeve Test")
    assert.strictEqual(rejected.reason, "dn_rejected")
    const failed = events.find((e) => e.event === "handshake_failed")!
    assert.strictEqual(failed.reason, "no_certificate")
    const servedClose = events.filter((e) => e.event === "closed" && e.bytesClientToTarget === "logged\n".length)
    assert.strictEqual(servedClose.length, 2)
    for (const e of servedClose) {
      assert.strictEqual(e.bytesTargetToClient, "logged\n".length)
      assert.isNumber(e.durationMs)
    }
  })
})

describe("session resumption", () => {
  it("re-authorizes a resuming client, and a reload that removes its DN locks it out", async () => {
    const c = fresh()
    const app = await startTarget(c)
    const file = pki.path("resume.json")
    const config = (authorizedPeers: ReadonlyArray<string>) =>
      writeConfig(file, {
        tls: { front: terminateTls(pki, authorizedPeers) },
        listeners: [
          { name: "front", mode: "terminate", listen: "127.0.0.1:0", target: `127.0.0.1:${app.port}`, tls: "front" }
        ]
      })
    const proxy = await startProxy(c, config([pki.client.subject]))
    const port = proxy.port("front")
    const first = await connectTls(c, { port, ...clientTls(pki.ca, pki.client) })
    const session = await within("session ticket", 2000, new Promise<Buffer>((r) => first.once("session", r)))
    // Node loses a write made from inside the 'session' callback; leave it first.
    await sleep(10)
    first.end()

    const second = await connectTls(c, { port, session, ...clientTls(pki.ca, pki.client) })
    assert.isTrue(second.isSessionReused(), "the session was resumed")
    const reader = makeReader(second)
    second.write("resumed\n")
    await reader.until("resumed\n")
    const ok = proxy.events().filter((e) => e.event === "handshake_ok")
    assert.strictEqual(ok.length, 2)
    assert.strictEqual(ok[1]!.peerSubject, pki.client.subject, "the resumed peer was identified and authorized")

    // The client is no longer authorized: its old session must not let it in.
    const next = ProxyRuntime.activate(config([pki.target.subject]))
    await proxy.running.reload(Result.getOrThrow(next))
    const probe = await probeTls({ port, session, ...clientTls(pki.ca, pki.client) })
    assert.strictEqual(probe.received, "")
    await eventually("rejected", () => proxy.events().some((e) => e.event === "peer_rejected"))
    assert.strictEqual(await proxy.value(MetricName.dnRejectionsTotal, { listener: "front", role: "server" }), 1)
    assert.strictEqual(app.received().toString(), "resumed\n")
  })
})
