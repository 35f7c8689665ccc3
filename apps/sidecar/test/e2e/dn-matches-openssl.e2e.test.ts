/**
 * `sleeve dn` against openssl as the oracle: for subjects with escaped commas, plus signs,
 * quotes, backslashes, leading `#` and spaces, multi-valued RDNs and UTF-8, every line it prints
 * equals `openssl x509 -noout -subject|-issuer -nameopt RFC2253` without the prefix. Covers
 * `--all` (one line per certificate), `--issuer`, the default (first certificate of a chain), a
 * DER file, and the one-line errors for a missing file and a file without a certificate.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as TestPki from "@sleeve/testing/TestPki"
import * as Openssl from "@sleeve/testing/Openssl"
import { join } from "node:path"
import { lines, sleeve } from "../support/Sleeve.ts"

let pki: TestPki.TestPki
let certs: ReadonlyArray<TestPki.Identity>
let chainLeaf: TestPki.Identity

const subjects: ReadonlyArray<TestPki.Subject> = [
  [{ CN: "Smith, John" }, { OU: "Ops; Infra" }, { O: "Example, Corp" }, { C: "US" }],
  [{ CN: "a+b=c" }, { O: "Plus+Sign" }],
  [{ CN: "m", UID: "42" }, { DC: ["example", "com"] }],
  [{ CN: 'say "hi" <there>' }, { O: "back\\slash" }],
  [{ CN: "#hash" }, { OU: " leading and trailing " }],
  [{ CN: "Jürgen Müller" }, { O: "東京 Systems" }, { L: "Zürich" }]
]

beforeAll(async () => {
  pki = await TestPki.make()
  const root = await pki.ca({ name: "root", subject: [{ CN: "Root, Inc." }, { O: "Ünïcode CA" }] })
  const intermediate = await pki.intermediate(root, {
    name: "intermediate",
    subject: [{ CN: "Issuing+CA", OU: "PKI" }, { O: "Example" }]
  })
  certs = await Promise.all(subjects.map((subject, i) => pki.leaf(intermediate, { name: `leaf${i}`, subject })))
  chainLeaf = certs[0]!
  await pki.write("all.pem", certs.map((c) => c.certPem).join(""))
  await Openssl.output(["x509", "-in", chainLeaf.certFile, "-outform", "DER", "-out", join(pki.dir, "leaf0.der")])
  await pki.write("not-a-cert.pem", "hello\n")
})

afterAll(async () => {
  await pki?.cleanup()
})

describe("sleeve dn", { timeout: 30_000 }, () => {
  it("prints exactly what openssl -nameopt RFC2253 prints, for every certificate and for the issuer", async () => {
    const [all, allIssuers, chain, chainIssuer, der] = await Promise.all([
      sleeve(["dn", "--all", "all.pem"], { cwd: pki.dir }),
      sleeve(["dn", "--all", "--issuer", "all.pem"], { cwd: pki.dir }),
      sleeve(["dn", chainLeaf.chainFile]),
      sleeve(["dn", "--issuer", chainLeaf.chainFile]),
      sleeve(["dn", "leaf0.der"], { cwd: pki.dir })
    ])
    const expectedSubjects = await Promise.all(certs.map((c) => Openssl.dn(c.certFile, "subject")))
    const expectedIssuers = await Promise.all(certs.map((c) => Openssl.dn(c.certFile, "issuer")))

    // The oracle really sees the hard cases (escapes, multi-valued RDNs, UTF-8 as openssl writes it).
    expect(expectedSubjects[0]).toBe("CN=Smith\\, John,OU=Ops\\; Infra,O=Example\\, Corp,C=US")
    // (DER sorts the values of a multi-valued RDN, so their order is openssl's business.)
    expect(expectedSubjects[2]).toMatch(/^(CN=m\+UID=42|UID=42\+CN=m),(DC=example\+DC=com|DC=com\+DC=example)$/)
    expect(expectedSubjects[5]).toMatch(/\\[0-9A-F]{2}/) // UTF-8 bytes escaped as \XX
    expect(expectedIssuers[0]).toMatch(/^(CN=Issuing\\\+CA\+OU=PKI|OU=PKI\+CN=Issuing\\\+CA),O=Example$/)

    for (const r of [all, allIssuers, chain, chainIssuer, der]) {
      expect(r.stderr).toBe("")
      expect(r.code).toBe(0)
    }
    expect(lines(all.stdout)).toEqual(expectedSubjects)
    expect(lines(allIssuers.stdout)).toEqual(expectedIssuers)
    // A chain file without --all: its first certificate (the leaf) only.
    expect(lines(chain.stdout)).toEqual([expectedSubjects[0]])
    expect(lines(chainIssuer.stdout)).toEqual([expectedIssuers[0]])
    expect(lines(der.stdout)).toEqual([expectedSubjects[0]])
  })

  it("fails with one line and exit 1 on a missing file or a file without a certificate", async () => {
    const [missing, notCert] = await Promise.all([
      sleeve(["dn", "missing.pem"], { cwd: pki.dir }),
      sleeve(["dn", "not-a-cert.pem"], { cwd: pki.dir })
    ])
    expect(missing.stdout).toBe("")
    expect(missing.stderr).toBe("sleeve: missing.pem: file not found\n")
    expect(missing.code).toBe(1)
    expect(notCert.stdout).toBe("")
    expect(notCert.stderr).toBe('sleeve: not-a-cert.pem: no "-----BEGIN CERTIFICATE-----" block found\n')
    expect(notCert.code).toBe(1)
  })
})
