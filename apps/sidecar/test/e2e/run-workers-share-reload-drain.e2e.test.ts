/**
 * `sleeve run` with `workers: 2`, seen from outside: one primary and two worker processes.
 *
 * - connections are served by both workers (`/status` lists each with its pid and counts), and
 *   the listening and connection log lines carry the worker; the workers run the same artefact
 *   with the same Node options as the primary (a launcher's V8 flags reach every worker);
 * - `/metrics` is one exposition for the whole sidecar: handshake counters move by exactly the
 *   handshakes made, whichever worker served them, and `promtool check metrics` passes it;
 * - SIGHUP reaches every worker: a changed `authorizedPeers` decides every new connection, on
 *   both workers;
 * - a bad reload changes nothing anywhere: a configuration error is rejected by the primary
 *   before any worker sees it, and a new listener that cannot bind is undone everywhere;
 * - a changed CRL file is in force on every worker after its reload, and a forged one is refused
 *   by the primary, so every worker keeps the CRL in force;
 * - a worker that is killed is replaced (counted in `sleeve_worker_restarts_total`);
 * - SIGTERM drains every worker (a live connection still finishes) and the process exits 0;
 * - with an invalid configuration, or an address in use, nothing starts and the error is
 *   printed once.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Exposition from "@sleeve/testing/Exposition"
import { listen } from "@sleeve/testing/Net"
import * as TestPki from "@sleeve/testing/TestPki"
import { settle, sleep, waitUntil } from "@sleeve/testing/Wait"
import { existsSync, readFileSync } from "node:fs"
import { rename, writeFile } from "node:fs/promises"
import * as Net from "node:net"
import { join } from "node:path"
import * as Tls from "node:tls"
import { request } from "undici"
import { type LogEvent, type SleeveDaemon, startSleeve } from "../support/Prometheus.ts"
import { main, run, sleeve as runSleeve } from "../support/Sleeve.ts"
import { exchange as exchangeAs } from "../support/TlsClient.ts"

let pki: TestPki.TestPki
let root: TestPki.Identity
let alice: TestPki.Identity
let bob: TestPki.Identity
let echo: Net.Server
let echoPort = 0
let daemon: SleeveDaemon | undefined
/** A Node (V8) option given to the primary on its command line. */
const nodeOption = "--max-semi-space-size=2"
/** A process's command line, from /proc. */
const cmdline = (pid: number) => readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").slice(0, -1)

interface WorkerStatus {
  readonly worker: number
  readonly pid: number
  readonly ready: boolean
  readonly restarts: number
  readonly listeners: ReadonlyArray<{ name: string; activeConnections: number; totalConnections: number }> | undefined
}
interface Status {
  readonly ready: boolean
  readonly tls: ReadonlyArray<{
    readonly crl: { readonly lists: ReadonlyArray<{ readonly revoked: number; readonly nextUpdate: string }> }
  }>
  readonly listeners: ReadonlyArray<{ name: string; totalConnections: number; activeConnections: number }>
  readonly workers: ReadonlyArray<WorkerStatus>
  readonly lastReload: { result: string; problems: ReadonlyArray<string> }
}

const config = (options: { readonly peers: ReadonlyArray<string>; readonly extraListener?: string }) => `
admin: { listen: "127.0.0.1:0" }
drainTimeout: 10s
workers: 2
tls:
  Server:
    type: server
    certificateFile: server.crt
    privateKeyFile: server.key
    caFile: trust.pem
    crlFile: crl.pem
    verifyPeer: require
    authorizedPeers: ${JSON.stringify(options.peers)}
listeners:
  - { name: in, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${echoPort}", tls: Server }
${options.extraListener ?? ""}`

const get = async (path: string) => {
  const res = await request(`${daemon!.admin}${path}`, { headersTimeout: 10_000, bodyTimeout: 10_000 })
  return { status: res.statusCode, body: await res.body.text() }
}
const status = async (): Promise<Status> => JSON.parse((await get("/status")).body) as Status
const scrape = async () => Exposition.parse((await get("/metrics")).body)
const totals = (s: Status) => s.workers.map((w) => w.listeners?.find((l) => l.name === "in")?.totalConnections ?? -1)

const port = () => daemon!.listeners.in!.port
const exchange = (who: TestPki.Identity) => exchangeAs(port(), root.certPem, who)
/** `n` connections one after the other (the workers accept from one shared socket, whichever is free first). */
const exchanges = async (who: TestPki.Identity, n: number) => {
  const out = []
  for (let i = 0; i < n; i++) out.push(await exchange(who))
  return out
}
const accepted = { secured: true, echoed: "ping\n", error: undefined }

