/**
 * A reload that cannot bind a new listener changes nothing: the listeners started for it are
 * closed again, the old ones keep serving with the old activation.
 */
import * as TestPki from "@sleeve/testing/TestPki"
import { close, freePort, listen } from "@sleeve/testing/Net"
import { Metrics } from "@sleeve/metrics"
import { Result } from "effect"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"
import * as Tls from "node:tls"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as EventLog from "../src/EventLog.ts"
import * as ProxyRuntime from "../src/ProxyRuntime.ts"

describe("reload that cannot bind", () => {
  let pki: TestPki.TestPki
  let echo: Net.Server
  let squatter: Net.Server
  let running: ProxyRuntime.Running
  let config: string
  let echoPort: number
  let squatted: number

  const write = (listeners: string) =>
    Fs.writeFileSync(
      config,
      `tls:
  S:
    type: server
    certificateFile: ${Path.join(pki.dir, "server.crt")}
    privateKeyFile: ${Path.join(pki.dir, "server.key")}
listeners:
${listeners}`
    )
  const activate = () => {
    const a = ProxyRuntime.activate(config)
    if (Result.isFailure(a)) throw new Error(a.failure.message)
    return a.success
  }

  beforeAll(async () => {
    pki = await TestPki.make()
    const ca = await pki.ca()
    await pki.leaf(ca, { name: "server" })
    config = Path.join(pki.dir, "sleeve.yaml")
    echo = Net.createServer((s) => s.pipe(s).on("error", () => {}))
    echoPort = await listen(echo)
    squatter = Net.createServer()
    squatted = await listen(squatter)
    write(`  - { name: a, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${echoPort}", tls: S }\n`)
    running = await ProxyRuntime.start(activate(), { metrics: Metrics.make(), log: EventLog.makeMemory().sink })
  })
  afterAll(async () => {
    await running?.drain(0)
    await close(echo)
    await close(squatter)
    await pki?.cleanup()
  })

  it("rejects the reload, closes what it started, and the old listener keeps serving", async () => {
    const free = await freePort()
    write(
      `  - { name: a, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${echoPort}", tls: S, maxConnections: 7 }
  - { name: b, mode: terminate, listen: "127.0.0.1:${free}", target: "127.0.0.1:${echoPort}", tls: S }
  - { name: c, mode: terminate, listen: "127.0.0.1:${squatted}", target: "127.0.0.1:${echoPort}", tls: S }
`
    )
    await expect(running.reload(activate())).rejects.toThrow(/EADDRINUSE/)
    // Nothing changed: no listener b or c, a still on its old activation, b's port free again.
    expect(running.status().listeners.map((l) => l.name)).toEqual(["a"])
    expect(running.listener("a")!.activation.listener.maxConnections).toBe(1024)
    await new Promise<void>((resolve, reject) => {
      const probe = Net.createServer().once("error", reject)
      probe.listen(free, "127.0.0.1", () => probe.close(() => resolve()))
    })
    const got = await new Promise<string>((resolve, reject) => {
      const c = Tls.connect(
        { port: running.listener("a")!.address().port, host: "127.0.0.1", ca: pki.caPem, servername: "localhost" },
        () => c.end("still here\n")
      )
      let s = ""
      c.on("data", (d) => (s += d))
      c.on("end", () => resolve(s))
      c.on("error", reject)
    })
    expect(got).toBe("still here\n")
  })
})
