/**
 * `negotiationTimeout` bounds the whole plaintext phase of a STARTTLS listener: a client that
 * never asks for TLS (or trickles bytes) is cut when it expires, whatever the idle timeout.
 */
import { Metrics } from "@sleeve/metrics"
import * as TestPki from "@sleeve/testing/TestPki"
import { Result } from "effect"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as EventLog from "../src/EventLog.ts"
import * as ProxyRuntime from "../src/ProxyRuntime.ts"

describe("STARTTLS negotiationTimeout", () => {
  let pki: TestPki.TestPki
  let app: Net.Server
  let running: ProxyRuntime.Running
  const mem = EventLog.makeMemory()

  beforeAll(async () => {
    pki = await TestPki.make()
    const ca = await pki.ca()
    const server = await pki.leaf(ca, { name: "mail" })
    // A plaintext SMTP "legacy app" that only greets.
    app = Net.createServer((s) => {
      s.on("error", () => {})
      s.write("220 legacy ESMTP\r\n")
    })
    await new Promise<void>((r) => app.listen(0, "127.0.0.1", () => r()))
    const config = Path.join(pki.dir, "sleeve.yaml")
    Fs.writeFileSync(
      config,
      `tls:
  Mail:
    type: server
    certificateFile: ${server.certFile}
    privateKeyFile: ${server.keyFile}
listeners:
  - name: mail-in
    mode: starttls
    protocol: smtp
    listen: "127.0.0.1:0"
    target: "127.0.0.1:${(app.address() as Net.AddressInfo).port}"
    tls: Mail
    idleTimeout: 1h
    negotiationTimeout: 400ms
`
    )
    const activated = ProxyRuntime.activate(config)
    if (Result.isFailure(activated)) throw new Error(activated.failure.message)
    running = await ProxyRuntime.start(activated.success, { metrics: Metrics.make(), log: mem.sink })
  })
  afterAll(async () => {
    await running?.drain(0)
    app?.close()
    await pki?.cleanup()
  })

  it("cuts a client that trickles bytes without asking for TLS", async () => {
    const port = running.listener("mail-in")!.address().port
    const started = performance.now()
    const client = Net.connect(port, "127.0.0.1")
    // Cut with bytes still unread, the kernel may answer the trickle with a reset: only the close matters.
    client.on("error", () => {})
    let greeting = ""
    client.on("data", (d) => (greeting += d))
    // One byte every 100 ms keeps the connection far from idle.
    const trickle = setInterval(() => client.write("N"), 100)
    await new Promise<void>((r) => client.once("close", () => r()))
    clearInterval(trickle)
    const elapsed = performance.now() - started
    expect(greeting).toBe("220 legacy ESMTP\r\n")
    expect(elapsed).toBeGreaterThanOrEqual(350)
    expect(elapsed).toBeLessThan(3000)
    const closed = mem.events.find((e) => e.event === "closed" && e.listener === "mail-in")
    expect(closed?.reason).toBe("starttls_aborted")
  })
})
