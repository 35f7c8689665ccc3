/**
 * Faults around a real `sleeve run` process (issue 12, Faults):
 *
 * - the target is down at start: the client's connection is closed, the refusal is counted
 *   `target_unreachable`, and once the target listens again new connections work;
 * - the target name does not resolve (`.invalid`): counted `target_unreachable`, the sidecar
 *   keeps serving its other listener;
 * - the target is slow to accept (a full listen backlog): the dial runs into `connectTimeout`,
 *   counted `target_timeout`;
 * - file descriptors run out (`ulimit -n 96`): once an accepted connection's descriptor is in
 *   Sleeve's reserve it is closed at once and counted `sleeve_accept_errors_total{reason=
 *   "fd_limit"}` — exactly as many as the clients saw closed — with one `accept_failed` line for
 *   the burst and one summary after it; target dials that find no descriptor are counted
 *   `sleeve_connections_refused_total{reason="fd_limit"}`, again with one line per burst; once
 *   the connections close, new ones are served.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Exposition from "@sleeve/testing/Exposition"
import { freePort, listen } from "@sleeve/testing/Net"
import * as TestPki from "@sleeve/testing/TestPki"
import { waitUntil } from "@sleeve/testing/Wait"
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises"
import * as Net from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as Tls from "node:tls"
import { request } from "undici"
import { type SleeveDaemon, startDaemon, startSleeve } from "../support/Prometheus.ts"
import { main, node } from "../support/Sleeve.ts"

/** Figures of this run, printed at the end (docs/security.md, "Faults", quotes them). */
const figures: Record<string, number> = {}
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
  console.log(`faults figures: ${JSON.stringify(figures)}`)
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
  it("under ulimit -n 96: the reserve refuses, counts and logs once; target dials that find no descriptor too; then it recovers", async () => {
    const echo = echoServer()
    const echoPort = await listen(echo)
    await pki.write(
      "fds.yaml",
      config(
        `  - { name: in, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${echoPort}", tls: Server, handshakeTimeout: 120s }`
      )
    )
    const d = await startSleeve("fds.yaml", { cwd: pki.dir, maxOpenFiles: 96 })
    daemons.push(d)
    const { port } = d.listeners.in!
    // Scrapes close their connection (`reset`): a kept-alive one would hold a descriptor of the
    // sidecar's. While the process is at its limit a scrape can be dropped: retried.
    const value = (key: string) =>
      waitUntil(
        `a scrape of ${key}`,
        async () => {
          try {
            const res = await request(`${d.admin}/metrics`, { reset: true, headersTimeout: 5000, bodyTimeout: 5000 })
            return Exposition.parse(await res.body.text()).get(key) ?? 0
          } catch {
            return undefined
          }
        },
        { timeoutMs: 30_000, everyMs: 200 }
      )
    const acceptRefused = 'sleeve_accept_errors_total{listener="in",reason="fd_limit"}'
    const dialRefused = 'sleeve_connections_refused_total{listener="in",reason="fd_limit"}'

    // 1. Idle TCP connections (no ClientHello yet: each holds one descriptor of the sidecar's
    // while it waits in its handshake) until well past the reserve (1/16 of 96, at least 16).
    const raw: Array<Net.Socket> = []
    const closedBySidecar = new Set<Net.Socket>()
    for (let i = 0; i < 90; i++) {
      const s = Net.connect({ host: "127.0.0.1", port })
      s.on("error", () => {})
      s.on("close", () => closedBySidecar.add(s))
      raw.push(s)
      await new Promise((r) => s.once("connect", r))
    }
    // Exactly the connections the sidecar closed are counted, and none reached a listener stage.
    // Waited for until the sidecar has taken all 90 from its backlog (accepted or refused): a
    // client's `connect` completes in the kernel before the sidecar accepts it.
    const refused = await waitUntil(
      "the accept counter to match the connections the sidecar closed, all 90 taken",
      async () => {
        const n = await value(acceptRefused)
        const accepted = await value('sleeve_connections_total{listener="in"}')
        return n > 0 && n === closedBySidecar.size && n + accepted === raw.length ? n : undefined
      },
      { timeoutMs: 30_000, detail: () => `closed ${closedBySidecar.size}\n${d.output().slice(-2000)}` }
    )
    const held = raw.filter((s) => !closedBySidecar.has(s))
    expect(held.length).toBeGreaterThan(20)
    expect(await value('sleeve_connections_total{listener="in"}')).toBe(held.length)
    figures.acceptedBeforeReserve = held.length
    figures.refusedAtAccept = refused
    // One log line for the whole burst, at warn, with what to do; the summary once it is quiet.
    const first = d.events().filter((e) => e.event === "accept_failed")
    expect(first).toHaveLength(1)
    expect(first[0]).toMatchObject({ level: "warn", listener: "in", reason: "fd_limit", limit: 96, reserve: 16 })
    expect(String(first[0]!.advice)).toMatch(/LimitNOFILE/)
    const summary = await d.waitForEvent("accept_failed_summary", undefined, { timeoutMs: 20_000 })
    expect(summary).toMatchObject({ listener: "in", ended: true, count: refused, reasons: { fd_limit: refused } })
    expect(d.events().filter((e) => e.event === "accept_failed" || e.event === "accept_failed_summary")).toHaveLength(2)
    expect(d.hasExited()).toBe(false)

    // 2. All the held connections start their TLS handshake at once: each then dials the target,
    // and the reserve cannot hold a descriptor for every one of them. Those dials fail with
    // EMFILE: counted per connection (fd_limit), logged once for the burst.
    const outcomes = await Promise.all(
      held.map(
        (socket) =>
          new Promise<"echoed" | "closed">((resolve) => {
            const t = Tls.connect({ socket, host: "127.0.0.1", ca: root.certPem })
            let got = ""
            t.setEncoding("utf8")
            t.on("error", () => {})
            t.once("secureConnect", () => t.write("ping\n"))
            t.on("data", (chunk: string) => {
              got += chunk
              if (got === "ping\n") resolve("echoed")
            })
            t.once("close", () => resolve(got === "ping\n" ? "echoed" : "closed"))
          })
      )
    )
    const closed = outcomes.filter((o) => o === "closed").length
    expect(closed).toBeGreaterThan(0)
    expect(outcomes.filter((o) => o === "echoed").length).toBeGreaterThan(0)
    await waitUntil("the dial counter to match the connections closed", async () =>
      (await value(dialRefused)) === closed ? true : undefined
    )
    figures.dialsRefused = closed
    const dialFirst = d.events().filter((e) => e.event === "target_failed")
    expect(dialFirst).toHaveLength(1)
    expect(dialFirst[0]).toMatchObject({ level: "warn", listener: "in", reason: "fd_limit", code: "EMFILE" })
    const dialSummary = await d.waitForEvent("target_failed_summary", undefined, { timeoutMs: 20_000 })
    expect(dialSummary).toMatchObject({ ended: true, count: closed, reasons: { fd_limit: closed } })
    expect(d.hasExited()).toBe(false)

    // 3. Descriptors come back as the connections close: new connections are served, nothing
    // more is refused.
    for (const s of raw) s.destroy()
    await waitUntil("every connection to close", async () =>
      (await value('sleeve_connections_active{listener="in"}')) === 0 ? true : undefined
    )
    expect(await exchange(port, "after\n")).toEqual({ secured: true, received: "after\n" })
    expect(await value(acceptRefused)).toBe(refused)
    expect(await value(dialRefused)).toBe(closed)
    expect(d.events().some((e) => e.event === "listener_error")).toBe(false)
    expect(d.hasExited()).toBe(false)
  }, 180_000)
})