/** Replaces a file by renaming a fully written copy over it (what a Secret update does). */
const replaceFile = async (name: string, text: string) => {
  const tmp = join(pki.dir, `${name}.next`)
  await writeFile(tmp, text)
  await rename(tmp, join(pki.dir, name))
}
const replaceConfig = (text: string) => replaceFile("sleeve.yaml", text)

const hs = (result: string) => `sleeve_tls_handshakes_total{listener="in",role="server",result="${result}"}`
const counters = ["sleeve_tls_handshakes_total", "sleeve_tls_dn_rejections_total", "sleeve_connections_total"]

/** Waits until the counters moved by `expected` since `before`, then checks nothing more came in. */
const expectMoved = async (
  before: ReadonlyMap<string, number>,
  expected: Record<string, number>,
  names: ReadonlyArray<string> = counters
) => {
  const sorted = (o: Record<string, number>) =>
    JSON.stringify(Object.fromEntries(Object.entries(o).sort(([a], [b]) => a.localeCompare(b))))
  const last = await settle(
    async () => Exposition.diff(before, await scrape(), names),
    (moved) => sorted(moved) === sorted(expected),
    { timeoutMs: 15_000, everyMs: 200 }
  )
  expect(last).toEqual(expected)
  await sleep(300)
  expect(Exposition.diff(before, await scrape(), names)).toEqual(expected)
}

const reloadEvent = (from: number) =>
  waitUntil(
    "a reload result",
    () => daemon!.events().find((e, i) => i >= from && (e.event === "reloaded" || e.event === "reload_failed")),
    { timeoutMs: 30_000 }
  )

/**
 * Waits until no reload has been logged for 1.5 s: the file watcher (1 s poll) may reload the
 * same edit once more after the SIGHUP did.
 */
const settleReloads = () =>
  waitUntil(
    "reloads to settle",
    () => {
      const last = daemon!
        .events()
        .filter((e) => e.event === "reloaded" || e.event === "reload_failed")
        .at(-1)
      return last === undefined || Date.now() - Date.parse(last.time) > 1500 ? true : undefined
    },
    { timeoutMs: 30_000, everyMs: 100 }
  )

beforeAll(async () => {
  pki = await TestPki.make()
  root = await pki.ca({ name: "root", subject: [{ CN: "Workers Test Root" }] })
  await pki.leaf(root, { name: "server", subject: "CN=sleeve-server" })
  alice = await pki.leaf(root, { name: "alice", subject: "CN=alice" })
  bob = await pki.leaf(root, { name: "bob", subject: "CN=bob" })
  await pki.write("trust.pem", root.certPem)
  await replaceFile("crl.pem", (await pki.crl(root, { name: "none-revoked" })).pem)
  echo = Net.createServer({ allowHalfOpen: true }, (s) => {
    s.on("error", () => {})
    s.pipe(s)
  })
  echoPort = await listen(echo)
  await pki.write("sleeve.yaml", config({ peers: ["CN=alice"] }))
  // Three processes start on a loaded machine: be generous. The Node option stands for the V8
  // flags a launcher (shebang, ExecStart) puts before the script: the workers must get them too.
  daemon = await startSleeve("sleeve.yaml", { cwd: pki.dir, timeoutMs: 90_000, nodeArgs: [nodeOption] })
}, 120_000)

afterAll(async () => {
  await daemon?.stop("SIGKILL")
  await new Promise((r) => echo?.close(r))
  await pki?.cleanup()
})

