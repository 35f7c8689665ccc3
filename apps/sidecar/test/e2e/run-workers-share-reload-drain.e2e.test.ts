/**
 * `sleeve run` with `workers: 2`, seen from outside: one primary and two worker processes.
 *
 * - connections are served by both workers (`/status` lists each with its pid and counts), and
 *   the listening and connection log lines carry the worker; the workers run the same artefact
 *   with the same Node options as the primary (a launcher's V8 flags reach every worker);
 * - `/metrics` is one exposition for the whole sidecar: handshake counters move by exactly the
 *   handshakes made, whichever worker served them, and `promtool check metrics` passes it;
 * - a reload (by the file watcher, then by SIGHUP) reaches every worker: a changed
 *   `authorizedPeers` decides every new connection, on both workers;
 * - a bad reload changes nothing anywhere: a configuration error is rejected by the primary
 *   before any worker sees it, and a new listener that cannot bind is undone everywhere;
 * - a changed CRL file is in force on every worker after its reload, and a forged one is refused
 *   by the primary, so every worker keeps the CRL in force;
 * - a worker that is killed is replaced (counted in `sleeve_worker_restarts_total`);
 * - SIGTERM drains every worker (a live connection still finishes) and the process exits 0;
 * - with an invalid configuration, or an address in use, nothing starts and the error is
 *   printed once.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "@effect/vitest"
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
/**
 * `/status` once both workers are ready and have answered with their counts (a worker that does
 * not answer within the primary's collect timeout is shown without them; on a loaded machine, or
 * while a worker is being replaced, ask again rather than compare a missing count).
 */
const fullStatus = () =>
  waitUntil(
    "both workers ready, with their counts",
    async () => {
      const s = await status()
      return s.workers.length === 2 && s.workers.every((w) => w.ready && w.listeners !== undefined) ? s : undefined
    },
    { timeoutMs: 60_000, everyMs: 100 }
  )
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
/**
 * Connections one after the other, at least `n`, and then more until each worker has served at
 * least one of them (at most 200): what every connection got is then what both workers do.
 * Which worker accepts is the kernel's choice (both wait on the one shared socket): typically
 * they alternate, but on a loaded machine one that is not scheduled can miss a dozen in a row,
 * so a fixed count cannot promise that both took part.
 * Returns what each connection got and how many each worker served (`moved`).
 */
