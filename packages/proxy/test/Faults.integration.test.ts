/**
 * Faults around the listeners, in process on real sockets (issue 12, Faults):
 *
 * - the descriptor reserve: once an accepted socket's descriptor number reaches the budget's
 *   threshold, the connection is closed at once, counted `sleeve_accept_errors_total{reason=
 *   "fd_limit"}` (exactly as many as the clients saw closed), logged once for the burst and
 *   summarised when it is quiet; once descriptors are free again the listener serves. The budget
 *   is set just above the descriptors this worker uses now (the real limit needs `ulimit -n`:
 *   apps/sidecar/test/e2e/faults-target-and-fds.e2e.test.ts does that to a real `sleeve run`);
 * - bind failures at start: EADDRINUSE and EADDRNOTAVAIL name the file, the listener's `listen` field,
 *   the address and the rule, and a listener that did bind never served (EACCES needs an
 *   unprivileged user: the faults e2e runs `sleeve run` as one);
 * - a listener started `held` serves nothing until `open()`.
 */
import { Metrics } from "@sleeve/metrics"
import { close, freePort, listen } from "@sleeve/testing/Net"
import * as TestPki from "@sleeve/testing/TestPki"
import { eventually, sleep } from "@sleeve/testing/Wait"
import { Result } from "effect"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"
import * as Tls from "node:tls"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as EventLog from "../src/EventLog.ts"
import * as Listener from "../src/Listener.ts"
import * as ProxyRuntime from "../src/ProxyRuntime.ts"
import { metricValue } from "./support/ProxyUnderTest.ts"

let pki: TestPki.TestPki
let echo: Net.Server
let echoPort: number

beforeAll(async () => {
  pki = await TestPki.make()
  const ca = await pki.ca()
  await pki.leaf(ca, { name: "server" })
  echo = Net.createServer({ allowHalfOpen: true }, (s) => s.on("error", () => {}).pipe(s))
  echoPort = await listen(echo)
})
afterAll(async () => {
  await close(echo)
  await pki?.cleanup()
})

const writeConfig = (name: string, listeners: string): string => {
  const file = Path.join(pki.dir, name)
  Fs.writeFileSync(
    file,
    `tls:
  S:
    type: server
    certificateFile: ${Path.join(pki.dir, "server.crt")}
    privateKeyFile: ${Path.join(pki.dir, "server.key")}
listeners:
${listeners}`
  )
  return file
}

const activate = (file: string): ProxyRuntime.Activated => {
  const a = ProxyRuntime.activate(file)
  if (Result.isFailure(a)) throw new Error(a.failure.message)
  return a.success
}

/** The lowest descriptor number free in this process now. */
const lowestFreeFd = (): number => {
  const fd = Fs.openSync("/dev/null", "r")
  Fs.closeSync(fd)
  return fd
}

const roundTrip = (port: number, line: string): Promise<string> =>
  new Promise((resolve) => {
    let got = ""
    const c = Tls.connect({ port, host: "127.0.0.1", ca: pki.caPem, servername: "localhost" }, () => c.write(line))
    c.setEncoding("utf8")
    c.on("data", (d: string) => {
      got += d
      if (got === line) c.end()
    })
    c.on("error", () => {})
    c.on("close", () => resolve(got))
  })

describe("the descriptor reserve", () => {
  it("closes, counts and logs once the connections past it, and serves again when descriptors free up", async () => {
    const file = writeConfig(
      "reserve.yaml",
      `  - { name: in, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${echoPort}", tls: S, handshakeTimeout: 60s }\n`
    )
    const metrics = Metrics.make({ defaultMetrics: false })
    const mem = EventLog.makeMemory()
    // 40 descriptors above what is in use now: both ends of each connection live in this process.
    const threshold = lowestFreeFd() + 40
    const running = await ProxyRuntime.start(activate(file), {
      metrics,
      log: mem.sink,
      descriptors: { limit: threshold + 16, reserve: 16, threshold },
      burst: { quietMs: 300 }
    })
    const port = running.listener("in")!.address().port
    const refusedCount = () =>
      metricValue(metrics, "sleeve_accept_errors_total", { listener: "in", reason: "fd_limit" })
    try {
      // Idle TCP connections (no ClientHello: each waits in its handshake) until well past the reserve.
      const clients: Array<Net.Socket> = []
      let closedBySidecar = 0
      for (let i = 0; i < 40; i++) {
        const c = Net.connect({ port, host: "127.0.0.1" })
        c.on("error", () => {})
        c.on("close", () => {
          // Closed before the test closed it: the sidecar did.
          if (!(c as { mine?: boolean }).mine) closedBySidecar++
        })
        clients.push(c)
        await new Promise((r) => c.once("connect", r))
      }
      // Every connection the sidecar closed is counted, and only those.
      await eventually("the counter to match the connections closed", async () => {
        const n = await refusedCount()
        return n > 0 && n === closedBySidecar
      })
      const refused = await refusedCount()
      expect(refused).toBeGreaterThan(5)
      expect(refused).toBeLessThan(40)
      // None of them reached the connection stages.
      expect(await metricValue(metrics, "sleeve_connections_total", { listener: "in" })).toBe(40 - refused)
      // One line for the burst, with what to do; then, once quiet, one summary with the count.
      const first = mem.events.filter((e) => e.event === "accept_failed")
      expect(first).toHaveLength(1)
      expect(first[0]).toMatchObject({ level: "warn", listener: "in", reason: "fd_limit", reserve: 16 })
      expect(String(first[0]!.advice)).toMatch(/LimitNOFILE/)
      expect(first[0]!.fd).toBeGreaterThanOrEqual(threshold)
      await eventually("the burst summary", () => mem.events.some((e) => e.event === "accept_failed_summary"))
      expect(mem.events.filter((e) => e.event === "accept_failed_summary")).toEqual([
        expect.objectContaining({ ended: true, count: refused, reasons: { fd_limit: refused }, listener: "in" })
      ])

      // Descriptors come back: the listener serves, and nothing more is counted.
      for (const c of clients) {
        ;(c as { mine?: boolean }).mine = true
        c.destroy()
      }
      await eventually("the held connections to close", () => running.listener("in")!.activeConnections === 0)
      expect(await roundTrip(port, "after\n")).toBe("after\n")
      expect(await refusedCount()).toBe(refused)
    } finally {
      await running.drain(0)
    }
  }, 60_000)
})

