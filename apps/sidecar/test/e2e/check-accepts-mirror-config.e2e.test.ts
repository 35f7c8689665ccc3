/**
 * `sleeve check` on a sound mirror configuration: two dual-use TLS configurations (server and
 * client, one certificate, encrypted key with its password from the environment and from a
 * file, DN authorization), two listeners and one disabled configuration that would be broken.
 * Exit 0 with the summary line; `--json` gives the documented shape; `--expiry-warning` turns
 * a certificate close to expiry into a warning without failing.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as TestPki from "@sleeve/testing/TestPki"
import { lines, sleeve } from "../support/Sleeve.ts"

let pki: TestPki.TestPki
let node1: TestPki.Identity
let ca: TestPki.Identity
const env = { NODE1_KEY_PASSWORD: "correct horse battery staple" }

beforeAll(async () => {
  pki = await TestPki.make()
  ca = await pki.ca({ name: "root", subject: [{ CN: "Mirror Root" }, { O: "Example, Corp" }] })
  node1 = await pki.leaf(ca, {
    name: "node1",
    subject: [{ CN: "node1" }, { O: "Example, Corp" }],
    keyPassword: env.NODE1_KEY_PASSWORD
  })
  await pki.write("node1.pass", `${env.NODE1_KEY_PASSWORD}\n`)
  await pki.write(
    "sleeve.yaml",
    `
tls:
  MirrorServer:
    type: server
    certificateFile: node1.crt
    privateKeyFile: node1.key
    privateKeyPassword: { env: NODE1_KEY_PASSWORD }
    caFile: ca-bundle.pem
    verifyPeer: require
    requireDualUse: true
    authorizedPeers: ["CN=node2,O=Example\\\\, Corp"]
  MirrorClient:
    type: client
    certificateFile: node1.crt
    privateKeyFile: node1.key
    privateKeyPassword: { file: node1.pass }
    caFile: ca-bundle.pem
    requireDualUse: true
  Retired:
    type: server
    enabled: false
    certificateFile: gone.crt
    privateKeyFile: gone.key
listeners:
  - name: mirror-in
    mode: terminate
    listen: 127.0.0.1:2188
    target: 127.0.0.1:1972
    tls: MirrorServer
  - name: mirror-out
    mode: originate
    listen: 127.0.0.1:2189
    target: node2.example.com:2188
    tls: MirrorClient
`
  )
})

afterAll(async () => {
  await pki?.cleanup()
})

describe("sleeve check (good mirror configuration)", { timeout: 30_000 }, () => {
  it("exits 0 with a note for the disabled configuration and the summary; --json has the documented shape", async () => {
    const [text, json, viaEnv] = await Promise.all([
      sleeve(["check", "--config", "sleeve.yaml"], { cwd: pki.dir, env }),
      sleeve(["check", "--config", "sleeve.yaml", "--json"], { cwd: pki.dir, env }),
      sleeve(["check"], { cwd: pki.dir, env: { ...env, SLEEVE_CONFIG: "sleeve.yaml" } })
    ])

    expect(text.stderr).toBe("")
    expect(lines(text.stdout)).toEqual([
      "sleeve.yaml: tls.Retired: note: disabled (enabled: false), not checked",
      "sleeve.yaml: OK (3 TLS configurations, 1 disabled, 2 listeners)"
    ])
    expect(text.code).toBe(0)
    // SLEEVE_CONFIG stands in for --config.
    expect(viaEnv.stdout).toBe(text.stdout)
    expect(viaEnv.code).toBe(0)

    expect(json.code).toBe(0)
    expect(json.stderr).toBe("")
    const doc = JSON.parse(json.stdout)
    expect(Object.keys(doc)).toEqual(["ok", "problems", "tlsConfigurations", "listeners"])
    expect(doc.ok).toBe(true)
    expect(doc.problems).toEqual([])
    const certificate = {
      subject: "CN=node1,O=Example\\, Corp",
      issuer: "CN=Mirror Root,O=Example\\, Corp",
      notAfter: node1.x509.notAfter.toISOString(),
      fingerprint256: expect.stringMatching(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/)
    }
    expect(doc.tlsConfigurations).toEqual([
      {
        name: "MirrorServer",
        type: "server",
        enabled: true,
        status: "ok",
        listeners: ["mirror-in"],
        certificate,
        caCertificates: 1
      },
      {
        name: "MirrorClient",
        type: "client",
        enabled: true,
        status: "ok",
        listeners: ["mirror-out"],
        certificate,
        caCertificates: 1
      },
      {
        name: "Retired",
        type: "server",
        enabled: false,
        status: "skipped",
        listeners: [],
        certificate: null,
        caCertificates: 0
      }
    ])
    expect(doc.listeners).toEqual([
      {
        name: "mirror-in",
        mode: "terminate",
        listen: "127.0.0.1:2188",
        target: "127.0.0.1:1972",
        tls: "MirrorServer",
        role: "server"
      },
      {
        name: "mirror-out",
        mode: "originate",
        listen: "127.0.0.1:2189",
        target: "node2.example.com:2188",
        tls: "MirrorClient",
        role: "client"
      }
    ])
    // No password (from env or file) ever reaches the output.
    for (const out of [text.stdout, json.stdout]) expect(out).not.toContain(env.NODE1_KEY_PASSWORD)
  })

  it("--expiry-warning beyond the certificate's lifetime gives warnings, still exit 0", async () => {
    const [text, json] = await Promise.all([
      sleeve(["check", "-c", "sleeve.yaml", "--expiry-warning", "60d"], { cwd: pki.dir, env }),
      sleeve(["check", "-c", "sleeve.yaml", "--expiry-warning", "60d", "--json"], { cwd: pki.dir, env })
    ])
    expect(text.code).toBe(0)
    const out = lines(text.stdout)
    // node1 (30 days) in both configurations; the root (365 days) is outside the horizon.
    expect(out.filter((l) => l.includes(": warning: "))).toHaveLength(2)
    expect(out[0]).toMatch(/^sleeve\.yaml: tls\.MirrorServer\.certificateFile: warning: .*CN=node1/)
    expect(out[1]).toMatch(/^sleeve\.yaml: tls\.MirrorClient\.certificateFile: warning: .*CN=node1/)
    expect(out.at(-1)).toBe("sleeve.yaml: OK, 2 warnings (3 TLS configurations, 1 disabled, 2 listeners)")

    expect(json.code).toBe(0)
    const doc = JSON.parse(json.stdout)
    expect(doc.ok).toBe(true)
    expect(doc.problems.map((p: { severity: string; path: string }) => [p.severity, p.path])).toEqual([
      ["warning", "tls.MirrorServer.certificateFile"],
      ["warning", "tls.MirrorClient.certificateFile"]
    ])
    expect(doc.tlsConfigurations.map((t: { status: string }) => t.status)).toEqual(["warning", "warning", "skipped"])
  })
})
