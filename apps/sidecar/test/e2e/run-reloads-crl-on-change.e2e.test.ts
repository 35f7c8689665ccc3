/**
 * Revocation in a real `sleeve run` process (issue 13 §2), seen from outside:
 *
 * - the CRL file is watched like every other file: a new CRL that revokes a client is in force
 *   after the reload (the existing all-or-nothing reload path), and that client is refused;
 * - a CRL that does not verify against the CA (forged) or does not parse is refused as a whole:
 *   `reload_failed` names it, the CRL in force before stays in force;
 * - `sleeve_tls_crl_next_update_timestamp_seconds{tls_config}` and `/status` show the CRL;
 * - when a CRL reaches its nextUpdate the configuration is activated again
 *   (`trigger: crl_next_update`): `/status` marks it stale and lists the warning, and with
 *   `crlStale: warn` good peers are still served while revoked ones are refused.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from "@effect/vitest"
import * as Exposition from "@sleeve/testing/Exposition"
import { listen } from "@sleeve/testing/Net"
import * as TestPki from "@sleeve/testing/TestPki"
import { renameSync, writeFileSync } from "node:fs"
import * as Net from "node:net"
import { join } from "node:path"
import { request } from "undici"
import { type SleeveDaemon, startSleeve } from "../support/Prometheus.ts"
import { exchange } from "../support/TlsClient.ts"

vi.setConfig({ testTimeout: 90_000, hookTimeout: 60_000 })

let pki: TestPki.TestPki
let root: TestPki.Identity
let alice: TestPki.Identity
let bob: TestPki.Identity
let echo: Net.Server
let echoPort = 0
const daemons: Array<SleeveDaemon> = []

const config = (crlFile: string, extra = "") => `
admin: { listen: "127.0.0.1:0" }
tls:
  front:
    type: server
    certificateFile: server.crt
    privateKeyFile: server.key
    caFile: root.crt
    verifyPeer: require
    crlFile: ${crlFile}
${extra}listeners:
  - { name: in, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${echoPort}", tls: front }
`

/** Replaces a file by renaming a fully written copy over it (what a Secret update does). */
const replace = (name: string, content: string) => {
  writeFileSync(join(pki.dir, `${name}.next`), content)
  renameSync(join(pki.dir, `${name}.next`), join(pki.dir, name))
}

const get = async (d: SleeveDaemon, path: string): Promise<string> => {
  const res = await request(`${d.admin}${path}`, { headersTimeout: 5000, bodyTimeout: 5000 })
  return res.body.text()
}

interface CrlStatus {
  readonly crlStale: string
  readonly appliedBy: string
  readonly lists: ReadonlyArray<{
    readonly issuer: string
    readonly nextUpdate: string
    readonly stale: boolean
    readonly revoked: number
  }>
}
const status = async (d: SleeveDaemon) =>
  JSON.parse(await get(d, "/status")) as {
    readonly tls: ReadonlyArray<{ readonly name: string; readonly crl: CrlStatus }>
    readonly warnings: ReadonlyArray<string>
    readonly lastReload: { readonly result: string; readonly problems: ReadonlyArray<string> }
  }

const served = async (d: SleeveDaemon, who: TestPki.Identity) =>
  (await exchange(d.listeners.in!.port, root.certPem, who, `hello from ${who.name}\n`)).echoed ===
  `hello from ${who.name}\n`

beforeAll(async () => {
  pki = await TestPki.make()
  root = await pki.ca({ name: "root", subject: [{ CN: "CRL Root" }, { O: "Sleeve Test" }] })
  await pki.leaf(root, { name: "server" })
  alice = await pki.leaf(root, { name: "alice" })
  bob = await pki.leaf(root, { name: "bob" })
  echo = Net.createServer((s) => s.pipe(s))
  echoPort = await listen(echo)
}, 30_000)

afterAll(async () => {
  for (const d of daemons) await d.stop()
  echo?.close()
  await pki.cleanup()
})

