import { Metrics } from "@sleeve/metrics"
import { listen } from "@sleeve/testing/Net"
import * as Process from "@sleeve/testing/Process"
import * as TestPki from "@sleeve/testing/TestPki"
import { Redacted } from "effect"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"
import * as Tls from "node:tls"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as EventLog from "../src/EventLog.ts"
import * as TlsConfigs from "../src/TlsConfigs.ts"

const node = process.execPath
const root = Path.resolve(import.meta.dirname, "../../..")

describe("TlsConfigs (library verbs)", () => {
  let pki: TestPki.TestPki
  let configPath: string
  let serverCert: TestPki.Identity
  const password = "correct horse battery staple"

  beforeAll(async () => {
    pki = await TestPki.make()
    const ca = await pki.ca()
    serverCert = await pki.leaf(ca, { name: "server", subject: [{ CN: "server" }, { O: "Example" }] })
    const locked = await pki.leaf(ca, { name: "locked", subject: [{ CN: "locked" }], keyPassword: password })
    configPath = Path.join(pki.dir, "sleeve.yaml")
    Fs.writeFileSync(
      configPath,
      `tls:
  Client:
    type: client
    caFile: ${pki.caFile}
    authorizedPeers: ["CN=server,O=Example"]
  Picky:
    type: client
    caFile: ${pki.caFile}
    authorizedPeers: ["CN=someone-else"]
  Off:
    type: client
    enabled: false
    caFile: ${pki.caFile}
  Locked:
    type: server
    certificateFile: ${locked.certFile}
    privateKeyFile: ${locked.keyFile}
`
    )
  })
  afterAll(() => pki.cleanup())

  const tlsServer = async () => {
    const server = Tls.createServer({ cert: serverCert.certPem, key: serverCert.keyPem }, (s) => s.end("hi\n"))
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()))
    return { server, port: (server.address() as Net.AddressInfo).port }
  }

  it("connect: TLS from the first byte, server DN authorized, counted under the label", async () => {
    const { server, port } = await tlsServer()
    const metrics = Metrics.make()
    const mem = EventLog.makeMemory()
    const sleeve = await TlsConfigs.open(configPath, { metrics, log: mem.sink })
    const socket = await sleeve.connect("Client", `127.0.0.1:${port}`, { serverName: "localhost", label: "lib" })
    const got = await new Promise<string>((r) => {
      let s = ""
      socket.on("data", (d) => (s += d))
      socket.on("end", () => r(s))
    })
    expect(got).toBe("hi\n")
    expect(socket.getPeerCertificate().subject.CN).toBe("server")
    expect(await metrics.registry.getSingleMetricAsString("sleeve_tls_handshakes_total")).toContain(
      'sleeve_tls_handshakes_total{listener="lib",role="client",result="ok"} 1'
    )
    expect(mem.events.find((e) => e.event === "handshake_ok")?.peerSubject).toBe("CN=server,O=Example")
    socket.destroy()
    server.close()
  })

  it("connect: a server whose DN is not authorized is dropped with a typed error", async () => {
    const { server, port } = await tlsServer()
    const metrics = Metrics.make()
    const sleeve = await TlsConfigs.open(configPath, { metrics })
    const err = await sleeve.connect("Picky", `127.0.0.1:${port}`, { serverName: "localhost", label: "lib" }).then(
      () => undefined,
      (e: unknown) => e
    )
    expect(err).toMatchObject({ _tag: "TlsSessionError", reason: "dn_rejected" })
    expect(await metrics.registry.getSingleMetricAsString("sleeve_tls_dn_rejections_total")).toContain(
      'sleeve_tls_dn_rejections_total{listener="lib",role="client"} 1'
    )
    server.close()
  })

  it("refuses unknown, disabled and wrong-type configurations by name", async () => {
    const sleeve = await TlsConfigs.open(configPath)
    const socket = new Net.Socket()
    await expect(sleeve.upgradeClient(socket, "Nope")).rejects.toMatchObject({
      _tag: "TlsConfigError",
      message: 'no TLS configuration named "Nope"'
    })
    await expect(sleeve.upgradeClient(socket, "Off")).rejects.toMatchObject({
      message: 'TLS configuration "Off" is disabled'
    })
    await expect(sleeve.upgradeServer(socket, "Client")).rejects.toMatchObject({
      message: 'TLS configuration "Client" is of type client, not server'
    })
  })

  it('a key password given at open time (/TLS="cfg|password") works, and is required otherwise', async () => {
    const sleeve = await TlsConfigs.open(configPath)
    await expect(sleeve.upgradeServer(new Net.Socket(), "Locked")).rejects.toMatchObject({ _tag: "TlsConfigError" })
    const listener = Net.createServer((raw) => {
      void sleeve
        .upgradeServer(raw, "Locked", { password: Redacted.make(password) })
        .then((s) => s.end("secured\n"))
        .catch(() => raw.destroy())
    })
    const port = await listen(listener)
    const got = await new Promise<string>((resolve, reject) => {
      const c = Tls.connect({ port, host: "127.0.0.1", ca: Fs.readFileSync(pki.caFile), servername: "localhost" })
      let s = ""
      c.on("data", (d) => (s += d))
      c.on("end", () => resolve(s))
      c.on("error", reject)
    })
    expect(got).toBe("secured\n")
    listener.close()
  })

  it("the runnable STARTTLS line-protocol example works", async () => {
    const { code, stdout, stderr } = await Process.run(
      node,
      [Path.join(root, "packages/proxy/examples/starttls-line.ts")],
      {
        cwd: root,
        timeoutMs: 30_000
      }
    )
    expect(code, stderr).toBe(0)
    expect(stdout.trim().split("\n")).toEqual([
      "server says: HELLO legacy-line-protocol",
      "server says: OK begin TLS",
      "upgraded: TLSv1.3, server certificate line-server",
      "server says: secure echo: ping"
    ])
  }, 40_000)
})
