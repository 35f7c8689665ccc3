/**
 * A connection's and a listener's life around the bytes: handshake and idle timeouts, the
 * connection limit, an unreachable target, a client that vanishes right after its handshake,
 * reload under load (no established connection drops; new ones get the new certificate; a broken
 * configuration changes nothing) and drain (finishers finish, stragglers are cut at the deadline,
 * newcomers are refused).
 */
import { afterAll, afterEach, assert, beforeAll, describe, it } from "@effect/vitest"
import { MetricName } from "@sleeve/metrics/Metrics"
import { freePort } from "@sleeve/testing/Net"
import type * as TestPki from "@sleeve/testing/TestPki"
import { eventually, sleep, within } from "@sleeve/testing/Wait"
import { Result } from "effect"
import { createHash } from "node:crypto"
import * as Fs from "node:fs"
import * as Net from "node:net"
import type * as Tls from "node:tls"
import * as ProxyRuntime from "../src/ProxyRuntime.ts"
import {
  type Cleanup,
  type ConfigEntry,
  clientTls,
  connectTcp,
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
  writeConfig
} from "./support/DataPathHarness.ts"

let pki: DataPki
let nextProxy: TestPki.Identity
let cleanup: Cleanup

beforeAll(async () => {
  pki = await makeDataPki()
  nextProxy = await pki.pki.leaf(pki.ca, { name: "proxy-v2", subject: [{ CN: "proxy-v2" }, { O: "Sleeve Test" }] })
}, 30_000)
afterAll(() => pki.pki.cleanup())
afterEach(async () => {
  await cleanup.run()
})

/** One terminate listener "front" (mutual TLS, the test client authorized) to `target`. */
const frontConfig = (
  target: string,
  listener: {
    readonly handshakeTimeout?: string
    readonly idleTimeout?: string
    readonly maxConnections?: number
  } = {},
  files: { readonly cert: string; readonly key: string } = { cert: pki.proxy.certFile, key: pki.proxy.keyFile }
): ConfigEntry => ({
  tls: {
    front: {
      type: "server",
      certificateFile: files.cert,
      privateKeyFile: files.key,
      caFile: pki.ca.certFile,
      verifyPeer: "require",
      authorizedPeers: [pki.client.subject]
    }
  },
  listeners: [{ name: "front", mode: "terminate", listen: "127.0.0.1:0", target, tls: "front", ...listener }]
})

const start = async (config: ConfigEntry, name = "lifecycle.json"): Promise<ProxyUnderTest> =>
  startProxy(cleanup, writeConfig(pki.path(name), config))

const client = (port: number): Promise<Tls.TLSSocket> => connectTls(cleanup, { port, ...clientTls(pki.ca, pki.client) })

/** Resolves with the time at which the proxy ended or reset the connection. */
const endedAt = (socket: Net.Socket): Promise<number> =>
  new Promise((r) => {
    socket.once("end", () => r(performance.now()))
    socket.once("close", () => r(performance.now()))
  })

const closedEvents = (proxy: ProxyUnderTest) => proxy.events().filter((e) => e.event === "closed")

