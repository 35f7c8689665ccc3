/**
 * Outside auditors against a real `sleeve run`: `testssl.sh` (Debian's `testssl.sh` package)
 * and `sslscan` (Debian's `sslscan`) scan two terminate listeners with the default TLS settings
 * of a server configuration, one with an ECDSA certificate and one with an RSA certificate (so
 * the RSA-only checks — ROBOT, DROWN, RSA key transport — have something to look at). Their
 * machine-readable output (testssl's flat JSON, sslscan's XML) is asserted finding by finding:
 *
 * - protocols: no SSLv2, SSLv3, TLS 1.0 or TLS 1.1; TLS 1.2 and TLS 1.3 offered;
 * - ciphers: no NULL, anonymous, EXPORT, LOW (DES, RC2, RC4), 3DES/IDEA or obsolete CBC
 *   ciphers; every accepted cipher is ECDHE (TLS 1.2) or a TLS 1.3 suite, with an AEAD;
 *   forward secrecy offered;
 * - vulnerabilities: Heartbleed, CCS injection, ROBOT, CRIME (TLS compression), POODLE,
 *   SWEET32, FREAK, DROWN, LOGJAM, BEAST, LUCKY13, RC4 — all "not vulnerable"; secure
 *   renegotiation (RFC 5746) supported and client-initiated renegotiation refused;
 * - nothing else of severity LOW or above, except three findings about the test certificates
 *   and the loopback address, not about Sleeve (listed with the reason below).
 *
 * testssl runs only the sections above (`-p -s -f -U -E`), with the system openssl and
 * `--warnings off`; both listeners are scanned side by side. Without either program the suite
 * fails, naming the package; it never skips.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { listen } from "@sleeve/testing/Net"
import * as TestPki from "@sleeve/testing/TestPki"
import { readFile } from "node:fs/promises"
import * as Net from "node:net"
import { join } from "node:path"
import { type SleeveDaemon, startSleeve } from "../support/Prometheus.ts"
import { run } from "../support/Sleeve.ts"

let pki: TestPki.TestPki
let echo: Net.Server
let sleeve: SleeveDaemon | undefined

const listeners = ["front-ec", "front-rsa"] as const
type ListenerName = (typeof listeners)[number]

/** One finding of testssl's flat JSON (`-oj`). */
interface Finding {
  readonly id: string
  readonly severity: "OK" | "INFO" | "LOW" | "MEDIUM" | "HIGH" | "CRITICAL" | "WARN" | "DEBUG" | "FATAL"
  readonly finding: string
}

const testssl = new Map<ListenerName, ReadonlyArray<Finding>>()
const sslscan = new Map<ListenerName, string>()
const seconds = new Map<string, number>()

const missing = (program: string, pkg: string) => (e: unknown) => {
  throw new Error(`${program} did not run: install Debian's \`${pkg}\` package (.ci/debian-deps does it): ${String(e)}`)
}

const runTestssl = async (name: ListenerName) => {
  const { port } = sleeve!.listeners[name]!
  const out = join(pki.dir, `testssl-${name}.json`)
  const started = performance.now()
  const r = await run(
    "testssl",
    [
      "--quiet",
      "--warnings",
      "off",
      "--color",
      "0",
      "--openssl",
      "/usr/bin/openssl",
      "--add-ca",
      pki.caFile,
      "--connect-timeout",
      "10",
      "--openssl-timeout",
      "10",
      "-oj",
      out,
      "-p",
      "-s",
      "-f",
      "-U",
      "-E",
      `127.0.0.1:${port}`
    ],
    { cwd: pki.dir, timeoutMs: 280_000 }
  ).catch(missing("testssl", "testssl.sh"))
  seconds.set(`testssl ${name}`, Math.round((performance.now() - started) / 1000))
  const findings = JSON.parse(await readFile(out, "utf8").catch(() => "[]")) as ReadonlyArray<Finding>
  expect(findings.length, `testssl exited ${r.code}\n${r.stdout}\n${r.stderr}`).toBeGreaterThan(30)
  testssl.set(name, findings)
}