describe("bind failures at start", () => {
  it("EADDRINUSE: names the file, listeners[1].listen, the address and the rule; the first listener never served", async () => {
    const squatter = Net.createServer()
    const taken = await listen(squatter)
    const good = await freePort()
    const file = writeConfig(
      "inuse.yaml",
      `  - { name: good, mode: terminate, listen: "127.0.0.1:${good}", target: "127.0.0.1:${echoPort}", tls: S }
  - { name: bad, mode: terminate, listen: "127.0.0.1:${taken}", target: "127.0.0.1:${echoPort}", tls: S }\n`
    )
    const mem = EventLog.makeMemory()
    try {
      const error = await ProxyRuntime.start(activate(file), { metrics: Metrics.make(), log: mem.sink }).then(
        () => undefined,
        (e: unknown) => e
      )
      expect(error).toBeInstanceOf(ProxyRuntime.ListenError)
      const e = error as ProxyRuntime.ListenError
      expect({ file: e.file, path: e.path, address: e.address, code: e.code }).toEqual({
        file,
        path: "listeners[1].listen",
        address: `127.0.0.1:${taken}`,
        code: "EADDRINUSE"
      })
      expect(e.message).toBe(
        `${file}: listeners[1].listen: cannot listen on 127.0.0.1:${taken}: the address is already in use ` +
          "(EADDRINUSE): another process or listener holds it; stop it or choose another address"
      )
      // The good listener was closed again and never served.
      expect(mem.events.some((x) => x.event === "accepted")).toBe(false)
      await new Promise<void>((resolve, reject) => {
        const probe = Net.createServer().once("error", reject)
        probe.listen(good, "127.0.0.1", () => probe.close(() => resolve()))
      })
    } finally {
      await close(squatter)
    }
  })

  it("EADDRNOTAVAIL: an address that is not this host's", async () => {
    const file = writeConfig(
      "notavail.yaml",
      `  - { name: away, mode: terminate, listen: "192.0.2.1:8443", target: "127.0.0.1:${echoPort}", tls: S }\n`
    )
    const error = await ProxyRuntime.start(activate(file), {
      metrics: Metrics.make(),
      log: EventLog.makeMemory().sink
    }).then(
      () => undefined,
      (e: unknown) => e
    )
    expect(error).toBeInstanceOf(ProxyRuntime.ListenError)
    expect((error as ProxyRuntime.ListenError).code).toBe("EADDRNOTAVAIL")
    expect((error as Error).message).toBe(
      `${file}: listeners[0].listen: cannot listen on 192.0.2.1:8443: the address is not one of this host's (EADDRNOTAVAIL)`
    )
  })
})

describe("a listener started held", () => {
  it("serves nothing until open(), then the connection that waited", async () => {
    const file = writeConfig(
      "held.yaml",
      `  - { name: h, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${echoPort}", tls: S }\n`
    )
    const a = activate(file)
    const mem = EventLog.makeMemory()
    const l = await Listener.RunningListener.start(
      { listener: a.config.listeners[0]!, material: a.materials.get("S")! },
      { metrics: Metrics.make(), log: mem.sink },
      { held: true }
    )
    try {
      const answer = roundTrip(l.address().port, "waited\n")
      await sleep(300)
      expect(mem.events.filter((e) => e.event === "accepted" || e.event === "handshake_ok")).toEqual([])
      l.open()
      expect(await answer).toBe("waited\n")
      expect(mem.events.some((e) => e.event === "accepted")).toBe(true)
    } finally {
      await l.drain(0)
    }
  })
})