describe("sleeve run with workers: 2", { timeout: 90_000 }, () => {
  it("serves connections from both worker processes, each with its own pid", async () => {
    const before = await status()
    expect(before.workers.map((w) => w.worker)).toEqual([1, 2])
    const pids = before.workers.map((w) => w.pid)
    expect(new Set(pids).size).toBe(2)
    expect(pids).not.toContain(daemon!.child.pid)
    for (const pid of pids) expect(existsSync(`/proc/${pid}`)).toBe(true)
    // Each worker runs the primary's artefact with the primary's Node options and arguments
    // (cluster.fork's defaults: process.execArgv, process.argv[1], process.argv.slice(2)).
    const primary = cmdline(daemon!.child.pid!)
    expect(primary.slice(1, 3)).toEqual([nodeOption, main])
    // (argv[0] aside: the primary was started through node_modules/.bin/node, a symlink, and
    // forks with process.execPath, the file it points to.)
    for (const pid of pids) expect(cmdline(pid).slice(1)).toEqual(primary.slice(1))

    expect(await exchanges(alice, 20)).toEqual(Array(20).fill(accepted))
    const after = await status()
    const moved = totals(after).map((t, i) => t - totals(before)[i]!)
    // The kernel wakes both workers for each connection and one accepts it: each served some
    // (with a fair race, all twenty going to one worker has odds of 2 in a million), and together
    // exactly the twenty.
    for (const m of moved) expect(m).toBeGreaterThan(0)
    expect(moved.reduce((a, b) => a + b, 0)).toBe(20)
    expect(after.listeners.find((l) => l.name === "in")?.totalConnections).toBe(
      totals(after).reduce((a, b) => a + b, 0)
    )
    // Each worker logged its own listener; connection lines say which worker served them.
    const listening = daemon!.events().filter((e) => e.event === "listening")
    expect(listening.map((e) => e.worker).sort()).toEqual([1, 2])
    expect(new Set(listening.map((e) => e.address))).toEqual(new Set([`127.0.0.1:${port()}`]))
  })

  it("/metrics counts every handshake exactly once, whichever worker made it", async () => {
    const before = await scrape()
    expect(before.get("sleeve_workers_active")).toBe(2)
    expect(await exchanges(alice, 6)).toEqual(Array(6).fill(accepted))
    const rejected = await exchanges(bob, 4)
    for (const r of rejected) expect(r.echoed).toBe("")
    await expectMoved(before, {
      [hs("ok")]: 6,
      [hs("rejected")]: 4,
      'sleeve_tls_dn_rejections_total{listener="in",role="server"}': 4,
      'sleeve_connections_total{listener="in"}': 10
    })
    // The primary's own series are counted once, not once per process.
    const after = await scrape()
    expect(after.get("sleeve_ready")).toBe(1)
    expect(after.get('sleeve_config_reloads_total{result="ok"}')).toBe(0)
    // The aggregated exposition is as clean as one process's: Prometheus's linter has nothing to say.
    const lint = await run("promtool", ["check", "metrics"], { input: (await get("/metrics")).body, timeoutMs: 30_000 })
    expect({ code: lint.code, printed: lint.stdout + lint.stderr }).toEqual({ code: 0, printed: "" })
  })

  it("SIGHUP reaches every worker: a changed authorizedPeers decides new connections on both", async () => {
    const before = await status()
    const from = daemon!.events().length
    await replaceConfig(config({ peers: ["CN=bob"] }))
    daemon!.child.kill("SIGHUP")
    const event = await reloadEvent(from)
    expect(event.event, JSON.stringify(event)).toBe("reloaded")
    await settleReloads()
    expect(await exchanges(bob, 12)).toEqual(Array(12).fill(accepted))
    for (const r of await exchanges(alice, 12)) expect(r.echoed).toBe("")
    const after = await status()
    // Both workers took part, so both enforce the new list.
    for (const [i, t] of totals(after).entries()) expect(t - totals(before)[i]!).toBeGreaterThan(0)
    expect(after.workers.map((w) => w.pid)).toEqual(before.workers.map((w) => w.pid))
    expect(after.lastReload.result).toBe("ok")
  })

  it("a bad reload changes nothing anywhere: a configuration error, then a listener that cannot bind", async () => {
    const before = await scrape()
    const pids = (await status()).workers.map((w) => w.pid)

    // 1. An invalid DN: rejected by the primary, no worker sees it.
    let from = daemon!.events().length
    await replaceConfig(config({ peers: ["CN=alice", "not a distinguished name"] }))
    daemon!.child.kill("SIGHUP")
    const invalid = await reloadEvent(from)
    expect(invalid.event).toBe("reload_failed")
    expect(JSON.stringify(invalid.problems)).toContain("authorizedPeers[1]")
    await settleReloads()

    // 2. A valid file (alice again) whose new listener's address is taken: a worker that bound it
    // undoes it, so none serves the new file.
    const taken = Net.createServer()
    const takenPort = await listen(taken)
    try {
      from = daemon!.events().length
      await replaceConfig(
        config({
          peers: ["CN=alice"],
          extraListener: `  - { name: extra, mode: terminate, listen: "127.0.0.1:${takenPort}", target: "127.0.0.1:${echoPort}", tls: Server }\n`
        })
      )
      daemon!.child.kill("SIGHUP")
      const unbound = await reloadEvent(from)
      expect(unbound.event, JSON.stringify(unbound)).toBe("reload_failed")
      expect(JSON.stringify(unbound.problems)).toContain("EADDRINUSE")
      await settleReloads()

      // Still the configuration in force before: bob in, alice out, on both workers, same processes.
      const s0 = await status()
      expect(await exchanges(bob, 12)).toEqual(Array(12).fill(accepted))
      for (const r of await exchanges(alice, 12)) expect(r.echoed).toBe("")
      const s1 = await status()
      for (const [i, t] of totals(s1).entries()) expect(t - totals(s0)[i]!).toBeGreaterThan(0)
      expect(s1.listeners.map((l) => l.name)).toEqual(["in"])
      expect(s1.workers.map((w) => w.pid)).toEqual(pids)
      expect(s1.lastReload.result).toBe("failed")
      const moved = Exposition.diff(before, await scrape(), ["sleeve_config_reloads_total"])
      expect(Object.keys(moved)).toEqual(['sleeve_config_reloads_total{result="failed"}'])
      expect(moved['sleeve_config_reloads_total{result="failed"}']).toBeGreaterThanOrEqual(2)

      // Put the file in force back, while the address is still taken (the watcher would
      // otherwise apply the edit once it is free).
      from = daemon!.events().length
      await replaceConfig(config({ peers: ["CN=bob"] }))
      daemon!.child.kill("SIGHUP")
      await daemon!.waitForEvent("reloaded", () => true, { after: from, timeoutMs: 30_000 })
      await settleReloads()
    } finally {
      await new Promise((r) => taken.close(r))
    }
  })

  it("a changed CRL is in force on every worker; a forged one is refused and the CRL in force stays everywhere", async () => {
    // In force: authorizedPeers [bob], a CRL that revokes nobody.
    const failures = ["sleeve_tls_handshake_failures_total"]
    const revoked = 'sleeve_tls_handshake_failures_total{listener="in",role="server",reason="revoked"}'
    let before = await scrape()
    let s0 = await status()
    let from = daemon!.events().length
    // The CA revokes bob: the file watcher reloads (the primary reads the CRL, the workers get its bytes).
    await replaceFile("crl.pem", (await pki.crl(root, { name: "revokes-bob", revoked: [bob] })).pem)
    const reloaded = await reloadEvent(from)
    expect(reloaded.event, JSON.stringify(reloaded)).toBe("reloaded")
    expect(String(reloaded.trigger)).toContain("crl.pem")
    await settleReloads()
    for (const r of await exchanges(bob, 12)) expect(r.echoed).toBe("")
    let s1 = await status()
    // Both workers served some of the twelve, and refused every one as revoked.
    for (const [i, t] of totals(s1).entries()) expect(t - totals(s0)[i]!).toBeGreaterThan(0)
    await expectMoved(before, { [revoked]: 12 }, failures)
    expect(s1.tls[0]!.crl.lists[0]!.revoked).toBe(1)
    // The primary's CRL series, once (not summed over the processes).
    const nextUpdate = Date.parse(s1.tls[0]!.crl.lists[0]!.nextUpdate)
    expect((await scrape()).get('sleeve_tls_crl_next_update_timestamp_seconds{tls_config="Server"}')).toBe(
      Math.floor(nextUpdate / 1000)
    )

    // A forged CRL (same issuer name, another key) that would unrevoke bob: the primary refuses
    // it as a whole, so no worker changes.
    const impostorPki = await TestPki.make()
    try {
      const impostor = await impostorPki.ca({ name: "impostor", subject: [{ CN: "Workers Test Root" }] })
      from = daemon!.events().length
      await replaceFile("crl.pem", (await impostorPki.crl(impostor, { name: "forged" })).pem)
      const failed = await reloadEvent(from)
      expect(failed.event, JSON.stringify(failed)).toBe("reload_failed")
      expect(JSON.stringify(failed.problems)).toContain("its signature does not verify")
      await settleReloads()
    } finally {
      await impostorPki.cleanup()
    }
    before = await scrape()
    s0 = await status()
    for (const r of await exchanges(bob, 12)) expect(r.echoed).toBe("")
    s1 = await status()
    for (const [i, t] of totals(s1).entries()) expect(t - totals(s0)[i]!).toBeGreaterThan(0)
    await expectMoved(before, { [revoked]: 12 }, failures)
    expect(s1.lastReload.result).toBe("failed")

    // A CRL that revokes nobody again: bob is served by both workers.
    from = daemon!.events().length
    await replaceFile("crl.pem", (await pki.crl(root, { name: "none-revoked-again" })).pem)
    expect((await reloadEvent(from)).event).toBe("reloaded")
    await settleReloads()
    s0 = await status()
    expect(await exchanges(bob, 12)).toEqual(Array(12).fill(accepted))
    s1 = await status()
    for (const [i, t] of totals(s1).entries()) expect(t - totals(s0)[i]!).toBeGreaterThan(0)
    expect(s1.tls[0]!.crl.lists[0]!.revoked).toBe(0)
  })

  it("a killed worker is replaced, with a new pid, and serves again", async () => {
    const before = await status()
    const victim = before.workers.find((w) => w.worker === 1)!
    const from = daemon!.events().length
    process.kill(victim.pid, "SIGKILL")
    const exited = await daemon!.waitForEvent("worker_exited", (e) => e.worker === 1, {
      after: from,
      timeoutMs: 20_000
    })
    expect(exited.signal).toBe("SIGKILL")
    await daemon!.waitForEvent("worker_restarted", (e) => e.worker === 1, { after: from, timeoutMs: 60_000 })
    const after = await status()
    const replaced = after.workers.find((w) => w.worker === 1)!
    expect(replaced.pid).not.toBe(victim.pid)
    expect(replaced.ready).toBe(true)
    expect(replaced.restarts).toBe(1)
    expect(existsSync(`/proc/${victim.pid}`)).toBe(false)
    // The replacement runs the configuration in force (bob), and takes its share of connections.
    expect(await exchanges(bob, 12)).toEqual(Array(12).fill(accepted))
    const served = (await status()).workers.find((w) => w.worker === 1)!.listeners![0]!.totalConnections
    expect(served).toBeGreaterThan(0)
    const metrics = await scrape()
    expect(metrics.get("sleeve_worker_restarts_total")).toBe(1)
    expect(metrics.get("sleeve_workers_active")).toBe(2)
  })

  it("SIGTERM drains every worker: a live connection finishes, then the process exits 0", async () => {
    const pids = (await status()).workers.map((w) => w.pid)
    const live = await new Promise<Tls.TLSSocket>((resolve, reject) => {
      const s = Tls.connect({ host: "127.0.0.1", port: port(), ca: root.certPem, cert: bob.certPem, key: bob.keyPem })
      s.setEncoding("utf8")
      s.once("secureConnect", () => resolve(s))
      s.once("error", reject)
    })
    let received = ""
    live.on("data", (d: string) => {
      received += d
    })
    live.write("before\n")
    await waitUntil("the first echo", () => (received === "before\n" ? true : undefined))
    const from = daemon!.events().length
    daemon!.child.kill("SIGTERM")
    await daemon!.waitForEvent("draining", (e) => e.worker === undefined, { after: from })
    await waitUntil(
      "both workers draining",
      () => {
        const workers = daemon!
          .events()
          .filter((e: LogEvent, i) => i >= from && e.event === "draining" && e.worker !== undefined)
        return workers.length === 2 ? true : undefined
      },
      { timeoutMs: 15_000 }
    )
    const ready = await get("/readyz")
    expect(ready.status).toBe(503)
    // The live connection still works during the drain.
    live.write("during\n")
    await waitUntil("the echo during the drain", () => (received === "before\nduring\n" ? true : undefined))
    live.end()
    const exit = await daemon!.exited
    expect(exit, daemon!.output()).toEqual({ code: 0, signal: null })
    const stopped = daemon!.events().filter((e, i) => i >= from && e.event === "stopped")
    expect(stopped.map((e) => e.worker ?? 0).sort()).toEqual([0, 1, 2])
    for (const pid of pids) expect(existsSync(`/proc/${pid}`)).toBe(false)
  })
})