describe("timeouts", () => {
  it("cuts a client that connects and never starts its handshake at handshakeTimeout", async () => {
    cleanup = makeCleanup()
    const app = await startTarget(cleanup)
    const proxy = await start(frontConfig(`127.0.0.1:${app.port}`, { handshakeTimeout: "300ms" }))
    const silent = await connectTcp(cleanup, { host: "127.0.0.1", port: proxy.port("front") })
    const t0 = performance.now()
    const elapsed = (await within("silent client cut", 3000, endedAt(silent))) - t0
    assert.isAtLeast(elapsed, 250)
    assert.isBelow(elapsed, 1500)
    await eventually("closed", () => closedEvents(proxy).length === 1)
    assert.deepEqual(await handshakeCounts(proxy, "front", "server"), { ok: 0, failed: 0, timeout: 1, rejected: 0 })
    assert.deepEqual(await failureReasons(proxy, "front", "server"), { timeout: 1 })
    assert.strictEqual(app.accepts(), 0)
  })

  it("cuts a client that sends half a ClientHello at handshakeTimeout", async () => {
    cleanup = makeCleanup()
    const app = await startTarget(cleanup)
    const proxy = await start(frontConfig(`127.0.0.1:${app.port}`, { handshakeTimeout: "300ms" }))
    const slow = await connectTcp(cleanup, { host: "127.0.0.1", port: proxy.port("front") })
    // A TLS record header announcing a 512-byte handshake message, then only its first bytes.
    slow.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x5a, 0x5a, 0x5a]))
    const t0 = performance.now()
    const elapsed = (await within("slow client cut", 3000, endedAt(slow))) - t0
    assert.isAtLeast(elapsed, 250)
    assert.isBelow(elapsed, 1500)
    await eventually("closed", () => closedEvents(proxy).length === 1)
    assert.deepEqual(await handshakeCounts(proxy, "front", "server"), { ok: 0, failed: 0, timeout: 1, rejected: 0 })
    assert.deepEqual(await failureReasons(proxy, "front", "server"), { timeout: 1 })
  })

  it("cuts an idle connection at idleTimeout, and not a busy one", async () => {
    cleanup = makeCleanup()
    const app = await startTarget(cleanup)
    const proxy = await start(frontConfig(`127.0.0.1:${app.port}`, { idleTimeout: "300ms" }))
    const port = proxy.port("front")
    const [idle, busy] = await Promise.all([client(port), client(port)])
    const idleReader = makeReader(idle)
    const busyReader = makeReader(busy)
    idle.write("once\n")
    await idleReader.until("once\n")
    const lastActivity = performance.now()
    const idleEnded = endedAt(idle)
    // The busy connection moves a byte every 100 ms for 1 s: far longer than the idle timeout.
    for (let i = 0; i < 10; i++) {
      busy.write(`${i}\n`)
      await sleep(100)
    }
    await busyReader.until("9\n")
    const elapsed = (await within("idle connection cut", 3000, idleEnded)) - lastActivity
    assert.isAtLeast(elapsed, 250)
    assert.isBelow(elapsed, 1000)
    assert.isFalse(busy.destroyed || busy.readableEnded, "the busy connection is still open")
    busy.write("still alive\n")
    await busyReader.until("still alive\n")
    await eventually("idle closed", () => closedEvents(proxy).length === 1)
    assert.strictEqual(closedEvents(proxy)[0]!.reason, "idle_timeout")
  })
})

