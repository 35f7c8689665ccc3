/**
 * The lifecycle of a real `sleeve run` process, seen from outside:
 *
 * - reload on SIGHUP: after the certificate files change, new connections present the new
 *   certificate while an established connection keeps streaming, byte for byte, on the old one;
 * - reload on a file change alone (the watcher polls every second);
 * - a broken edit (a key that does not match the certificate, a YAML error) is rejected as a
 *   whole: `reload_failed` lists the problem, the failure is counted, the old configuration
 *   keeps serving;
 * - SIGTERM drains: new connections are refused, `/readyz` says 503, a live connection can still
 *   exchange data and finish, and the process exits 0 after logging `draining` and `stopped`;
 *   a connection that does not finish is closed at the `drainTimeout` deadline.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Exposition from "@sleeve/testing/Exposition"
import { listen } from "@sleeve/testing/Net"
import * as TestPki from "@sleeve/testing/TestPki"
import { sleep, waitUntil } from "@sleeve/testing/Wait"
import { renameSync, writeFileSync } from "node:fs"
import { mkdir } from "node:fs/promises"
import * as Net from "node:net"
import { join } from "node:path"
import * as Tls from "node:tls"
import { request } from "undici"
import { type LogEvent, type SleeveDaemon, startSleeve } from "../support/Prometheus.ts"
import { run } from "../support/Sleeve.ts"

let pki: TestPki.TestPki
let root: TestPki.Identity
const servers: Record<string, TestPki.Identity> = {}
let echo: Net.Server
let echoPort = 0
let sleeve: SleeveDaemon | undefined
let short: SleeveDaemon | undefined
let configText = ""

const config = (drainTimeout: string) => `
admin: { listen: "127.0.0.1:0" }
drainTimeout: ${drainTimeout}
tls:
  Server:
    type: server
    certificateFile: server.crt
    privateKeyFile: server.key
listeners:
  - { name: in, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${echoPort}", tls: Server }
`

/**
 * Replaces files by renaming fully written copies over them, back to back, so the watcher never
 * sees half a file (a certificate with the previous key is another matter: see the docs).
 */
const replace = (files: Readonly<Record<string, string>>) => {
  for (const [name, content] of Object.entries(files)) writeFileSync(join(pki.dir, `${name}.next`), content)
  for (const name of Object.keys(files)) renameSync(join(pki.dir, `${name}.next`), join(pki.dir, name))
}

const useCertificate = (cn: string) => {
  const id = servers[cn]!
  replace({ "server.crt": id.certPem, "server.key": id.keyPem })
}

/** A TLS client connection, secured, with everything it has read so far. */
interface Client {
  readonly socket: Tls.TLSSocket
  readonly cn: string
  readonly received: () => string
  readonly closed: Promise<void>
}

const connect = (port: number): Promise<Client> =>
  new Promise((resolve, reject) => {
    let received = ""
    const socket = Tls.connect({ host: "127.0.0.1", port, ca: root.certPem })
    socket.setEncoding("utf8")
    socket.on("data", (d: string) => {
      received += d
    })
    const closed = new Promise<void>((r) => socket.once("close", () => r()))
    socket.once("error", reject)
    socket.once("secureConnect", () => {
      socket.removeListener("error", reject)
      socket.on("error", () => {})
      resolve({ socket, cn: String(socket.getPeerCertificate().subject.CN), received: () => received, closed })
    })
  })

/** Sends `line` and waits until everything sent so far has come back. */
const roundTrip = async (c: Client, sent: string, line: string): Promise<string> => {
  const all = sent + line
  c.socket.write(line)
  await waitUntil(`the echo of ${JSON.stringify(line)}`, () => (c.received() === all ? true : undefined), {
    detail: () => `received ${JSON.stringify(c.received())}`
  })
  return all
}

/** The subject CN a new connection to the listener is served with. */
const servedCn = async (port: number): Promise<string> => {
  const c = await connect(port)
  await roundTrip(c, "", "hello\n")
  c.socket.end()
  await c.closed
  return c.cn
}

const get = async (d: SleeveDaemon, path: string) => {
  const res = await request(`${d.admin}${path}`, { headersTimeout: 5000, bodyTimeout: 5000 })
  return { status: res.statusCode, body: await res.body.text() }
}

const scrape = async (d: SleeveDaemon) => Exposition.parse((await get(d, "/metrics")).body)

const isReloadEvent = (e: LogEvent) => e.event === "reloaded" || e.event === "reload_failed"

/**
 * Waits until no reload has been logged for 1.5 s (longer than the watcher's 1 s poll), so that
 * reloads triggered by an earlier step are over before the next step counts.
 */
const settle = async (d: SleeveDaemon) => {
  await waitUntil(
    "reloads to settle",
    () => {
      const last = d.events().filter(isReloadEvent).at(-1)
      return last === undefined || Date.now() - Date.parse(last.time) > 1500 ? true : undefined
    },
    { timeoutMs: 10_000, everyMs: 100 }
  )
}

