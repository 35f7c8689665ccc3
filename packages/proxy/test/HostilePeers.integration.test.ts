/**
 * Hostile peers on a terminate listener (issue 12, "Hostile input"): a slowloris crowd cut at the
 * handshake timeout while legitimate clients are served, peers that reset mid-stream, a client
 * that half-closes and keeps reading, and peers that stop reading while the other side keeps
 * writing (backpressure: the proxy's memory stays bounded and the writer is held back).
 *
 * Each test checks that the bad connection is closed, counted with its reason, logged once
 * (`closed` events), that the listener keeps serving, and that the process's descriptors return
 * to where they were.
 */
import { afterAll, afterEach, assert, beforeAll, describe, it } from "@effect/vitest"
import { MetricName } from "@sleeve/metrics/Metrics"
import { eventually, sleep, within } from "@sleeve/testing/Wait"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Tls from "node:tls"
import {
  type Cleanup,
  type ConfigEntry,
  clientTls,
  connectTcp,
  connectTls,
  type DataPki,
  failureReasons,
  handshakeCounts,
  hashIncoming,
  makeCleanup,
  makeDataPki,
  makeReader,
  type ProxyUnderTest,
  sendSeeded,
  startProxy,
  startTarget,
  type Target,
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

const MiB = 1024 * 1024

/** Open descriptors of this process (the proxy runs in it). */
const openFds = (): number => Fs.readdirSync("/proc/self/fd").length

const frontConfig = (target: string, listener: Partial<ConfigEntry["listeners"][number]> = {}): ConfigEntry => ({
  tls: { front: terminateTls(pki) },
  listeners: [{ name: "front", mode: "terminate", listen: "127.0.0.1:0", target, tls: "front", ...listener }]
})

const start = (config: ConfigEntry, name: string): Promise<ProxyUnderTest> =>
  startProxy(cleanup, writeConfig(pki.path(name), config))

const closedEvents = (proxy: ProxyUnderTest) => proxy.events().filter((e) => e.event === "closed")

/** A full TLS round trip through the proxy with the authorized client: handshake, echo, close. */
const roundTrip = async (port: number, payload: string): Promise<void> => {
  const s = await within(
    `handshake of ${payload.trim()}`,
    15_000,
    connectTls(cleanup, { port, ...clientTls(pki.ca, pki.client) })
  )
  const reader = makeReader(s)
  s.write(payload)
  await reader.until(payload, 15_000)
  s.end()
  await within(`close of ${payload.trim()}`, 15_000, reader.ended)
  s.destroy()
}

/** Resolves when the socket is over (FIN, RST or close), whichever first. */
const over = (s: Net.Socket): Promise<void> =>
  new Promise((r) => {
    if (s.destroyed) return r()
    s.once("end", () => r())
    s.once("close", () => r())
    s.once("error", () => r())
  })

/** A target whose connections the proxy reached (echo, half-close honoured). */
const echoTarget = (): Promise<Target> => startTarget(cleanup)

describe("slowloris", () => {
  it("500 silent and byte-dribbling connections are all cut at handshakeTimeout as `timeout`, while real clients are served", async () => {
    cleanup = makeCleanup()
    const app = await echoTarget()
    const proxy = await start(
      frontConfig(`127.0.0.1:${app.port}`, { handshakeTimeout: "1s", maxConnections: 2000 }),
      "slowloris.json"
    )
    const port = proxy.port("front")
    const fdsBefore = openFds()

    // 250 that never send a byte, 250 that dribble a ClientHello one byte every 300 ms (activity
    // must not extend the handshake deadline).
    const hello = Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03])
    const attackers: Array<Net.Socket> = []
    for (let i = 0; i < 500; i++) {
      const s = Net.connect({ host: "127.0.0.1", port })
      s.on("error", () => {})
      cleanup.defer(() => s.destroy())
      attackers.push(s)
    }
    const dribblers = attackers.slice(250)
    let sent = 0
    const dribble = setInterval(() => {
      const b = hello.subarray(sent % hello.length, (sent % hello.length) + 1)
      sent++
      for (const s of dribblers) if (!s.destroyed && s.writable) s.write(b)
    }, 300)
    cleanup.defer(() => clearInterval(dribble))
    const allOver = Promise.all(attackers.map(over))

    // Meanwhile: real clients complete real round trips.
    let served = 0
    for (let i = 0; i < 10; i++) {
      await roundTrip(port, `legit ${i}\n`)
      served++
    }
    await within("every attacker cut", 30_000, allOver)
    clearInterval(dribble)
    assert.strictEqual(served, 10)

    await eventually("every connection logged", () => closedEvents(proxy).length === 510, 15_000)
    const counts = await handshakeCounts(proxy, "front", "server")
    assert.deepEqual(counts, { ok: 10, failed: 0, timeout: 500, rejected: 0 })
    assert.deepEqual(await failureReasons(proxy, "front", "server"), { timeout: 500 })
    // Logged once each: one `closed` event per connection id, and one handshake_failed per attacker.
    const ids = new Set(closedEvents(proxy).map((e) => e.conn))
    assert.strictEqual(ids.size, 510)
    assert.strictEqual(proxy.events().filter((e) => e.event === "handshake_failed").length, 500)
    assert.strictEqual(app.accepts(), 10, "no attacker reached the application")
    await proxy.counted(MetricName.connectionsActive, { listener: "front" }, 0)

    // Still serving afterwards, with no descriptor left behind.
    await roundTrip(port, "after\n")
    for (const s of attackers) s.destroy()
    await eventually(
      "descriptors back",
      () => openFds() <= fdsBefore,
      10_000,
      () => `${openFds()} > ${fdsBefore}`
    )
  }, 90_000)
})