describe("limits and failures", () => {
  it("refuses connections above maxConnections and counts them; a freed slot is reused", async () => {
    cleanup = makeCleanup()
    const app = await startTarget(cleanup)
    const proxy = await start(frontConfig(`127.0.0.1:${app.port}`, { maxConnections: 2 }))
    const port = proxy.port("front")
    const held = await Promise.all([client(port), client(port)])
    for (const s of held) {
      const r = makeReader(s)
      s.write("held\n")
      await r.until("held\n")
    }
    const excess = await probeTls({ port, ...clientTls(pki.ca, pki.client) })
    assert.isFalse(excess.secureConnect, "the excess connection never completed a handshake")
    assert.strictEqual(excess.received, "")
    assert.strictEqual(
      await proxy.value(MetricName.connectionsRefusedTotal, { listener: "front", reason: "max_connections" }),
      1
    )
    assert.strictEqual(await proxy.value(MetricName.connectionsTotal, { listener: "front" }), 2)
    assert.isTrue(proxy.events().some((e) => e.event === "connection_refused" && e.reason === "max_connections"))

    held[0]!.destroy()
    await eventually(
      "slot freed",
      async () => (await proxy.value(MetricName.connectionsActive, { listener: "front" })) === 1
    )
    const again = await client(port)
    const r = makeReader(again)
    again.write("slot reused\n")
    await r.until("slot reused\n")
  })

  it("closes the client cleanly when the target is unreachable, and counts and logs it", async () => {
    cleanup = makeCleanup()
    const closedPort = await freePort()
    const proxy = await start(frontConfig(`127.0.0.1:${closedPort}`))
    // The client sends 1 MiB at once: bytes the proxy has not read must not turn its close
    // into a reset.
    const probe = await probeTls({ port: proxy.port("front"), ...clientTls(pki.ca, pki.client) }, "x".repeat(1 << 20))
    assert.isTrue(probe.secureConnect)
    assert.strictEqual(probe.received, "")
    // close_notify and FIN, not a reset.
    assert.isTrue(probe.ended, "the client saw a clean end of stream")
    assert.isUndefined(probe.error)
    await eventually("closed", () => closedEvents(proxy).length === 1)
    assert.strictEqual(
      await proxy.value(MetricName.connectionsRefusedTotal, { listener: "front", reason: "target_unreachable" }),
      1
    )
    const failed = proxy.events().find((e) => e.event === "target_failed")!
    assert.strictEqual(failed.reason, "target_unreachable")
    assert.strictEqual(failed.target, `127.0.0.1:${closedPort}`)
    assert.strictEqual(await proxy.value(MetricName.connectionsActive, { listener: "front" }), 0)
  })

  it("originate: gives the application a clean end when the remote is unreachable", async () => {
    cleanup = makeCleanup()
    const closedPort = await freePort()
    const proxy = await start({
      tls: { back: { type: "client", caFile: pki.ca.certFile } },
      listeners: [
        {
          name: "back",
          mode: "originate",
          listen: "127.0.0.1:0",
          target: `127.0.0.1:${closedPort}`,
          serverName: "localhost",
          tls: "back"
        }
      ]
    })
    const app = await connectTcp(cleanup, { host: "127.0.0.1", port: proxy.port("back") })
    const errors: Array<string> = []
    app.on("error", (e: Error & { code?: string }) => errors.push(e.code ?? e.message))
    const reader = makeReader(app)
    app.write("x".repeat(1 << 20))
    await within("application sees the end", 3000, reader.ended)
    app.end()
    await within("closed", 3000, new Promise((r) => app.once("close", r)))
    assert.deepEqual(errors, [], "a FIN, not a reset")
    assert.strictEqual(reader.text(), "")
    assert.strictEqual(
      await proxy.value(MetricName.connectionsRefusedTotal, { listener: "back", reason: "target_unreachable" }),
      1
    )
    await eventually("closed event", () => closedEvents(proxy).length === 1)
    assert.strictEqual(closedEvents(proxy)[0]!.reason, "target_failed")
  })

  it("releases everything when a client resets right after its handshake", async () => {
    cleanup = makeCleanup()
    const app = await startTarget(cleanup)
    const proxy = await start(frontConfig(`127.0.0.1:${app.port}`))
    const port = proxy.port("front")
    for (let i = 0; i < 5; i++) {
      const raw = await connectTcp(cleanup, { host: "127.0.0.1", port })
      const tls = await connectTls(cleanup, { socket: raw, ...clientTls(pki.ca, pki.client) })
      // The session ticket proves the proxy finished its side of the handshake; reset right
      // then, while it is dialling the target or starting the relay.
      await new Promise((r) => tls.once("session", r))
      raw.resetAndDestroy()
    }
    await eventually("all five closed", () => closedEvents(proxy).length === 5)
    assert.strictEqual(await proxy.value(MetricName.connectionsActive, { listener: "front" }), 0)
    await eventually("target sockets released", () => app.sockets.size === 0)
  })
})

/** Streams paced seeded chunks both ways through `socket` (echo target) and checks the echo. */
const stream = async (socket: Tls.TLSSocket, seed: string, chunks: number, size: number, everyMs: number) => {
  const sent = createHash("sha256")
  const got = createHash("sha256")
  let bytes = 0
  socket.on("data", (c: Buffer) => {
    bytes += c.length
    got.update(c)
  })
  const ended = new Promise<void>((resolve, reject) => {
    socket.once("end", () => resolve())
    socket.once("close", () => reject(new Error(`${seed}: closed before its end`)))
  })
  for (let i = 0; i < chunks; i++) {
    const chunk = createHash("sha512").update(`${seed}/${i}`).digest()
    const block = Buffer.concat(Array.from({ length: Math.ceil(size / chunk.length) }, () => chunk)).subarray(0, size)
    sent.update(block)
    if (socket.destroyed) throw new Error(`${seed}: destroyed at chunk ${i}`)
    socket.write(block)
    await sleep(everyMs)
  }
  // The certificate this connection was served with, at its very end.
  const servedBy = socket.getPeerCertificate().subject.CN
  socket.end()
  await ended
  return { sent: sent.digest("hex"), got: got.digest("hex"), bytes, servedBy }
}

