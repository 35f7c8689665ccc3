/**
 * `promtool check metrics` (Debian's `prometheus` package), Prometheus's own linter for the text
 * exposition, against the `/metrics` of a real `sleeve run`: it must print nothing and exit 0,
 * first on a fresh sidecar (every series pre-created at zero, the default process and Node.js
 * metrics) and again after traffic has put samples into every family that takes them — the
 * handshake histogram for both roles, handshake results and failure reasons, bytes, a STARTTLS
 * upgrade, a peer certificate expiry, a reload. The linter is first shown a `_total` gauge (what
 * prom-client's default collectors used to export) so a promtool that checks nothing fails too.
 *
 * Without promtool this suite fails, naming the package to install; it never skips.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Exposition from "@sleeve/testing/Exposition"
import { listen } from "@sleeve/testing/Net"
import * as TestPki from "@sleeve/testing/TestPki"
import { waitUntil } from "@sleeve/testing/Wait"
import * as Net from "node:net"
import * as Tls from "node:tls"
import { request } from "undici"
import { type SleeveDaemon, startSleeve } from "../support/Prometheus.ts"
import { run } from "../support/Sleeve.ts"
import { exchange } from "../support/TlsClient.ts"

let pki: TestPki.TestPki
let root: TestPki.Identity
let alice: TestPki.Identity
let mallory: TestPki.Identity
let echo: Net.Server
let tlsEcho: Tls.Server
let sleeve: SleeveDaemon | undefined

/** `promtool check metrics` on `text` (stdin), with its exit code and everything it printed. */
const promtoolCheck = async (text: string) => {
  const r = await run("promtool", ["check", "metrics"], { input: text, timeoutMs: 30_000 }).catch((e: unknown) => {
    throw new Error(
      "promtool did not run: install Debian's `prometheus` package " +
        "(apt-get install -y --no-install-recommends prometheus); .ci/debian-deps does it",
      { cause: e }
    )
  })
  return { code: r.code, printed: r.stdout + r.stderr }
}

const metricsText = async () => {
  const res = await request(`${sleeve!.admin}/metrics`, { headersTimeout: 5000, bodyTimeout: 5000 })
  expect(res.statusCode).toBe(200)
  return res.body.text()
}

/** The metric families (`# TYPE` lines) of an exposition, name → type. */
const families = (text: string) => new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1]!, m[2]!]))

/** The plaintext/STARTTLS client of the `line` protocol: STARTTLS, the go-ahead, TLS, one echo. */
const lineUpgrade = (port: number): Promise<string> =>
  new Promise((resolve, reject) => {
    const raw = Net.connect({ host: "127.0.0.1", port })
    raw.on("error", reject)
    raw.once("connect", () => raw.write("STARTTLS\r\n"))
    let reply = ""
    const onData = (d: Buffer) => {
      reply += d.toString("latin1")
      if (!reply.includes("\n")) return
      raw.off("data", onData)
      if (reply !== "OK STARTTLS\r\n") return reject(new Error(`go-ahead: ${JSON.stringify(reply)}`))
      const tls = Tls.connect({ socket: raw, ca: root.certPem, servername: "localhost" })
      let echoed = ""
      tls.setEncoding("utf8")
      tls.on("error", reject)
      tls.once("secureConnect", () => tls.write("upgraded\n"))
      tls.on("data", (s: string) => {
        echoed += s
        if (echoed === "upgraded\n") tls.end()
      })
      tls.on("close", () => resolve(echoed))
    }
    raw.on("data", onData)
  })

beforeAll(async () => {
  pki = await TestPki.make()
  root = await pki.ca({ name: "root" })
  const server = await pki.leaf(root, { name: "server", subject: "CN=localhost" })
  alice = await pki.leaf(root, { name: "alice", subject: "CN=alice" })
  mallory = await pki.leaf(root, { name: "mallory", subject: "CN=mallory" })
  await pki.write("trust.pem", root.certPem)

  echo = Net.createServer({ allowHalfOpen: true }, (s) => {
    s.on("error", () => {})
    s.pipe(s)
  })
  const echoPort = await listen(echo)
  // A TLS echo server for the originate listener (Sleeve in the client role).
  tlsEcho = Tls.createServer({ cert: server.certPem, key: server.keyPem }, (s) => {
    s.on("error", () => {})
    s.pipe(s)
  })
  const tlsEchoPort = await listen(tlsEcho)

  await pki.write(
    "sleeve.yaml",
    `
admin: { listen: "127.0.0.1:0" }
drainTimeout: 2s
tls:
  Server:
    type: server
    certificateFile: server.crt
    privateKeyFile: server.key
    caFile: trust.pem
    verifyPeer: require
    authorizedPeers: ["CN=alice"]
  Front:
    type: server
    certificateFile: server.crt
    privateKeyFile: server.key
  Upstream:
    type: client
    caFile: trust.pem
listeners:
  - { name: in, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${echoPort}", tls: Server }
  - { name: out, mode: originate, listen: "127.0.0.1:0", target: "127.0.0.1:${tlsEchoPort}", tls: Upstream, serverName: localhost }
  - name: line-in
    mode: starttls
    protocol: line
    line: { command: "STARTTLS", reply: "OK STARTTLS" }
    listen: "127.0.0.1:0"
    target: "127.0.0.1:${echoPort}"
    tls: Front
`
  )
  sleeve = await startSleeve("sleeve.yaml", { cwd: pki.dir })
}, 30_000)