beforeAll(async () => {
  pki = await TestPki.make()
  root = await pki.ca({ name: "root", subject: [{ CN: "Reload Root" }] })
  await pki.write("trust.pem", root.certPem)
  for (const cn of ["server-v1", "server-v2", "server-v3"]) servers[cn] = await pki.leaf(root, { name: cn })

  echo = Net.createServer({ allowHalfOpen: true }, (s) => {
    s.on("error", () => {})
    s.pipe(s)
  })
  echoPort = await listen(echo)

  useCertificate("server-v1")
  configText = config("5s")
  await pki.write("sleeve.yaml", configText)
  // The short-deadline process has files of its own, out of reach of the edits above.
  await mkdir(join(pki.dir, "short"))
  await pki.write("short/server.crt", servers["server-v1"]!.certPem)
  await pki.write("short/server.key", servers["server-v1"]!.keyPem)
  await pki.write("short/sleeve.yaml", config("1s"))
  sleeve = await startSleeve("sleeve.yaml", { cwd: pki.dir })
}, 30_000)

afterAll(async () => {
  await Promise.all([sleeve?.stop("SIGKILL"), short?.stop("SIGKILL")])
  await new Promise((r) => echo?.close(r))
  await pki?.cleanup()
})

describe("sleeve run: reload and drain", { timeout: 30_000 }, () => {
  it("SIGHUP after a certificate change: new connections get the new certificate, a live stream is untouched", async () => {
    const port = sleeve!.listeners.in!.port
    const live = await connect(port)
    expect(live.cn).toBe("server-v1")

    // Stream numbered lines every 20 ms for the whole test; each must come back in order.
    let sent = ""
    let n = 0
    let streaming = true
    const stream = (async () => {
      while (streaming) {
        sent = await roundTrip(live, sent, `${++n}\n`)
        await sleep(20)
      }
    })()
    await waitUntil("a few lines streamed", () => (n >= 5 ? true : undefined))

    const from = sleeve!.events().length
    useCertificate("server-v2")
    sleeve!.child.kill("SIGHUP")
    const reloaded = await sleeve!.waitForEvent("reloaded", (e) => e.trigger === "SIGHUP", { after: from })
    expect(reloaded.warnings).toEqual([])
    expect(await servedCn(port)).toBe("server-v2")

    const atReload = n
    await waitUntil("more lines after the reload", () => (n >= atReload + 10 ? true : undefined))
    streaming = false
    await stream
    expect(live.received()).toBe(sent)
    expect(sent.split("\n").length).toBeGreaterThan(15)
    // Still the same TLS session, with the certificate it started with.
    expect(live.socket.destroyed).toBe(false)
    expect(live.socket.getPeerCertificate().subject.CN).toBe("server-v1")
    live.socket.end()
    await live.closed
    expect(sleeve!.events().filter((e) => e.event === "reload_failed")).toEqual([])
    await settle(sleeve!)
  })

  it("a changed certificate file alone (no signal) is picked up within a few seconds", async () => {
    const port = sleeve!.listeners.in!.port
    const from = sleeve!.events().length
    const started = Date.now()
    useCertificate("server-v3")
    await waitUntil(
      "the new certificate to be served",
      async () => ((await servedCn(port)) === "server-v3" ? true : undefined),
      { timeoutMs: 8000, everyMs: 200 }
    )
    expect(Date.now() - started).toBeLessThan(5000)
    // A third-party client agrees on the certificate and its chain.
    const brief = await run(
      "openssl",
      [
        "s_client",
        "-connect",
        `127.0.0.1:${port}`,
        "-CAfile",
        join(pki.dir, "trust.pem"),
        "-verify_return_error",
        "-brief"
      ],
      { input: "" }
    )
    expect(brief.stderr).toContain("Peer certificate: CN = server-v3")
    expect(brief.stderr).toContain("Verification: OK")
    const reloaded = await sleeve!.waitForEvent("reloaded", undefined, { after: from })
    expect(reloaded.trigger).toMatch(new RegExp(`^file:${pki.dir}/server\\.(crt|key)$`))
    expect(
      sleeve!
        .events()
        .slice(from)
        .filter((e) => e.event === "reload_failed")
    ).toEqual([])
    await settle(sleeve!)
  })

  it("a broken edit is rejected and counted; the configuration in force keeps serving", async () => {
    const port = sleeve!.listeners.in!.port
    const keyFile = join(pki.dir, "server.key")

    // A key that belongs to another certificate.
    let before = await scrape(sleeve!)
    let from = sleeve!.events().length
    replace({ "server.key": servers["server-v1"]!.keyPem })
    const mismatch = await sleeve!.waitForEvent("reload_failed", undefined, { after: from })
    expect(mismatch.trigger).toBe(`file:${keyFile}`)
    expect(mismatch.problems).toEqual([
      expect.stringMatching(/^sleeve\.yaml: tls\.Server\.privateKeyFile: .*public keys differ/)
    ])
    expect(mismatch.note).toBe("the previous configuration stays active")
    expect(await servedCn(port)).toBe("server-v3")
    await settle(sleeve!)
    let after = await scrape(sleeve!)
    expect(Exposition.diff(before, after, ["sleeve_config_reloads_total"])).toEqual({
      'sleeve_config_reloads_total{result="failed"}': 1
    })
    expect(after.get("sleeve_config_last_reload_successful")).toBe(0)
    let status = JSON.parse((await get(sleeve!, "/status")).body)
    expect(status.lastReload).toMatchObject({ result: "failed", problems: mismatch.problems })
    expect(status.tls[0].certificate.subject).toBe("CN=server-v3")

    // Invalid YAML in the configuration file itself.
    before = after
    from = sleeve!.events().length
    replace({ "sleeve.yaml": configText.replace("drainTimeout: 5s", "drainTimeout: [5s") })
    const yaml = await sleeve!.waitForEvent("reload_failed", undefined, { after: from })
    expect(yaml.trigger).toBe(`file:${join(pki.dir, "sleeve.yaml")}`)
    expect(yaml.problems).toEqual([expect.stringMatching(/^sleeve\.yaml: line \d+, column \d+: invalid YAML: /)])
    expect(await servedCn(port)).toBe("server-v3")
    await settle(sleeve!)
    after = await scrape(sleeve!)
    expect(Exposition.diff(before, after, ["sleeve_config_reloads_total"])).toEqual({
      'sleeve_config_reloads_total{result="failed"}': 1
    })

    // Both put right: the next reload succeeds.
    from = sleeve!.events().length
    replace({ "sleeve.yaml": configText, "server.key": servers["server-v3"]!.keyPem })
    await sleeve!.waitForEvent("reloaded", undefined, { after: from })
    await settle(sleeve!)
    expect((await scrape(sleeve!)).get("sleeve_config_last_reload_successful")).toBe(1)
    status = JSON.parse((await get(sleeve!, "/status")).body)
    expect(status.lastReload).toMatchObject({ result: "ok", problems: [] })
    expect(await servedCn(port)).toBe("server-v3")
  })

  it("SIGTERM: new connections are refused, a live one finishes within drainTimeout, exit 0", async () => {
    const d = sleeve!
    const port = d.listeners.in!.port
    const live = await connect(port)
    let sent = await roundTrip(live, "", "before\n")

    const from = d.events().length
    d.child.kill("SIGTERM")
    const draining = await d.waitForEvent("draining", undefined, { after: from })
    expect(draining).toMatchObject({ deadlineMs: 5000, activeConnections: 1 })

    // Not ready any more, but the admin endpoint still answers while connections drain.
    expect(await get(d, "/readyz")).toEqual({ status: 503, body: "not ready\n" })
    expect((await get(d, "/healthz")).status).toBe(200)
    expect((await scrape(d)).get("sleeve_ready")).toBe(0)
    expect(JSON.parse((await get(d, "/status")).body)).toMatchObject({ ready: false, draining: true })
    // The listener is closed: a new connection is refused by the kernel.
    const refused = await new Promise<string>((resolve) => {
      const s = Net.connect({ host: "127.0.0.1", port })
      s.once("connect", () => {
        s.destroy()
        resolve("connected")
      })
      s.once("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message))
    })
    expect(refused).toBe("ECONNREFUSED")

    // The live connection still works, and ends when the client is done.
    sent = await roundTrip(live, sent, "after SIGTERM\n")
    live.socket.end()
    await live.closed
    const doneAt = Date.now()
    const exit = await d.exited
    expect(exit, d.stderr()).toEqual({ code: 0, signal: null })
    expect(Date.now() - doneAt).toBeLessThan(3000)
    expect(live.received()).toBe(sent)
    const stopped = d.events().find((e) => e.event === "stopped")
    expect(stopped).toMatchObject({ closedAtDeadline: 0 })
    expect(d.stderr()).toBe("")
  })

  it("a connection that does not finish is closed at the drainTimeout deadline (1 s)", async () => {
    short = await startSleeve("sleeve.yaml", { cwd: join(pki.dir, "short") })
    const live = await connect(short.listeners.in!.port)
    await roundTrip(live, "", "hold\n")

    const signalled = performance.now()
    short.child.kill("SIGTERM")
    await live.closed
    const closedAfter = performance.now() - signalled
    expect(closedAfter).toBeGreaterThanOrEqual(900)
    expect(closedAfter).toBeLessThan(3500)
    const exit = await short.exited
    expect(exit, short.stderr()).toEqual({ code: 0, signal: null })
    expect(short.events().find((e) => e.event === "draining")).toMatchObject({ deadlineMs: 1000, activeConnections: 1 })
    expect(short.events().find((e) => e.event === "stopped")).toMatchObject({ closedAtDeadline: 1 })
  })
})