const exchangesOnBoth = async (who: TestPki.Identity, n: number) => {
  const before = totals(await fullStatus())
  const results = await exchanges(who, n)
  for (;;) {
    const moved = totals(await fullStatus()).map((t, i) => t - before[i]!)
    if (moved.every((m) => m > 0) || results.length >= 200) return { results, moved }
    results.push(await exchange(who))
  }
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

/** The reload results (`reloaded`, `reload_failed`) logged at or after index `from` of the events. */
const reloadResults = (from: number) =>
  daemon!.events().filter((e, i) => i >= from && (e.event === "reloaded" || e.event === "reload_failed"))
/** The trigger of a reload by the file watcher, for a file of the test directory. */
const watcher = (name: string) => `file:${join(pki.dir, name)}`

/**
 * Waits for the result of each of `triggers` logged at or after index `from`, and returns them
 * in that order (with a deadline, and what was logged instead if it passes).
 */
const reloadsOf = (from: number, triggers: ReadonlyArray<string>) =>
  waitUntil(
    `the reload results of ${triggers.join(" and ")}`,
    () => {
      const found = triggers.map((t) => reloadResults(from).find((e) => e.trigger === t))
      return found.every((e) => e !== undefined) ? (found as Array<LogEvent>) : undefined
    },
    { timeoutMs: 30_000, everyMs: 50, detail: () => JSON.stringify(reloadResults(from)) }
  )

/**
 * Replaces the configuration, waits for the file watcher's reload of it, then sends SIGHUP and
 * waits for that reload too; returns the SIGHUP's result (the watcher's is the same).
 *
 * One trigger at a time, so that each step ends with exactly the reloads it caused and no late
 * result of one step is taken for the next one's. (A SIGHUP sent right after the edit would race
 * the watcher's 1 s poll: the daemon may fold the two into one reload, or run a second one up to
 * a poll later — on a loaded machine, seconds later, after any fixed wait for quiet.)
 */
const reloadConfig = async (text: string) => {
  let from = daemon!.events().length
  await replaceConfig(text)
  const [watched] = await reloadsOf(from, [watcher("sleeve.yaml")])
  from = daemon!.events().length
  daemon!.child.kill("SIGHUP")
  const [signalled] = await reloadsOf(from, ["SIGHUP"])
  expect({ event: signalled!.event, problems: signalled!.problems }, JSON.stringify(signalled)).toEqual({
    event: watched!.event,
    problems: watched!.problems
  })
  return signalled!
}

/** Replaces the CRL file (no signal: the file watcher reloads it) and returns the result of that reload. */
const reloadCrl = async (pem: string) => {
  const from = daemon!.events().length
  await replaceFile("crl.pem", pem)
  const [watched] = await reloadsOf(from, [watcher("crl.pem")])
  return watched!
}

/**
 * What the tests after the one running expect in force: a test that changes it sets `dirty`,
 * and sets it back once it has put this state back itself. A test that fails on the way leaves
 * `dirty` set, and `afterEach` restores these files, so the next tests start where they expect
 * (one failure does not fail every test after it).
 */
const inForce = { config: "", crl: "" }
let dirty = false

beforeAll(async () => {
  pki = await TestPki.make()
  root = await pki.ca({ name: "root", subject: [{ CN: "Workers Test Root" }] })
  await pki.leaf(root, { name: "server", subject: "CN=sleeve-server" })
  alice = await pki.leaf(root, { name: "alice", subject: "CN=alice" })
  bob = await pki.leaf(root, { name: "bob", subject: "CN=bob" })
  await pki.write("trust.pem", root.certPem)
  inForce.crl = (await pki.crl(root, { name: "none-revoked" })).pem
  await replaceFile("crl.pem", inForce.crl)
  echo = Net.createServer({ allowHalfOpen: true }, (s) => {
    s.on("error", () => {})
    s.pipe(s)
  })
  echoPort = await listen(echo)
  inForce.config = config({ peers: ["CN=alice"] })
  await pki.write("sleeve.yaml", inForce.config)
  // Three processes start on a loaded machine: be generous. The Node option stands for the V8
  // flags a launcher (shebang, ExecStart) puts before the script: the workers must get them too.
  daemon = await startSleeve("sleeve.yaml", { cwd: pki.dir, timeoutMs: 90_000, nodeArgs: [nodeOption] })
}, 120_000)

afterEach(async () => {
  if (!dirty || daemon === undefined || daemon.child.exitCode !== null || daemon.child.signalCode !== null) return
  dirty = false
  // One file at a time, each reloaded by the watcher. (A reload the failed test left pending may
  // take our trigger in; then its result, once nothing more comes for 5 s, stands for ours.)
  let last: LogEvent | undefined
  for (const [name, text] of [
    ["sleeve.yaml", inForce.config],
    ["crl.pem", inForce.crl]
  ] as const) {
    if (name === "crl.pem" && readFileSync(join(pki.dir, name), "utf8") === text) continue
    const from = daemon.events().length
    await replaceFile(name, text)
    last = await waitUntil(
      `the restored ${name} to be reloaded`,
      () => {
        const results = reloadResults(from)
        const newest = results.at(-1)
        if (results.some((e) => e.trigger === watcher(name))) return newest
        return newest !== undefined && Date.now() - Date.parse(newest.time) > 5_000 ? newest : undefined
      },
      { timeoutMs: 60_000, everyMs: 100, detail: () => JSON.stringify(reloadResults(from)) }
    )
  }
  expect(last?.event, JSON.stringify(last)).toBe("reloaded")
  await fullStatus()
}, 90_000)

afterAll(async () => {
  await daemon?.stop("SIGKILL")
  await new Promise((r) => echo?.close(r))
  await pki?.cleanup()
})

describe("sleeve run with workers: 2", { timeout: 90_000 }, () => {
  it("serves connections from both worker processes, each with its own pid", async () => {
    const before = await fullStatus()
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

    // Each worker served some, and together exactly the connections made.
    const { results, moved } = await exchangesOnBoth(alice, 20)
    expect(results).toEqual(Array(results.length).fill(accepted))
    for (const m of moved) expect(m).toBeGreaterThan(0)
    expect(moved.reduce((a, b) => a + b, 0)).toBe(results.length)
    const after = await fullStatus()
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

  it("a worker too busy to answer a scrape keeps its share: the summed counters never go down", async () => {
    const { moved } = await exchangesOnBoth(alice, 4)
    expect(moved.every((m) => m > 0)).toBe(true)
    const key = 'sleeve_connections_total{listener="in"}'
    const before = (await scrape()).get(key) ?? -1
    expect(before).toBeGreaterThan(0)
    // A stopped process answers nothing: the scrape waits its collection timeout for it.
    const stopped = (await fullStatus()).workers[0]!.pid!
    process.kill(stopped, "SIGSTOP")
    try {
      expect((await scrape()).get(key)).toBe(before)
    } finally {
      process.kill(stopped, "SIGCONT")
    }
    expect((await scrape()).get(key)).toBe(before)
  })

  it("a reload (file watcher, then SIGHUP) reaches every worker: a changed authorizedPeers decides new connections on both", async () => {
    const pids = (await fullStatus()).workers.map((w) => w.pid)
    // From here on the tests expect bob in, alice out.
    dirty = true
    inForce.config = config({ peers: ["CN=bob"] })
    const reloaded = await reloadConfig(inForce.config)
    expect(reloaded.event, JSON.stringify(reloaded)).toBe("reloaded")
    // Both workers took part, so both enforce the new list.
    const bobs = await exchangesOnBoth(bob, 12)
    expect(bobs.results).toEqual(Array(bobs.results.length).fill(accepted))
    for (const m of bobs.moved) expect(m).toBeGreaterThan(0)
    const alices = await exchangesOnBoth(alice, 12)
    for (const r of alices.results) expect(r.echoed).toBe("")
    for (const m of alices.moved) expect(m).toBeGreaterThan(0)
    const after = await fullStatus()
    expect(after.workers.map((w) => w.pid)).toEqual(pids)
    expect(after.lastReload.result).toBe("ok")
    dirty = false
  })

  it("a bad reload changes nothing anywhere: a configuration error, then a listener that cannot bind", async () => {
    const before = await scrape()
    const pids = (await fullStatus()).workers.map((w) => w.pid)
    dirty = true

    // 1. An invalid DN: rejected by the primary, no worker sees it.
    const invalid = await reloadConfig(config({ peers: ["CN=alice", "not a distinguished name"] }))
    expect(invalid.event, JSON.stringify(invalid)).toBe("reload_failed")
    expect(JSON.stringify(invalid.problems)).toContain("authorizedPeers[1]")

    // 2. A valid file (alice again) whose new listener's address is taken: a worker that bound it
    // undoes it, so none serves the new file.
    const taken = Net.createServer()
    const takenPort = await listen(taken)
    try {
      const unbound = await reloadConfig(
        config({
          peers: ["CN=alice"],
          extraListener: `  - { name: extra, mode: terminate, listen: "127.0.0.1:${takenPort}", target: "127.0.0.1:${echoPort}", tls: Server }\n`
        })
      )
      expect(unbound.event, JSON.stringify(unbound)).toBe("reload_failed")
      expect(JSON.stringify(unbound.problems)).toContain("EADDRINUSE")

      // Still the configuration in force before: bob in, alice out, on both workers, same processes.
      const bobs = await exchangesOnBoth(bob, 12)
      expect(bobs.results).toEqual(Array(bobs.results.length).fill(accepted))
      for (const m of bobs.moved) expect(m).toBeGreaterThan(0)
      const alices = await exchangesOnBoth(alice, 12)
      for (const r of alices.results) expect(r.echoed).toBe("")
      for (const m of alices.moved) expect(m).toBeGreaterThan(0)
      const s1 = await fullStatus()
      expect(s1.listeners.map((l) => l.name)).toEqual(["in"])
      expect(s1.workers.map((w) => w.pid)).toEqual(pids)
      expect(s1.lastReload.result).toBe("failed")
      // Each edit was reloaded twice (the signal and the watcher), and failed each time.
      const moved = Exposition.diff(before, await scrape(), ["sleeve_config_reloads_total"])
      expect(moved).toEqual({ 'sleeve_config_reloads_total{result="failed"}': 4 })

      // Put the file in force back, while the address is still taken (the watcher would
      // otherwise apply the edit once it is free).
      const restored = await reloadConfig(inForce.config)
      expect(restored.event, JSON.stringify(restored)).toBe("reloaded")
      dirty = false
    } finally {
      await new Promise((r) => taken.close(r))
    }
  })

  it("a changed CRL is in force on every worker; a forged one is refused and the CRL in force stays everywhere", async () => {
    // In force: authorizedPeers [bob], a CRL that revokes nobody.
    const failures = ["sleeve_tls_handshake_failures_total"]
    const revoked = 'sleeve_tls_handshake_failures_total{listener="in",role="server",reason="revoked"}'
    let before = await scrape()
    dirty = true
    // The CA revokes bob: the file watcher reloads (the primary reads the CRL, the workers get its bytes).
    const reloaded = await reloadCrl((await pki.crl(root, { name: "revokes-bob", revoked: [bob] })).pem)
    expect(reloaded.event, JSON.stringify(reloaded)).toBe("reloaded")
    // Both workers served some, and refused every one as revoked.
    let bobs = await exchangesOnBoth(bob, 12)
    for (const r of bobs.results) expect(r.echoed).toBe("")
    for (const m of bobs.moved) expect(m).toBeGreaterThan(0)
    await expectMoved(before, { [revoked]: bobs.results.length }, failures)
    const s1 = await fullStatus()
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
      const failed = await reloadCrl((await impostorPki.crl(impostor, { name: "forged" })).pem)
      expect(failed.event, JSON.stringify(failed)).toBe("reload_failed")
      expect(JSON.stringify(failed.problems)).toContain("its signature does not verify")
    } finally {
      await impostorPki.cleanup()
    }
    before = await scrape()
    bobs = await exchangesOnBoth(bob, 12)
    for (const r of bobs.results) expect(r.echoed).toBe("")
    for (const m of bobs.moved) expect(m).toBeGreaterThan(0)
    await expectMoved(before, { [revoked]: bobs.results.length }, failures)
    expect((await fullStatus()).lastReload.result).toBe("failed")

    // A CRL that revokes nobody again: bob is served by both workers.
    inForce.crl = (await pki.crl(root, { name: "none-revoked-again" })).pem
    const again = await reloadCrl(inForce.crl)
    expect(again.event, JSON.stringify(again)).toBe("reloaded")
    bobs = await exchangesOnBoth(bob, 12)
    expect(bobs.results).toEqual(Array(bobs.results.length).fill(accepted))
    for (const m of bobs.moved) expect(m).toBeGreaterThan(0)
    expect((await fullStatus()).tls[0]!.crl.lists[0]!.revoked).toBe(0)
    dirty = false
  })

  it("a killed worker is replaced, with a new pid, and serves again", async () => {
    const before = await fullStatus()
    const victim = before.workers.find((w) => w.worker === 1)!
    expect(victim.listeners?.find((l) => l.name === "in")?.totalConnections).toBeGreaterThan(0)
    // What the victim counted is in this scrape; it must stay in the sum once the victim is gone.
    const key = 'sleeve_connections_total{listener="in"}'
    const counted = (await scrape()).get(key) ?? -1
    const from = daemon!.events().length
    process.kill(victim.pid, "SIGKILL")
    const exited = await daemon!.waitForEvent("worker_exited", (e) => e.worker === 1, {
      after: from,
      timeoutMs: 20_000
    })
    expect(exited.signal).toBe("SIGKILL")
    await daemon!.waitForEvent("worker_restarted", (e) => e.worker === 1, { after: from, timeoutMs: 60_000 })
    const after = await fullStatus()
    const replaced = after.workers.find((w) => w.worker === 1)!
    expect(replaced.pid).not.toBe(victim.pid)
    expect(replaced.ready).toBe(true)
    expect(replaced.restarts).toBe(1)
    expect(existsSync(`/proc/${victim.pid}`)).toBe(false)
    // The replacement runs the configuration in force (bob), and takes its share of connections.
    const bobs = await exchangesOnBoth(bob, 12)
    expect(bobs.results).toEqual(Array(bobs.results.length).fill(accepted))
    for (const m of bobs.moved) expect(m).toBeGreaterThan(0)
    const metrics = await scrape()
    // The sum never went down: the victim's last-scraped counts, plus everything served since.
    expect(metrics.get(key)).toBe(counted + bobs.results.length)
    expect(metrics.get("sleeve_worker_restarts_total")).toBe(1)
    expect(metrics.get("sleeve_workers_active")).toBe(2)
  })
  it("SIGTERM drains every worker: a live connection finishes, then the process exits 0", async () => {
    const pids = (await fullStatus()).workers.map((w) => w.pid)
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
