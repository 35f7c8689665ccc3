/**
 * `sleeve check` on the plaintext guardrails and on CRLs (issue 13 §2, §3), black box:
 *
 * - under `policy: { requireTls: true }` every violation is one line naming the file, the path
 *   and the rule (a plaintext side on the network, the `allowPlaintextNetwork` override, a
 *   STARTTLS `requireTls: false` whose plaintext fallback faces the network), and check exits 1;
 * - without the policy, a listener that sets `allowPlaintextNetwork: true` passes with a warning,
 *   as does a stale CRL (with the `crlStale` consequence spelled out); check exits 0;
 * - a CRL signed by a CA that is not in caFile is an error.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as TestPki from "@sleeve/testing/TestPki"
import { lines, sleeve } from "../support/Sleeve.ts"

let pki: TestPki.TestPki
const DAY = 86_400_000

const tls = (crlFile: string) => `
tls:
  Front:
    type: server
    certificateFile: server.crt
    privateKeyFile: server.key
    caFile: root.crt
    verifyPeer: require
    crlFile: ${crlFile}
  Back:
    type: client
    caFile: root.crt
`

beforeAll(async () => {
  pki = await TestPki.make()
  const root = await pki.ca({ name: "root", subject: [{ CN: "Check Root" }] })
  const other = await pki.ca({ name: "other", subject: [{ CN: "Other Root" }] })
  await pki.leaf(root, { name: "server" })
  await pki.crl(root, { name: "fresh" })
  await pki.crl(root, {
    name: "stale",
    thisUpdate: new Date(Date.now() - 2 * DAY),
    nextUpdate: new Date(Date.now() - DAY)
  })
  await pki.crl(other, { name: "foreign" })
  await pki.write(
    "policy.yaml",
    `${tls("fresh.crl.pem")}policy: { requireTls: true }
listeners:
  - { name: app-in, mode: terminate, listen: "0.0.0.0:8443", target: "10.1.2.3:80", tls: Front }
  - { name: legacy, mode: terminate, listen: "0.0.0.0:8444", target: "127.0.0.1:80", tls: Front, allowPlaintextNetwork: true }
  - { name: app-out, mode: originate, listen: "0.0.0.0:15432", target: "db.example.com:5432", tls: Back }
  - { name: mail, mode: starttls, protocol: smtp, requireTls: false, listen: "0.0.0.0:25", target: "127.0.0.1:2525", tls: Front }
  - { name: fine, mode: starttls, protocol: smtp, listen: "0.0.0.0:587", target: "unix:/run/mail.sock", tls: Front }
`
  )
  await pki.write(
    "allowed.yaml",
    `${tls("stale.crl.pem")}listeners:
  - { name: app-in, mode: terminate, listen: "0.0.0.0:8443", target: "app.internal:80", tls: Front, allowPlaintextNetwork: true }
`
  )
  await pki.write(
    "foreign.yaml",
    `${tls("foreign.crl.pem")}listeners:
  - { name: app-in, mode: terminate, listen: "0.0.0.0:8443", target: "localhost:80", tls: Front }
`
  )
})

afterAll(async () => {
  await pki?.cleanup()
})

describe("sleeve check: plaintext guardrails and CRLs", { timeout: 30_000 }, () => {
  it("under policy.requireTls, names every plaintext path off the host and exits 1", async () => {
    const r = await sleeve(["check", "--config", "policy.yaml"], { cwd: pki.dir })
    expect(lines(r.stdout)).toEqual([
      "policy.yaml: listeners[0].target: plaintext on the network: terminate forwards the decrypted bytes to target, and 10.1.2.3:80 is not loopback or a UNIX socket; policy.requireTls forbids that (use 127.0.0.1, [::1], localhost or unix:/path)",
      "policy.yaml: listeners[1].allowPlaintextNetwork: policy.requireTls forbids plaintext application bytes off this host, so this override is not allowed; put the application on the same host (loopback or unix:/path) or remove policy.requireTls",
      "policy.yaml: listeners[2].listen: plaintext on the network: originate accepts the application's plaintext on listen, and 0.0.0.0:15432 is not loopback or a UNIX socket; policy.requireTls forbids that (use 127.0.0.1, [::1], localhost or unix:/path)",
      "policy.yaml: listeners[3].requireTls: policy.requireTls forbids requireTls: false here: listen 0.0.0.0:25 is not loopback, so a client that never sends STARTTLS would be relayed in plaintext over the network; set requireTls: true",
      "policy.yaml: 4 errors"
    ])
    expect(r.code).toBe(1)
  })

  it("without the policy, allowPlaintextNetwork and a stale CRL pass with warnings", async () => {
    const r = await sleeve(["check", "--config", "allowed.yaml"], { cwd: pki.dir })
    const out = lines(r.stdout)
    expect(out).toContainEqual(
      'allowed.yaml: listeners[0].allowPlaintextNetwork: warning: listener "app-in" carries application bytes in plaintext over the network: target app.internal:80'
    )
    expect(out.find((l) => l.includes("is stale"))).toMatch(
      /^allowed\.yaml: tls\.Front\.crlFile: warning: CRL #1 \(issuer "CN=Check Root"\) is stale: its nextUpdate \S+ has passed; with crlStale: reject every peer whose chain it covers is rejected \(CRL_HAS_EXPIRED\) until a fresh CRL is installed$/
    )
    expect(out[out.length - 1]).toMatch(/^allowed\.yaml: OK, 2 warnings/)
    expect(r.code).toBe(0)
  })

  it("refuses a CRL that no CA of caFile issued", async () => {
    const r = await sleeve(["check", "--config", "foreign.yaml"], { cwd: pki.dir })
    expect(lines(r.stdout)).toEqual([
      'foreign.yaml: tls.Front.crlFile: CRL #1 (issuer "CN=Other Root") was not issued by a CA in caFile; OpenSSL could not verify it and would reject every peer it applies to',
      "foreign.yaml: 1 error"
    ])
    expect(r.code).toBe(1)
  })
})
