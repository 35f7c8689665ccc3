/**
 * Faults around a real `sleeve run` process (issue 12, Faults):
 *
 * - the target is down at start: the client's connection is closed, the refusal is counted
 *   `target_unreachable`, and once the target listens again new connections work;
 * - the target name does not resolve (`.invalid`): counted `target_unreachable`, the sidecar
 *   keeps serving its other listener;
 * - the target is slow to accept (a full listen backlog): the dial runs into `connectTimeout`,
 *   counted `target_timeout`;
 * - file descriptors run out (`ulimit -n`): accept fails with EMFILE, the process survives, the
 *   admin endpoint answers again and new TLS connections succeed once the others are closed.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Exposition from "@sleeve/testing/Exposition"
import { freePort, listen } from "@sleeve/testing/Net"
import * as TestPki from "@sleeve/testing/TestPki"
import { waitUntil } from "@sleeve/testing/Wait"
import * as Net from "node:net"
import * as Tls from "node:tls"
import { request } from "undici"
import { type SleeveDaemon, startDaemon, startSleeve } from "../support/Prometheus.ts"

let pki: TestPki.TestPki
let root: TestPki.Identity
const daemons: Array<SleeveDaemon> = []
const servers: Array<Net.Server> = []

const echoServer = (): Net.Server => {
  const s = Net.createServer({ allowHalfOpen: true }, (c) => {
    c.on("error", () => {})
    c.pipe(c)
  })
  servers.push(s)
  return s
}

const config = (listeners: string) => `
admin: { listen: "127.0.0.1:0" }
drainTimeout: 2s
tls:
  Server:
    type: server
    certificateFile: server.crt
    privateKeyFile: server.key
listeners:
${listeners}
`

const metric = async (d: SleeveDaemon, key: string): Promise<number> => {
  const res = await request(`${d.admin}/metrics`, { headersTimeout: 5000, bodyTimeout: 5000 })
  return Exposition.parse(await res.body.text()).get(key) ?? 0
}

/** Connects, sends `line`, and resolves with what came back before the connection closed. */
const exchange = (port: number, line: string): Promise<{ secured: boolean; received: string }> =>
  new Promise((resolve) => {
    let received = ""
    let secured = false
    const socket = Tls.connect({ host: "127.0.0.1", port, ca: root.certPem })
    socket.setEncoding("utf8")
    socket.on("error", () => {})
    socket.on("secureConnect", () => {
      secured = true
      socket.write(line)
    })
    socket.on("data", (d: string) => {
      received += d
      if (received === line) socket.end()
    })
    socket.on("close", () => resolve({ secured, received }))
    setTimeout(() => socket.destroy(), 15_000).unref()
  })

beforeAll(async () => {
  pki = await TestPki.make()
  root = await pki.ca({ name: "root", subject: [{ CN: "Faults Root" }] })
  const leaf = await pki.leaf(root, { name: "server" })
  await pki.write("server.crt", leaf.certPem)
  await pki.write("server.key", leaf.keyPem)
})

afterAll(async () => {
  for (const d of daemons) await d.stop("SIGKILL")
  for (const s of servers) s.close()
})

describe("the target fails", () => {
  it("down at start: closed and counted target_unreachable; served once the target is back", async () => {
    const port = await freePort()
    await pki.write(
      "down.yaml",
      config(`  - { name: in, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${port}", tls: Server }`)
    )
    const d = await startSleeve("down.yaml", { cwd: pki.dir })
    daemons.push(d)
    const { port: lp } = d.listeners.in!

    const refused = await exchange(lp, "hello\n")
    expect(refused.received).toBe("")
    expect(await metric(d, 'sleeve_connections_refused_total{listener="in",reason="target_unreachable"}')).toBe(1)

    // The target comes up on the very port: the next connection goes through.
    const echo = echoServer()
    await listen(echo, { host: "127.0.0.1", port })
    expect(await exchange(lp, "back\n")).toEqual({ secured: true, received: "back\n" })

    // And down again mid-session: a new connection is refused, counted, the process lives on.
    await new Promise<void>((r) => echo.close(() => r()))
    expect((await exchange(lp, "again\n")).received).toBe("")
    expect(await metric(d, 'sleeve_connections_refused_total{listener="in",reason="target_unreachable"}')).toBe(2)
    expect(d.hasExited()).toBe(false)
  }, 60_000)

  it("a target name that does not resolve is counted and the other listener keeps serving", async () => {
    const echo = echoServer()
    const echoPort = await listen(echo)
    await pki.write(
      "dns.yaml",
      config(
        [
          `  - { name: nowhere, mode: terminate, listen: "127.0.0.1:0", target: "nowhere.invalid:${echoPort}", tls: Server, allowPlaintextNetwork: true }`,
          `  - { name: ok, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${echoPort}", tls: Server }`
        ].join("\n")
      )
    )
    const d = await startSleeve("dns.yaml", { cwd: pki.dir })
    daemons.push(d)
    for (let i = 0; i < 3; i++) expect((await exchange(d.listeners.nowhere!.port, "x\n")).received).toBe("")
    expect(await metric(d, 'sleeve_connections_refused_total{listener="nowhere",reason="target_unreachable"}')).toBe(3)
    expect(await exchange(d.listeners.ok!.port, "fine\n")).toEqual({ secured: true, received: "fine\n" })
    expect(d.hasExited()).toBe(false)
  }, 60_000)
})

