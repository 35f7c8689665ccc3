/**
 * `sleeve check` on broken configurations: exit 1 and exactly one line per problem, then the
 * summary. One file holds five TLS configurations, each broken in one way that only loading the
 * material finds (missing file, wrong key password, key of another certificate, expired
 * certificate, a mirror certificate that is not dual-use); another holds structural errors
 * (schema, TLS 1.0). `--json` reports the same problems; a missing configuration file is a
 * problem like any other.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as TestPki from "@sleeve/testing/TestPki"
import { join } from "node:path"
import { lines, sleeve } from "../support/Sleeve.ts"

let pki: TestPki.TestPki
let expired: TestPki.Identity
const DAY = 86_400_000

beforeAll(async () => {
  pki = await TestPki.make()
  const ca = await pki.ca({ name: "root", subject: [{ CN: "Broken Root" }] })
  await pki.leaf(ca, { name: "good", keyPassword: "right password" })
  await pki.leaf(ca, { name: "other" })
  expired = await pki.leaf(ca, {
    name: "expired",
    notBefore: new Date(Date.now() - 40 * DAY),
    notAfter: new Date(Date.now() - 10 * DAY)
  })
  await pki.leaf(ca, {
    name: "serveronly",
    subject: [{ CN: "serveronly" }, { O: "Example" }],
    extendedKeyUsage: ["serverAuth"]
  })
  await pki.write("wrong.pass", "wrong password\n")
  await pki.write(
    "material.yaml",
    `
tls:
  MissingFile:
    type: server
    certificateFile: nope.crt
    privateKeyFile: other.key
  WrongPassword:
    type: server
    certificateFile: good.crt
    privateKeyFile: good.key
    privateKeyPassword: { file: wrong.pass }
  KeyMismatch:
    type: server
    certificateFile: good.crt
    privateKeyFile: other.key
  Expired:
    type: server
    certificateFile: expired.crt
    privateKeyFile: expired.key
  NotDualUse:
    type: server
    certificateFile: serveronly.crt
    privateKeyFile: serveronly.key
    caFile: ca-bundle.pem
    verifyPeer: require
    requireDualUse: true
`
  )
  await pki.write(
    "schema.yaml",
    `
tls:
  Typo:
    type: servr
    certificateFile: good.crt
    privateKeyFile: good.key
    verifyDepht: 3
  Legacy:
    type: client
    caFile: ca-bundle.pem
    protocols: { min: TLSv1 }
`
  )
})

afterAll(async () => {
  await pki?.cleanup()
})

describe("sleeve check (broken configurations)", { timeout: 30_000 }, () => {
  it("names every material problem on its own line and exits 1; --json agrees", async () => {
    const before = Date.now()
    const [text, json] = await Promise.all([
      sleeve(["check", "--config", "material.yaml"], { cwd: pki.dir }),
      sleeve(["check", "--config", "material.yaml", "--json"], { cwd: pki.dir })
    ])
    const after = Date.now()
    const f = (name: string) => join(pki.dir, name)
    // The expiry message carries the time of the check: it must be the time the check ran.
    const times: Array<number> = []
    const withoutNow = (line: string) =>
      line.replace(/\(now (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\)$/, (_, t: string) => {
        times.push(Date.parse(t))
        return "(now <time of check>)"
      })
    const expected = [
      `material.yaml: tls.MissingFile.certificateFile: file not found: ${f("nope.crt")}`,
      `material.yaml: tls.WrongPassword.privateKeyPassword: TLS configuration "WrongPassword": private key file ${f("good.key")} could not be decrypted with the configured password`,
      `material.yaml: tls.KeyMismatch.privateKeyFile: TLS configuration "KeyMismatch": private key file ${f("other.key")} does not belong to certificate "CN=good" (${f("good.crt")}): their public keys differ`,
      `material.yaml: tls.Expired.certificateFile: ${f("expired.crt")}: certificate "CN=expired" expired at ${expired.x509.notAfter.toISOString()} (now <time of check>)`,
      `material.yaml: tls.NotDualUse.certificateFile: ${f("serveronly.crt")}: certificate "CN=serveronly,O=Example" cannot serve as both TLS client and server (required for mirroring): its Extended Key Usage lacks clientAuth. Peers reject such a certificate during the handshake with "sslv3 alert unsupported certificate" (error:14094413:SSL routines:SSL3_READ_BYTES). Reissue it with Key Usage digitalSignature + keyEncipherment and Extended Key Usage serverAuth + clientAuth, or without these extensions.`
    ]
    expect(lines(text.stdout).map(withoutNow)).toEqual([...expected, "material.yaml: 5 errors"])
    expect(text.code).toBe(1)
    expect(text.stderr).toBe("")
    expect(text.stdout).not.toContain("right password")
    expect(text.stdout).not.toContain("wrong password")

    expect(json.code).toBe(1)
    expect(json.stderr).toBe("")
    const doc = JSON.parse(json.stdout)
    expect(doc.ok).toBe(false)
    expect(
      doc.problems.map((p: { file: string; path: string; rule: string; severity: string }) =>
        p.severity === "error" ? withoutNow(`${p.file}: ${p.path}: ${p.rule}`) : p
      )
    ).toEqual(expected)
    expect(times).toHaveLength(2)
    for (const t of times) {
      expect(t).toBeGreaterThanOrEqual(before - 1)
      expect(t).toBeLessThanOrEqual(after)
    }
    expect(doc.tlsConfigurations.map((t: { name: string; status: string }) => [t.name, t.status])).toEqual([
      ["MissingFile", "error"],
      ["WrongPassword", "error"],
      ["KeyMismatch", "error"],
      ["Expired", "error"],
      ["NotDualUse", "error"]
    ])
    expect(doc.listeners).toEqual([])
  })

  it("reports schema errors and TLS 1.0 before loading anything, and a missing configuration file", async () => {
    const [schema, missing, missingJson] = await Promise.all([
      sleeve(["check", "--config", "schema.yaml"], { cwd: pki.dir }),
      sleeve(["check", "--config", "absent.yaml"], { cwd: pki.dir }),
      sleeve(["check", "--config", "absent.yaml", "--json"], { cwd: pki.dir })
    ])
    expect(lines(schema.stdout)).toEqual([
      'schema.yaml: tls.Typo.verifyDepht: unknown key "verifyDepht"',
      'schema.yaml: tls.Typo.type: expected "client" | "server" | "mirror", got "servr"',
      'schema.yaml: tls.Legacy.protocols.min: expected "TLSv1.2" | "TLSv1.3", got "TLSv1": TLS 1.0/1.1 (and SSL) are refused — they are deprecated by RFC 8996 and lack modern AEAD ciphers; upgrade the peer to TLS 1.2 or later',
      "schema.yaml: 3 errors"
    ])
    expect(schema.code).toBe(1)
    expect(schema.stderr).toBe("")

    expect(lines(missing.stdout)).toEqual(["absent.yaml: configuration file not found", "absent.yaml: 1 error"])
    expect(missing.code).toBe(1)
    expect(JSON.parse(missingJson.stdout)).toEqual({
      ok: false,
      problems: [{ file: "absent.yaml", path: "", rule: "configuration file not found", severity: "error" }],
      tlsConfigurations: [],
      listeners: []
    })
    expect(missingJson.code).toBe(1)
  })
})
