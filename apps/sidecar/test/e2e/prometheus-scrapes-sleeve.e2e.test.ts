/**
 * A real Prometheus (Debian's `/usr/bin/prometheus`) scrapes a real `sleeve run` every second
 * and loads `infra/prometheus/sleeve.rules.yml`. Real handshakes go through Sleeve — three
 * accepted, two refused by DN authorization — and once Prometheus has scraped after them, its
 * own query API must give exactly those counts, the target must be up, every Sleeve alert rule
 * must be loaded and evaluate without error, and `SleeveDnRejectionsRising` must fire for the
 * listener. This is the metric-name contract checked end to end: exposition, scrape, PromQL.
 *
 * Without the Prometheus binary this suite fails, naming the package to install; it never skips.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { listen } from "@sleeve/testing/Net"
import * as TestPki from "@sleeve/testing/TestPki"
import { waitUntil } from "@sleeve/testing/Wait"
import * as Net from "node:net"
import { fileURLToPath } from "node:url"
import { type Prometheus, type SleeveDaemon, startPrometheus, startSleeve } from "../support/Prometheus.ts"
import { exchange } from "../support/TlsClient.ts"

const rulesFile = fileURLToPath(new URL("../../../../infra/prometheus/sleeve.rules.yml", import.meta.url))
const alertNames = [
  "SleeveCertificateExpiringSoon",
  "SleevePeerCertificateExpiringSoon",
  "SleeveDnRejectionsRising",
  "SleeveHandshakeFailureRatioHigh",
  "SleeveNotReady",
  "SleeveConfigReloadFailing",
  "SleeveCrlStale",
  "SleeveProxyProtocolRefusals",
  "SleeveResourceExhaustion"
]

let pki: TestPki.TestPki
let root: TestPki.Identity
let echo: Net.Server
let sleeve: SleeveDaemon | undefined
let prometheus: Prometheus | undefined

beforeAll(async () => {
  pki = await TestPki.make()
  root = await pki.ca({ name: "root" })
  await pki.leaf(root, { name: "server" })
  await pki.write("trust.pem", root.certPem)
  echo = Net.createServer((s) => {
    s.on("error", () => {})
    s.pipe(s)
  })
  const echoPort = await listen(echo)
  await pki.write(
    "sleeve.yaml",
    `
admin: { listen: "127.0.0.1:0" }
tls:
  Server:
    type: server
    certificateFile: server.crt
    privateKeyFile: server.key
    caFile: trust.pem
    verifyPeer: require
    authorizedPeers: ["CN=alice"]
listeners:
  - { name: in, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${echoPort}", tls: Server }
`
  )
  sleeve = await startSleeve("sleeve.yaml", { cwd: pki.dir })
  prometheus = await startPrometheus({ targets: [new URL(sleeve.admin).host], ruleFiles: [rulesFile] })
}, 40_000)

afterAll(async () => {
  await Promise.all([prometheus?.stop(), sleeve?.stop("SIGTERM", 10_000)])
  await new Promise((r) => echo?.close(r))
  await pki?.cleanup()
})

describe("Prometheus scrapes sleeve run", { timeout: 40_000 }, () => {
  it("counts exactly the handshakes driven through Sleeve, loads the alert rules, fires on DN rejections", async () => {
    const prom = prometheus!
    const target = async () =>
      ((await prom.api("targets")) as { activeTargets: ReadonlyArray<{ health: string; lastScrape: string }> })
        .activeTargets
    // A first scrape before any traffic: the zero series the rules compare against.
    await waitUntil(
      "a first successful scrape",
      async () => ((await target())[0]?.health === "up" ? true : undefined),
      {
        timeoutMs: 15_000,
        everyMs: 200
      }
    )

    const alice = await pki.leaf(root, { name: "alice" })
    const mallory = await pki.leaf(root, { name: "mallory" })
    const port = sleeve!.listeners.in!.port
    const results = []
    for (const who of [alice, mallory, alice, mallory, alice])
      results.push((await exchange(port, root.certPem, who)).echoed === "ping\n")
    expect(results).toEqual([true, false, true, false, true])
    // Sleeve has recorded all five (the last log line of each is `closed`)...
    await waitUntil("Sleeve to close the five connections", () =>
      sleeve!.events().filter((e) => e.event === "closed").length === 5 ? true : undefined
    )
    // ...and Prometheus has scraped since then.
    const doneAt = Date.now()
    await waitUntil(
      "a scrape after the handshakes",
      async () => {
        const t = (await target())[0]
        return t !== undefined && t.health === "up" && Date.parse(t.lastScrape) > doneAt ? true : undefined
      },
      { timeoutMs: 15_000, everyMs: 200 }
    )

    expect(await prom.query('sum(sleeve_tls_handshakes_total{result="ok"})')).toEqual([{ metric: {}, value: 3 }])
    expect(await prom.query("sleeve_tls_dn_rejections_total")).toEqual([
      {
        metric: {
          __name__: "sleeve_tls_dn_rejections_total",
          instance: new URL(sleeve!.admin).host,
          job: "sleeve",
          listener: "in",
          role: "server"
        },
        value: 2
      }
    ])
    expect(await prom.query('sum by (reason) (sleeve_tls_handshake_failures_total{reason="dn_rejected"})')).toEqual([
      { metric: { reason: "dn_rejected" }, value: 2 }
    ])
    expect(await prom.query('up{job="sleeve"}')).toEqual([
      { metric: { __name__: "up", instance: new URL(sleeve!.admin).host, job: "sleeve" }, value: 1 }
    ])

    // Every rule of the file is loaded and, once evaluated, healthy.
    const rules = await waitUntil(
      "every rule to be evaluated",
      async () => {
        const all = await prom.rules()
        return all.length === alertNames.length && all.every((r) => r.health !== "unknown") ? all : undefined
      },
      { timeoutMs: 15_000, everyMs: 200 }
    )
    expect(rules.map((r) => [r.group, r.name, r.type, r.health, r.lastError ?? ""])).toEqual(
      alertNames.map((name) => ["sleeve", name, "alerting", "ok", ""])
    )

    // The DN-rejection alert has no `for`: it fires on the next evaluation.
    const firing = await waitUntil(
      "SleeveDnRejectionsRising to fire",
      async () => {
        const { alerts } = (await prom.api("alerts")) as {
          alerts: ReadonlyArray<{ labels: Record<string, string>; state: string }>
        }
        const dn = alerts.filter((a) => a.labels.alertname === "SleeveDnRejectionsRising" && a.state === "firing")
        return dn.length > 0 ? dn : undefined
      },
      { timeoutMs: 15_000, everyMs: 200 }
    )
    expect(firing.map((a) => [a.labels.listener, a.labels.role, a.labels.severity])).toEqual([
      ["in", "server", "warning"]
    ])
  })
})