describe("a listen address cannot be bound", () => {
  it("on reload, a port held by another socket: reload_failed names file, field, address and rule; the old listeners serve on", async () => {
    const echo = echoServer()
    const echoPort = await listen(echo)
    const squatter = Net.createServer()
    servers.push(squatter)
    const taken = await listen(squatter)
    const listener = `  - { name: in, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${echoPort}", tls: Server }`
    await pki.write("rebind.yaml", config(listener))
    const d = await startSleeve("rebind.yaml", { cwd: pki.dir })
    daemons.push(d)
    const { port } = d.listeners.in!
    await pki.write(
      "rebind.yaml",
      config(
        `${listener}\n  - { name: more, mode: terminate, listen: "127.0.0.1:${taken}", target: "127.0.0.1:${echoPort}", tls: Server }`
      )
    )
    const before = d.events().length
    d.child.kill("SIGHUP")
    const failed = await d.waitForEvent("reload_failed", undefined, { after: before })
    expect(failed.problems).toEqual([
      `${join(pki.dir, "rebind.yaml")}: listeners[1].listen: cannot listen on 127.0.0.1:${taken}: the address is already in use ` +
        "(EADDRINUSE): another process or listener holds it; stop it or choose another address"
    ])
    expect(failed.note).toBe("the previous configuration stays active")
    expect(await metric(d, "sleeve_config_last_reload_successful")).toBe(0)
    expect(await metric(d, 'sleeve_config_reloads_total{result="failed"}')).toBe(1)
    // The old listener serves on; the new one never came up.
    expect(await exchange(port, "still\n")).toEqual({ secured: true, received: "still\n" })
    const status = (await (await request(`${d.admin}/status`)).body.json()) as {
      listeners: ReadonlyArray<{ name: string }>
    }
    expect(status.listeners.map((l) => l.name)).toEqual(["in"])
    expect(d.hasExited()).toBe(false)
  }, 60_000)

  it("at start, EACCES (a port below 1024 for an unprivileged user): exits 1 naming file, field, address and rule; nothing served", async () => {
    // `sleeve run` without CAP_NET_BIND_SERVICE (setpriv, util-linux), in a directory of its own.
    const dir = await mkdtemp(join(tmpdir(), "sleeve-eacces-"))
    try {
      await chmod(dir, 0o755)
      await writeFile(join(dir, "server.crt"), await readFile(join(pki.dir, "server.crt")), { mode: 0o644 })
      await writeFile(join(dir, "server.key"), await readFile(join(pki.dir, "server.key")), { mode: 0o644 })
      const good = await freePort()
      await writeFile(
        join(dir, "eacces.yaml"),
        config(
          [
            `  - { name: good, mode: terminate, listen: "127.0.0.1:${good}", target: "127.0.0.1:9", tls: Server }`,
            `  - { name: low, mode: terminate, listen: "127.0.0.1:443", target: "127.0.0.1:9", tls: Server }`
          ].join("\n")
        ),
        { mode: 0o644 }
      )
      // As root, the capability to bind low ports is taken away (from the bounding and the
      // inheritable sets, so that the exec cannot regain it); an unprivileged runner has none.
      // (Not by becoming nobody: a clone in a `mktemp -d` folder, mode 0700, as CI makes it, is
      // unreadable to nobody, and so is the artefact in it.)
      const args = [main, "run", "--config", "eacces.yaml"]
      const run =
        process.getuid?.() === 0
          ? startDaemon(
              "setpriv",
              ["--inh-caps=-net_bind_service", "--bounding-set=-net_bind_service", node, ...args],
              { cwd: dir }
            )
          : startDaemon(node, args, { cwd: dir })
      const exited = await run.exited
      const out = run.output()
      expect(exited.code, out).toBe(1)
      expect(out).toContain(
        `sleeve: ${join(dir, "eacces.yaml")}: listeners[1].listen: cannot listen on 127.0.0.1:443: permission denied (EACCES): ` +
          "a port below 1024 needs CAP_NET_BIND_SERVICE (or root), a Unix socket a writable directory"
      )
      expect(out).not.toContain('"event":"ready"')
      expect(out).not.toContain('"event":"accepted"')
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  }, 60_000)
})