const runSslscan = async (name: ListenerName) => {
  const { port } = sleeve!.listeners[name]!
  const started = performance.now()
  const r = await run("sslscan", ["--no-colour", "--xml=-", `127.0.0.1:${port}`], { timeoutMs: 120_000 }).catch(
    missing("sslscan", "sslscan")
  )
  seconds.set(`sslscan ${name}`, Math.round((performance.now() - started) / 1000))
  expect(r.code, r.stderr).toBe(0)
  sslscan.set(name, r.stdout.slice(r.stdout.indexOf("<?xml")))
}

beforeAll(async () => {
  pki = await TestPki.make()
  const root = await pki.ca({ name: "root" })
  await pki.leaf(root, { name: "ec", subject: "CN=localhost" })
  await pki.leaf(root, { name: "rsa", subject: "CN=localhost", keyType: "RSA" })
  echo = Net.createServer((s) => {
    s.on("error", () => {})
    s.pipe(s)
  })
  const echoPort = await listen(echo)
  await pki.write(
    "sleeve.yaml",
    `
admin: { listen: "127.0.0.1:0" }
drainTimeout: 2s
tls:
  Ec: { type: server, certificateFile: ec.crt, privateKeyFile: ec.key }
  Rsa: { type: server, certificateFile: rsa.crt, privateKeyFile: rsa.key }
listeners:
  - { name: front-ec, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${echoPort}", tls: Ec }
  - { name: front-rsa, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${echoPort}", tls: Rsa }
`
  )
  sleeve = await startSleeve("sleeve.yaml", { cwd: pki.dir })
  // The two testssl runs side by side (each is mostly waiting on its openssl children), then
  // sslscan, which takes about a second.
  await Promise.all(listeners.map(runTestssl))
  for (const name of listeners) await runSslscan(name)
  console.info(`audit durations (s): ${JSON.stringify(Object.fromEntries(seconds))}`)
}, 300_000)

afterAll(async () => {
  const exit = await sleeve?.stop("SIGTERM", 10_000)
  await new Promise((r) => echo?.close(r))
  await pki?.cleanup()
  if (exit !== undefined) expect(exit, sleeve?.stderr()).toEqual({ code: 0, signal: null })
})

const finding = (name: ListenerName, id: string): Finding => {
  const f = testssl.get(name)!.find((x) => x.id === id)
  expect(f, `testssl finding ${id} for ${name}`).toBeDefined()
  return f!
}

