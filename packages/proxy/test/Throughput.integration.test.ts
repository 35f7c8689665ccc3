/**
 * Bulk integrity through a terminate listener (mutual TLS in, plaintext to the target): 256 MiB
 * each way through one connection, and 64 parallel connections of 4 MiB each way. Both ends
 * stream seeded pseudo-random bytes and hash what they receive; every SHA-256 that arrives must
 * be one that was sent, each exactly once, and the byte counters must add up to the same total.
 */
import { afterAll, afterEach, assert, beforeAll, describe, it } from "@effect/vitest"
import { MetricName } from "@sleeve/metrics/Metrics"
import { eventually } from "@sleeve/testing/Wait"
import type * as Net from "node:net"
import {
  type Cleanup,
  clientTls,
  connectTls,
  type DataPki,
  hashIncoming,
  makeCleanup,
  makeDataPki,
  type ProxyUnderTest,
  sendSeeded,
  startProxy,
  startTarget,
  type Target,
  terminateTls,
  writeConfig
} from "./support/DataPathHarness.ts"

const MiB = 1024 * 1024

let pki: DataPki
let cleanup: Cleanup

beforeAll(async () => {
  pki = await makeDataPki()
}, 30_000)
afterAll(() => pki.pki.cleanup())
afterEach(async () => {
  await cleanup.run()
})

/** What the target saw and sent on each connection. */
interface TargetSide {
  readonly upGot: Array<{ sha256: string; bytes: number }>
  readonly downSent: Array<string>
}

/**
 * A target that, on each connection, hashes everything the client sends and streams its own
 * seeded `size` bytes back (seed `down-<n>`, n counting connections), then ends its side.
 */
const streamingTarget = async (c: Cleanup, size: number): Promise<{ target: Target; side: TargetSide }> => {
  const side: TargetSide = { upGot: [], downSent: [] }
  let n = 0
  const target = await startTarget(c, (s: Net.Socket) => {
    const seed = `down-${n++}`
    hashIncoming(s).then(
      (h) => side.upGot.push(h),
      () => {}
    )
    sendSeeded(s, seed, size).then(
      (h) => side.downSent.push(h),
      () => {}
    )
  })
  return { target, side }
}

const bulkProxy = async (target: Target): Promise<ProxyUnderTest> =>
  startProxy(
    cleanup,
    writeConfig(pki.path("throughput.json"), {
      tls: {
        bulk: terminateTls(pki)
      },
      listeners: [
        { name: "bulk", mode: "terminate", listen: "127.0.0.1:0", target: `127.0.0.1:${target.port}`, tls: "bulk" }
      ]
    })
  )

/** Runs `connections` clients in parallel, each sending and receiving `size` bytes. */
const run = async (connections: number, size: number) => {
  cleanup = makeCleanup()
  const { target, side } = await streamingTarget(cleanup, size)
  const proxy = await bulkProxy(target)
  const port = proxy.port("bulk")
  const clients = await Promise.all(
    Array.from({ length: connections }, async (_, i) => {
      const socket = await connectTls(cleanup, { port, ...clientTls(pki.ca, pki.client) })
      const [upSent, downGot] = await Promise.all([sendSeeded(socket, `up-${i}`, size), hashIncoming(socket)])
      return { upSent, downGot }
    })
  )
  await eventually("target finished", () => side.upGot.length === connections && side.downSent.length === connections)
  await eventually(
    "every connection closed",
    () => proxy.events().filter((e) => e.event === "closed").length === connections,
    10_000
  )

  for (const c of clients) assert.strictEqual(c.downGot.bytes, size)
  for (const t of side.upGot) assert.strictEqual(t.bytes, size)
  // Every stream arrived intact, each exactly once (seeds are distinct, so hashes are too).
  assert.deepEqual(side.upGot.map((h) => h.sha256).sort(), clients.map((c) => c.upSent).sort())
  assert.deepEqual(clients.map((c) => c.downGot.sha256).sort(), [...side.downSent].sort())
  assert.strictEqual(new Set(side.downSent).size, connections)

  const total = connections * size
  assert.strictEqual(
    await proxy.value(MetricName.bytesTotal, { listener: "bulk", direction: "client_to_target" }),
    total
  )
  assert.strictEqual(
    await proxy.value(MetricName.bytesTotal, { listener: "bulk", direction: "target_to_client" }),
    total
  )
  assert.strictEqual(await proxy.value(MetricName.connectionsActive, { listener: "bulk" }), 0)
  assert.isTrue(
    proxy
      .events()
      .filter((e) => e.event === "closed")
      .every((e) => e.reason === "closed")
  )
}

describe("throughput", () => {
  it("moves 256 MiB each way through one connection intact", () => run(1, 256 * MiB), 45_000)

  it("moves 4 MiB each way through each of 64 parallel connections intact", () => run(64, 4 * MiB), 45_000)
})