describe("sleeve run with a crlFile", () => {
  it("reloads the CRL when the file changes, and keeps the old one when the new one is forged or broken", async () => {
    const first = await pki.crl(root, { name: "first" })
    replace("current.crl.pem", first.pem)
    replace("sleeve.yaml", config("current.crl.pem"))
    const d = await startSleeve("sleeve.yaml", { cwd: pki.dir })
    daemons.push(d)
    expect(await served(d, alice)).toBe(true)
    expect(await served(d, bob)).toBe(true)
    const metrics = Exposition.parse(await get(d, "/metrics"))
    expect(
      metrics.get(Exposition.seriesKey("sleeve_tls_crl_next_update_timestamp_seconds", { tls_config: "front" }))
    ).toBe(Math.floor(Date.parse((await status(d)).tls[0]!.crl.lists[0]!.nextUpdate) / 1000))
    expect((await status(d)).tls[0]!.crl).toMatchObject({
      crlStale: "reject",
      appliedBy: "openssl",
      lists: [{ issuer: "CN=CRL Root,O=Sleeve Test", stale: false, revoked: 0 }]
    })

    // The CA revokes bob: the file changes, the watcher reloads, bob is refused from then on.
    let from = d.events().length
    replace("current.crl.pem", (await pki.crl(root, { name: "revokes-bob", revoked: [bob] })).pem)
    const reloaded = await d.waitForEvent("reloaded", undefined, { after: from, timeoutMs: 15_000 })
    expect(String(reloaded.trigger)).toContain("current.crl.pem")
    expect(await served(d, bob)).toBe(false)
    expect(await served(d, alice)).toBe(true)
    const rejected = await d.waitForEvent("peer_rejected", (e) => e.reason === "revoked", { after: from })
    expect(rejected.revokedSerial).toBe(bob.x509.serialNumber.toUpperCase())
    expect(rejected.revokedIssuer).toBe("CN=CRL Root,O=Sleeve Test")
    // As prom-client writes it (label order listener, role, reason).
    expect(
      Exposition.parse(await get(d, "/metrics")).get(
        'sleeve_tls_handshake_failures_total{listener="in",role="server",reason="revoked"}'
      )
    ).toBe(1)

    // A forged CRL (same issuer name, another key) that would unrevoke bob: refused as a whole.
    const impostorPki = await TestPki.make()
    try {
      const impostor = await impostorPki.ca({ name: "impostor", subject: [{ CN: "CRL Root" }, { O: "Sleeve Test" }] })
      from = d.events().length
      replace("current.crl.pem", (await impostorPki.crl(impostor, { name: "forged" })).pem)
      const failed = await d.waitForEvent("reload_failed", undefined, { after: from, timeoutMs: 15_000 })
      expect(JSON.stringify(failed.problems)).toContain("its signature does not verify")
    } finally {
      await impostorPki.cleanup()
    }
    expect(await served(d, bob)).toBe(false)
    expect(await served(d, alice)).toBe(true)
    // Half a file (a copy cut short): refused too.
    from = d.events().length
    replace("current.crl.pem", first.pem.slice(0, 120))
    const broken = await d.waitForEvent("reload_failed", undefined, { after: from, timeoutMs: 15_000 })
    expect(JSON.stringify(broken.problems)).toContain("crlFile")
    const s = await status(d)
    expect(s.lastReload.result).toBe("failed")
    expect(s.tls[0]!.crl.lists[0]!.revoked).toBe(1)
    expect(await served(d, bob)).toBe(false)
  })

  it("re-activates when a CRL reaches its nextUpdate: reported stale, and with crlStale: warn still serving", async () => {
    const nextUpdate = new Date(Date.now() + 4000)
    const soon = await pki.crl(root, { name: "soon-stale", revoked: [bob], nextUpdate })
    replace("soon.yaml", config(soon.file, "    crlStale: warn\n"))
    const d = await startSleeve("soon.yaml", { cwd: pki.dir })
    daemons.push(d)
    expect((await status(d)).tls[0]!.crl.lists[0]!.stale).toBe(false)
    const stale = await d.waitForEvent("reloaded", (e) => e.trigger === "crl_next_update", { timeoutMs: 20_000 })
    expect(JSON.stringify(stale.warnings)).toContain("is stale")
    const s = await status(d)
    expect(s.tls[0]!.crl).toMatchObject({ crlStale: "warn", appliedBy: "sleeve", lists: [{ stale: true }] })
    expect(s.warnings.join("\n")).toMatch(/tls\.front\.crlFile: warning: CRL #1 .* is stale/)
    expect(await served(d, alice)).toBe(true)
    expect(await served(d, bob)).toBe(false)
    const rejected = await d.waitForEvent("peer_rejected", (e) => e.reason === "revoked")
    expect(rejected.revokedSerial).toBe(bob.x509.serialNumber.toUpperCase())
  })
})