/** `<tag a="1" b="2" />` elements of sslscan's XML, as attribute records. */
const elements = (xml: string, tag: string): ReadonlyArray<Readonly<Record<string, string>>> =>
  [...xml.matchAll(new RegExp(`<${tag}\\s([^>]*?)/?>`, "g"))].map((m) =>
    Object.fromEntries([...m[1]!.matchAll(/(\w+)="([^"]*)"/g)].map((a) => [a[1]!, a[2]!]))
  )

/**
 * Findings of severity LOW or above that are about the test setup, not Sleeve: testssl's own
 * openssl has no GOST engine; the test CA puts no CRL or OCSP URI in its certificates; a
 * loopback address has no DNS CAA record.
 */
const notAboutSleeve = new Set(["engine_problem", "cert_revocation", "DNS_CAArecord"])

for (const name of listeners)
  describe(`outside auditors: ${name}`, { timeout: 30_000 }, () => {
    it("testssl: only TLS 1.2 and TLS 1.3 are offered", () => {
      for (const id of ["SSLv2", "SSLv3", "TLS1", "TLS1_1"]) expect(finding(name, id).finding, id).toBe("not offered")
      expect(finding(name, "TLS1_2").finding).toBe("offered")
      expect(finding(name, "TLS1_3").finding).toMatch(/^offered/)
    })

    it("testssl: no weak cipher category; strong ciphers and forward secrecy offered", () => {
      for (const id of [
        "cipherlist_NULL",
        "cipherlist_aNULL",
        "cipherlist_EXPORT",
        "cipherlist_LOW",
        "cipherlist_3DES_IDEA",
        "cipherlist_AVERAGE" // obsolete CBC ciphers
      ])
        expect(finding(name, id).finding, id).toBe("not offered")
      expect(finding(name, "cipherlist_STRONG").finding).toBe("offered")
      expect(finding(name, "PFS")).toMatchObject({ severity: "OK", finding: "offered" })
    })

    it("testssl: every accepted cipher is ECDHE or TLS 1.3, with an AEAD", () => {
      const ciphers = testssl.get(name)!.filter((f) => f.id.startsWith("cipher-"))
      expect(ciphers.length).toBeGreaterThanOrEqual(4)
      for (const c of ciphers) {
        expect(c.id, c.finding).toMatch(/^cipher-tls1_[23]_x/)
        expect(c.finding, c.id).toMatch(/\b(ECDH|X25519)\b/)
        expect(c.finding, c.id).toMatch(/\b(AESGCM|ChaCha20)\b/)
        expect(c.finding, c.id).not.toMatch(/CBC|SHA1\b|RC4|DES|NULL|EXP/)
      }
      const kind = name === "front-rsa" ? "ECDHE-RSA" : "ECDHE-ECDSA"
      expect(
        ciphers.some((c) => c.finding.includes(kind)),
        kind
      ).toBe(true)
    })

    it("testssl: not vulnerable to anything it knows; renegotiation safe; no compression", () => {
      for (const id of [
        "heartbleed",
        "CCS",
        "ROBOT",
        "secure_client_renego",
        "CRIME_TLS",
        "POODLE_SSL",
        "SWEET32",
        "FREAK",
        "DROWN",
        "LOGJAM",
        "BEAST",
        "LUCKY13",
        "RC4"
      ]) {
        const f = finding(name, id)
        expect(f.severity, `${id}: ${f.finding}`).toBe("OK")
        expect(f.finding, id).toMatch(/^not vulnerable/)
      }
      expect(finding(name, "secure_renego")).toMatchObject({ severity: "OK", finding: "supported" })
      expect(finding(name, "fallback_SCSV").severity).toBe("OK")
    })

    it("testssl: nothing else of severity LOW or above", () => {
      const serious = testssl
        .get(name)!
        .filter((f) => !["OK", "INFO", "DEBUG"].includes(f.severity) && !notAboutSleeve.has(f.id))
      expect(serious).toEqual([])
    })

    it("sslscan agrees: protocols, renegotiation, Heartbleed, ciphers", () => {
      const xml = sslscan.get(name)!
      const protocols = Object.fromEntries(elements(xml, "protocol").map((p) => [`${p.type}${p.version}`, p.enabled]))
      expect(protocols).toEqual({ ssl2: "0", ssl3: "0", "tls1.0": "0", "tls1.1": "0", "tls1.2": "1", "tls1.3": "1" })
      // Not supported at all, or only the secure kind.
      const [reneg] = elements(xml, "renegotiation")
      expect(reneg?.supported === "0" || reneg?.secure === "1", JSON.stringify(reneg)).toBe(true)
      const heartbleed = elements(xml, "heartbleed")
      expect(heartbleed.length).toBe(2)
      for (const h of heartbleed) expect(h.vulnerable).toBe("0")
      const ciphers = elements(xml, "cipher")
      expect(ciphers.length).toBeGreaterThanOrEqual(4)
      for (const c of ciphers) {
        expect(["TLSv1.2", "TLSv1.3"]).toContain(c.sslversion)
        expect(["strong", "acceptable"], `${c.cipher}: ${c.strength}`).toContain(c.strength)
        expect(c.cipher).toMatch(/^(TLS_|ECDHE-)/)
        expect(c.cipher).toMatch(/GCM|CHACHA20/)
      }
    })
  })