afterAll(async () => {
  const exit = await sleeve?.stop("SIGTERM", 10_000)
  await new Promise((r) => echo?.close(r))
  await new Promise((r) => tlsEcho?.close(r))
  await pki?.cleanup()
  if (exit !== undefined) expect(exit, sleeve?.stderr()).toEqual({ code: 0, signal: null })
})

describe("sleeve run: /metrics passes promtool check metrics", { timeout: 60_000 }, () => {
  it("promtool rejects a gauge named like a counter (the linter is live)", async () => {
    const bad =
      "# HELP nodejs_active_handles_total Total number of active handles.\n" +
      "# TYPE nodejs_active_handles_total gauge\nnodejs_active_handles_total 3\n"
    const r = await promtoolCheck(bad)
    expect(r.code).not.toBe(0)
    expect(r.printed).toContain('non-counter metrics should not have "_total" suffix')
  })

  it("a fresh sidecar: promtool prints nothing and exits 0; the default metrics are there", async () => {
    const text = await metricsText()
    expect(await promtoolCheck(text)).toEqual({ code: 0, printed: "" })
    const types = families(text)
    expect(types.get("process_cpu_seconds_total")).toBe("counter")
    expect(types.get("process_resident_memory_bytes")).toBe("gauge")
    expect(types.get("process_open_fds")).toBe("gauge")
    expect(types.get("nodejs_eventloop_lag_seconds")).toBe("gauge")
    expect(types.get("nodejs_heap_size_used_bytes")).toBe("gauge")
    expect(types.get("nodejs_gc_duration_seconds")).toBe("histogram")
    expect(types.get("nodejs_active_handles")).toBe("gauge")
    for (const dropped of [
      "nodejs_active_handles_total",
      "nodejs_active_requests_total",
      "nodejs_active_resources_total"
    ])
      expect(types.has(dropped), dropped).toBe(false)
  })

  it("after traffic in every family: still nothing printed, exit 0", async () => {
    const inPort = sleeve!.listeners.in!.port
    expect(await exchange(inPort, root.certPem, alice)).toMatchObject({ secured: true, echoed: "ping\n" })
    expect((await exchange(inPort, root.certPem, mallory)).echoed).toBe("")
    // A client that does not speak TLS: a handshake failure with a reason.
    await new Promise<void>((resolve) => {
      const raw = Net.connect({ host: "127.0.0.1", port: inPort }, () => raw.end("GET / HTTP/1.1\r\n\r\n"))
      raw.on("error", () => resolve())
      raw.on("close", () => resolve())
      raw.resume()
    })
    // Plaintext into the originate listener, TLS (Sleeve as the client) to the TLS echo.
    const echoed = await new Promise<string>((resolve, reject) => {
      const raw = Net.connect({ host: "127.0.0.1", port: sleeve!.listeners.out!.port }, () => raw.write("out\n"))
      let got = ""
      raw.setEncoding("utf8")
      raw.on("error", reject)
      raw.on("data", (s: string) => {
        got += s
        if (got === "out\n") raw.end()
      })
      raw.on("close", () => resolve(got))
    })
    expect(echoed).toBe("out\n")
    expect(await lineUpgrade(sleeve!.listeners["line-in"]!.port)).toBe("upgraded\n")
    sleeve!.child.kill("SIGHUP")
    await sleeve!.waitForEvent("reloaded", (e) => e.trigger === "SIGHUP")

    // Wait until every one of those is on the endpoint, so the check below sees them all.
    const histogramCount = (role: string, listener: string) =>
      `sleeve_tls_handshake_duration_seconds_count{listener="${listener}",role="${role}"}`
    const text = await waitUntil(
      "the traffic to show on /metrics",
      async () => {
        const t = await metricsText()
        const s = Exposition.parse(t)
        const moved =
          (s.get(histogramCount("server", "in")) ?? 0) >= 1 &&
          (s.get(histogramCount("client", "out")) ?? 0) >= 1 &&
          (s.get('sleeve_tls_handshake_failures_total{listener="in",role="server",reason="dn_rejected"}') ?? 0) >= 1 &&
          (s.get('sleeve_tls_handshake_failures_total{listener="in",role="server",reason="protocol_version"}') ?? 0) >=
            1 &&
          (s.get('sleeve_starttls_upgrades_total{listener="line-in",protocol="line",result="ok"}') ?? 0) >= 1 &&
          (s.get('sleeve_bytes_total{listener="out",direction="target_to_client"}') ?? 0) >= 4 &&
          (s.get('sleeve_config_reloads_total{result="ok"}') ?? 0) >= 1 &&
          s.has('sleeve_peer_certificate_not_after_min_timestamp_seconds{listener="in"}')
        return moved ? t : undefined
      },
      { timeoutMs: 10_000 }
    )
    expect(await promtoolCheck(text)).toEqual({ code: 0, printed: "" })
  })
})