describe("peers that vanish or half-close", () => {
  it("a client that resets mid-stream: the target side is closed, the connection counted once, others served", async () => {
    cleanup = makeCleanup()
    const app = await echoTarget()
    const proxy = await start(frontConfig(`127.0.0.1:${app.port}`), "rst-client.json")
    const port = proxy.port("front")
    const fdsBefore = openFds()
    const raw = await connectTcp(cleanup, { host: "127.0.0.1", port })
    const tls = Tls.connect({ socket: raw, ...clientTls(pki.ca, pki.client) })
    tls.on("error", () => {})
    await within(
      "handshake over the raw socket",
      15_000,
      new Promise<void>((r) => tls.once("secureConnect", () => r()))
    )
    const reader = makeReader(tls)
    tls.write("mid-stream\n")
    await reader.until("mid-stream\n")
    assert.strictEqual(app.sockets.size, 1)
    raw.resetAndDestroy()
    await eventually("target side closed", () => app.sockets.size === 0, 10_000)
    await eventually("closed logged", () => closedEvents(proxy).length === 1)
    await proxy.counted(MetricName.connectionsActive, { listener: "front" }, 0)
    assert.deepEqual(await handshakeCounts(proxy, "front", "server"), { ok: 1, failed: 0, timeout: 0, rejected: 0 })
    await roundTrip(port, "next\n")
    await eventually("both logged", () => closedEvents(proxy).length === 2)
    await eventually(
      "descriptors back",
      () => openFds() <= fdsBefore,
      10_000,
      () => `${openFds()} > ${fdsBefore}`
    )
  }, 60_000)

  it("a target that resets mid-stream: the client's connection is closed, others served", async () => {
    cleanup = makeCleanup()
    const app = await startTarget(cleanup, (s) => {
      s.once("data", () => s.resetAndDestroy())
    })
    const proxy = await start(frontConfig(`127.0.0.1:${app.port}`), "rst-target.json")
    const port = proxy.port("front")
    const client = await connectTls(cleanup, { port, ...clientTls(pki.ca, pki.client) })
    const done = over(client)
    client.write("boom\n")
    await within("client connection closed", 10_000, done)
    await eventually("closed logged", () => closedEvents(proxy).length === 1)
    await proxy.counted(MetricName.connectionsActive, { listener: "front" }, 0)
    // The next client is served (by a target that now echoes).
    const second = await connectTls(cleanup, { port, ...clientTls(pki.ca, pki.client) })
    assert.isFalse(second.destroyed)
    second.destroy()
  })

  it("a client that half-closes keeps receiving: 8 MiB answered after its FIN arrive whole", async () => {
    cleanup = makeCleanup()
    // The target reads the request to its end, then answers 8 MiB and ends.
    const app = await startTarget(cleanup, (s) => {
      s.resume()
      s.once("end", () => {
        void sendSeeded(s, "half-close", 8 * MiB)
      })
    })
    const proxy = await start(frontConfig(`127.0.0.1:${app.port}`), "half-close.json")
    const client = await connectTls(cleanup, { port: proxy.port("front"), ...clientTls(pki.ca, pki.client) })
    const incoming = hashIncoming(client)
    client.end("request\n")
    const got = await within("the whole answer", 30_000, incoming)
    assert.strictEqual(got.bytes, 8 * MiB)
    // The same seed and size give the same stream: compare with a local computation.
    const reference = await seededHash("half-close", 8 * MiB)
    assert.strictEqual(got.sha256, reference)
    assert.strictEqual(app.received().toString(), "request\n")
    await eventually("closed logged", () => closedEvents(proxy).length === 1)
  })
})