describe("reload", () => {
  it("keeps 50 streaming connections while new ones get the new certificate; a broken configuration changes nothing", async () => {
    cleanup = makeCleanup()
    const app = await startTarget(cleanup)
    const cert = pki.path("reload-proxy.crt")
    const key = pki.path("reload-proxy.key")
    Fs.copyFileSync(pki.proxy.certFile, cert)
    Fs.copyFileSync(pki.proxy.keyFile, key)
    const proxy = await start(frontConfig(`127.0.0.1:${app.port}`, {}, { cert, key }), "reload.json")
    const port = proxy.port("front")

    const live = await Promise.all(Array.from({ length: 50 }, () => client(port)))
    for (const s of live) assert.strictEqual(s.getPeerCertificate().subject.CN, "proxy")
    const streams = live.map((s, i) => stream(s, `conn-${i}`, 40, 4096, 25))

    await sleep(200)
    // Rotate: new certificate and key at the same paths, activate, reload.
    Fs.writeFileSync(cert, nextProxy.certPem)
    Fs.writeFileSync(key, nextProxy.keyPem)
    const next = ProxyRuntime.activate(proxy.file)
    assert.isTrue(Result.isSuccess(next))
    await proxy.running.reload(Result.getOrThrow(next))
    const fresh = await client(port)
    assert.strictEqual(fresh.getPeerCertificate().subject.CN, "proxy-v2")

    // A broken configuration: the certificate file is now garbage. Activation fails, nothing
    // is reloaded, and new connections still get the certificate in force.
    Fs.writeFileSync(cert, "not a certificate\n")
    const broken = ProxyRuntime.activate(proxy.file)
    assert.isTrue(Result.isFailure(broken))
    if (Result.isFailure(broken)) assert.match(broken.failure.message, /tls\.front\.certificateFile/)
    const afterBroken = await client(port)
    assert.strictEqual(afterBroken.getPeerCertificate().subject.CN, "proxy-v2")
    const r = makeReader(afterBroken)
    afterBroken.write("still served\n")
    await r.until("still served\n")

    const results = await within("50 streams", 15_000, Promise.all(streams))
    results.forEach((res, i) => {
      assert.strictEqual(res.bytes, 40 * 4096, `connection ${i}: every byte echoed`)
      assert.strictEqual(res.got, res.sent, `connection ${i}: the echo is what was sent`)
      // The established connections kept the certificate they started with.
      assert.strictEqual(res.servedBy, "proxy")
    })
    await eventually("50 closed", () => closedEvents(proxy).length === 50)
    assert.isTrue(closedEvents(proxy).every((e) => e.reason === "closed"))
  }, 30_000)
})

describe("drain", () => {
  it("lets connections finish within the deadline, cuts the rest at it, and refuses new ones", async () => {
    cleanup = makeCleanup()
    const app = await startTarget(cleanup)
    const proxy = await start(frontConfig(`127.0.0.1:${app.port}`))
    const port = proxy.port("front")
    const [finisher, straggler] = await Promise.all([client(port), client(port)])
    const finisherReader = makeReader(finisher)
    const stragglerEnded = endedAt(straggler)

    const t0 = performance.now()
    const drained = proxy.running.drain(600)
    // New connections are refused from now on.
    const refused = await new Promise<string>((resolve) => {
      const s = Net.connect(port, "127.0.0.1")
      s.once("connect", () => {
        s.destroy()
        resolve("connected")
      })
      s.once("error", (e: Error & { code?: string }) => resolve(e.code ?? e.message))
    })
    assert.strictEqual(refused, "ECONNREFUSED")

    // The finisher still gets a full exchange, then ends within the deadline.
    await sleep(100)
    finisher.write("one last request\n")
    await finisherReader.until("one last request\n")
    finisher.end()
    await within("finisher ended", 2000, finisherReader.ended)

    const cutAt = (await within("straggler cut", 3000, stragglerEnded)) - t0
    assert.isAtLeast(cutAt, 550)
    assert.isBelow(cutAt, 2000)
    assert.strictEqual(await drained, 1, "one connection was closed at the deadline")
    const closed = closedEvents(proxy)
    assert.deepEqual(closed.map((e) => e.reason).sort(), ["aborted", "closed"])
    assert.strictEqual(closed.find((e) => e.reason === "closed")!.bytesClientToTarget, "one last request\n".length)
  })
})