describe("the target is slow to accept", () => {
  it("a full listen backlog runs into connectTimeout: counted target_timeout", async () => {
    // A target that listens with a backlog of 0 and never accepts: once the queue is full the
    // kernel drops further SYNs and the sidecar's connect waits until its connectTimeout.
    const target = startDaemon(
      "python3",
      [
        "-c",
        [
          "import socket, sys, time",
          "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(0)",
          "print(s.getsockname()[1], flush=True)",
          "fill = []",
          "for _ in range(4):",
          "    c = socket.socket(); c.settimeout(1)",
          "    try: c.connect(s.getsockname()); fill.append(c)",
          "    except OSError: break",
          "print('full', len(fill), flush=True)",
          "time.sleep(600)"
        ].join("\n")
      ],
      { cwd: pki.dir }
    )
    try {
      await target.waitForOutput((o) => o.includes("full"), { timeoutMs: 15_000 })
      const port = Number(target.stdout().split("\n")[0])
      await pki.write(
        "slow.yaml",
        config(
          `  - { name: in, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${port}", tls: Server, connectTimeout: 1s }`
        )
      )
      const d = await startSleeve("slow.yaml", { cwd: pki.dir })
      daemons.push(d)
      expect((await exchange(d.listeners.in!.port, "x\n")).received).toBe("")
      expect(await metric(d, 'sleeve_connections_refused_total{listener="in",reason="target_timeout"}')).toBe(1)
      expect(d.hasExited()).toBe(false)
    } finally {
      await target.stop("SIGKILL")
    }
  }, 60_000)
})

describe("file descriptors run out", () => {
  it("survives EMFILE on accept and serves again once descriptors are free", async () => {
    const echo = echoServer()
    const echoPort = await listen(echo)
    await pki.write(
      "fds.yaml",
      config(`  - { name: in, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${echoPort}", tls: Server }`)
    )
    const d = await startSleeve("fds.yaml", { cwd: pki.dir, maxOpenFiles: 96 })
    daemons.push(d)
    const { port } = d.listeners.in!

    // Hold TLS connections open until the sidecar cannot accept any more (each one costs it two
    // descriptors: the client and the target).
    const held: Array<Tls.TLSSocket> = []
    let failed = 0
    for (let i = 0; i < 200 && failed < 5; i++) {
      const ok = await new Promise<boolean>((resolve) => {
        const s = Tls.connect({ host: "127.0.0.1", port, ca: root.certPem })
        s.on("error", () => resolve(false))
        s.once("secureConnect", () => {
          s.write("ping\n")
          s.once("data", () => resolve(true))
        })
        s.once("close", () => resolve(false))
        setTimeout(() => resolve(false), 3000).unref()
        held.push(s)
      })
      if (!ok) failed++
    }
    expect(failed).toBeGreaterThan(0)
    // The first descriptor to run out is the one for the target: counted and logged, not fatal.
    const emfile = d.events().filter((e) => e.event === "target_failed" && String(e.error).includes("EMFILE"))
    expect(emfile.length).toBeGreaterThan(0)
    expect(
      await metric(d, 'sleeve_connections_refused_total{listener="in",reason="target_unreachable"}')
    ).toBeGreaterThan(0)

    // Then accept itself: plain TCP connections, more than the descriptors left. Node/libuv
    // answers EMFILE on accept by accepting and closing the connection at once (its reserve
    // descriptor), so the sidecar closes some of them and stays up.
    const raw: Array<Net.Socket> = []
    let closedByPeer = 0
    for (let i = 0; i < 120; i++) {
      const s = Net.connect({ host: "127.0.0.1", port })
      s.on("error", () => {})
      s.on("close", () => closedByPeer++)
      raw.push(s)
    }
    await waitUntil("the sidecar to close connections it cannot take", () => (closedByPeer > 0 ? true : undefined), {
      timeoutMs: 30_000,
      detail: () => d.output().slice(-3000)
    })
    expect(d.hasExited()).toBe(false)
    for (const s of raw) s.destroy()
    for (const s of held) s.destroy()
    expect(d.hasExited()).toBe(false)

    // Descriptors come back as the connections close: admin answers, new connections work.
    await waitUntil(
      "a new TLS connection to succeed after the burst",
      async () => ((await exchange(port, "after\n")).received === "after\n" ? true : undefined),
      { timeoutMs: 30_000, everyMs: 500, detail: () => d.output().slice(-3000) }
    )
    expect(await metric(d, 'sleeve_connections_active{listener="in"}')).toBeLessThanOrEqual(1)
    expect(d.hasExited()).toBe(false)
  }, 120_000)
})
