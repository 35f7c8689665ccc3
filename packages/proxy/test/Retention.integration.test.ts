/**
 * What an idle connection keeps alive (issue 10 §2: memory per idle connection): once the peer
 * is authorized, its parsed certificate (`Certificate`: DER, PEM, DNs, two `Date`s) is garbage.
 * Sleeve used to keep it for the whole life of the connection through two retainers (the
 * handshake's `close` listener, which held the settled promise, and the suspended async
 * function awaiting the relay), ≈5 KiB of JS heap per idle connection
 * (bench/figures/per-connection.md).
 *
 * Measured with real mutual-TLS connections held open through a terminate and an originate
 * listener, counting live `Date` objects with `v8.queryObjects` (which runs a full GC first):
 * every parsed certificate holds two (`notBefore`, `notAfter`), so a retained certificate per
 * connection shows as ≥ 2 × HELD more; the bound allows a quarter of one per connection for
 * whatever else the process allocates meanwhile.
 */
import { afterAll, afterEach, assert, beforeAll, describe, it } from "@effect/vitest"
import { eventually } from "@sleeve/testing/Wait"
import type * as Net from "node:net"
import * as V8 from "node:v8"
import {
  type Cleanup,
  clientTls,
  connectTcp,
  connectTls,
  type DataPki,
  makeCleanup,
  makeDataPki,
  makeReader,
  originateTls,
  startProxy,
  startTarget,
  startTlsTarget,
  terminateTls,
  writeConfig
} from "./support/DataPathHarness.ts"

const HELD = 40

let pki: DataPki
let cleanup: Cleanup

beforeAll(async () => {
  pki = await makeDataPki()
}, 30_000)
afterAll(() => pki.pki.cleanup())
afterEach(async () => {
  await cleanup.run()
})

const liveDates = (): number => V8.queryObjects(Date, { format: "count" }) as number

/** Opens `count` connections in turn, each with one echoed line; they stay open (idle). */
const holdIdle = async (count: number, open: () => Promise<Net.Socket>): Promise<void> => {
  for (let i = 0; i < count; i++) {
    const s = await open()
    const reader = makeReader(s)
    s.write(`ping ${i}\n`)
    await reader.until(`ping ${i}\n`)
  }
}

describe("an idle connection keeps no parsed peer certificate", () => {
  it("terminate (mutual TLS): the client's certificate is not retained once authorized", async () => {
    cleanup = makeCleanup()
    const app = await startTarget(cleanup)
    const proxy = await startProxy(
      cleanup,
      writeConfig(pki.path("retention-terminate.json"), {
        tls: { front: terminateTls(pki) },
        listeners: [
          { name: "front", mode: "terminate", listen: "127.0.0.1:0", target: `127.0.0.1:${app.port}`, tls: "front" }
        ]
      })
    )
    const port = proxy.port("front")
    // One connection first: whatever is built once (per configuration, per listener) is in the baseline.
    const open = () => connectTls(cleanup, { port, ...clientTls(pki.ca, pki.client) })
    await holdIdle(1, open)
    const before = liveDates()
    await holdIdle(HELD, open)
    await eventually("every connection reached the application", () => app.sockets.size === HELD + 1, 10_000)
    const grown = liveDates() - before
    assert.isBelow(
      grown,
      HELD / 4,
      `${grown} more live Date objects with ${HELD} idle connections: a parsed peer certificate (2 Dates) is kept per connection`
    )
  }, 60_000)

  it("originate: the target's certificate is not retained once authorized", async () => {
    cleanup = makeCleanup()
    const remote = await startTlsTarget(cleanup, {
      cert: pki.target.certPem,
      key: pki.target.keyPem,
      ca: pki.ca.certPem,
      requestCert: true,
      rejectUnauthorized: true
    })
    const proxy = await startProxy(
      cleanup,
      writeConfig(pki.path("retention-originate.json"), {
        tls: { back: originateTls(pki) },
        listeners: [
          {
            name: "back",
            mode: "originate",
            listen: "127.0.0.1:0",
            target: `127.0.0.1:${remote.port}`,
            serverName: "localhost",
            tls: "back"
          }
        ]
      })
    )
    const port = proxy.port("back")
    const open = () => connectTcp(cleanup, { host: "127.0.0.1", port })
    await holdIdle(1, open)
    const before = liveDates()
    await holdIdle(HELD, open)
    await eventually("every connection reached the remote", () => remote.secured() === HELD + 1, 10_000)
    const grown = liveDates() - before
    assert.isBelow(
      grown,
      HELD / 4,
      `${grown} more live Date objects with ${HELD} idle connections: a parsed peer certificate (2 Dates) is kept per connection`
    )
  }, 60_000)
})