/** The SHA-256 `sendSeeded(seed, size)` produces, computed through a local socket pair. */
const seededHash = async (seed: string, size: number): Promise<string> => {
  const server = Net.createServer()
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()))
  const port = (server.address() as Net.AddressInfo).port
  const accepted = new Promise<Net.Socket>((r) => server.once("connection", r))
  const out = Net.connect({ host: "127.0.0.1", port })
  const inSock = await accepted
  const [sha] = await Promise.all([sendSeeded(out, seed, size), hashIncoming(inSock)])
  server.close()
  inSock.destroy()
  out.destroy()
  return sha
}

describe("peers that stop reading (backpressure)", () => {
  /**
   * Offers `offered` bytes from `writer` while `stalled` does not read; measures how far the writer
   * gets and how much this process (which hosts the proxy) grows, then lets `stalled` read and
   * checks that every byte arrives intact.
   */
  const stallAndRelease = async (
    writer: Net.Socket,
    stalled: Net.Socket,
    offered: number
  ): Promise<{ readonly acceptedWhileStalled: number; readonly growth: number }> => {
    stalled.pause()
    global.gc?.()
    const before = process.memoryUsage().rss
    let pumpDone = false
    const sent = sendSeeded(writer, "stall", offered).then((sha) => {
      pumpDone = true
      return sha
    })
    // Let the writer run into the wall.
    let last = -1
    for (let i = 0; i < 30; i++) {
      await sleep(200)
      const now = writer.bytesWritten
      if (now === last && i > 5) break
      last = now
    }
    const acceptedWhileStalled = writer.bytesWritten + writer.writableLength
    const growth = process.memoryUsage().rss - before
    assert.isFalse(pumpDone, "the writer is held back (it is waiting for drain)")
    const incoming = hashIncoming(stalled)
    stalled.resume()
    const [sha, got] = await within("the stream drains once read", 120_000, Promise.all([sent, incoming]))
    assert.strictEqual(got.bytes, offered)
    assert.strictEqual(got.sha256, sha)
    return { acceptedWhileStalled, growth }
  }

  it("the target stops reading while the client writes 200 MiB: the client is held back, memory bounded, nothing lost", async () => {
    cleanup = makeCleanup()
    let stalled: Net.Socket | undefined
    const app = await startTarget(cleanup, (s) => {
      stalled = s
      s.pause()
    })
    const proxy = await start(frontConfig(`127.0.0.1:${app.port}`, { idleTimeout: "5m" }), "stall-target.json")
    const client = await connectTls(cleanup, { port: proxy.port("front"), ...clientTls(pki.ca, pki.client) })
    await eventually("target connected", () => stalled !== undefined)
    const r = await stallAndRelease(client, stalled!, 200 * MiB)
    console.log(
      `backpressure target-stalled: accepted ${(r.acceptedWhileStalled / MiB).toFixed(1)} MiB of 200 MiB, rss growth ${(r.growth / MiB).toFixed(1)} MiB`
    )
    assert.isBelow(r.acceptedWhileStalled, 32 * MiB, "the proxy does not buffer the offered stream")
    assert.isBelow(r.growth, 48 * MiB)
  }, 180_000)

  it("the client stops reading while the target writes 200 MiB: the target is held back, memory bounded, nothing lost", async () => {
    cleanup = makeCleanup()
    let writer: Net.Socket | undefined
    const app = await startTarget(cleanup, (s) => {
      writer = s
    })
    const proxy = await start(frontConfig(`127.0.0.1:${app.port}`, { idleTimeout: "5m" }), "stall-client.json")
    const client = await connectTls(cleanup, { port: proxy.port("front"), ...clientTls(pki.ca, pki.client) })
    client.write("go\n")
    await eventually("target connected", () => writer !== undefined)
    const r = await stallAndRelease(writer!, client, 200 * MiB)
    console.log(
      `backpressure client-stalled: accepted ${(r.acceptedWhileStalled / MiB).toFixed(1)} MiB of 200 MiB, rss growth ${(r.growth / MiB).toFixed(1)} MiB`
    )
    assert.isBelow(r.acceptedWhileStalled, 32 * MiB, "the proxy does not buffer the offered stream")
    assert.isBelow(r.growth, 48 * MiB)
  }, 180_000)
})