describe("sleeve run with workers: 2 that cannot start", { timeout: 90_000 }, () => {
  it("an invalid configuration is reported once and no worker starts", async () => {
    await pki.write("broken.yaml", config({ peers: ["CN=alice"] }).replace("server.key", "missing.key"))
    const r = await runSleeve(["run", "--config", join(pki.dir, "broken.yaml")], { cwd: pki.dir, timeoutMs: 60_000 })
    expect(r.code).toBe(1)
    expect(r.stdout).not.toContain('"listening"')
    expect(r.stderr.match(/missing\.key/g)?.length, r.stderr).toBe(1)
  })

  it("an address in use is reported once; every worker is stopped", async () => {
    const taken = Net.createServer()
    const takenPort = await listen(taken)
    try {
      await pki.write(
        "taken.yaml",
        config({ peers: ["CN=alice"] }).replace(
          'listen: "127.0.0.1:0", target',
          `listen: "127.0.0.1:${takenPort}", target`
        )
      )
      const r = await runSleeve(["run", "--config", join(pki.dir, "taken.yaml")], { cwd: pki.dir, timeoutMs: 60_000 })
      expect(r.code, r.stderr).toBe(1)
      expect(r.stderr.match(/EADDRINUSE/g)?.length, r.stderr).toBe(1)
      expect(r.stdout).not.toContain('"ready"')
    } finally {
      await new Promise((res) => taken.close(res))
    }
  })
})
