/**
 * `sleeve certs` writes a development PKI that works: a CA and two node certificates that OpenSSL
 * accepts for both TLS roles (the seed's dual-use Key Usage / Extended Key Usage), keys readable
 * only by their owner, and a `sleeve.yaml` whose mirror pair authorizes exactly each other's DN
 * (as `openssl x509 -nameopt RFC2253` prints it) and passes `sleeve check`. It refuses to
 * overwrite files without `--force`, encrypts keys with `--key-password-env`, and rejects bad
 * options with one line before writing anything.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Openssl from "@sleeve/testing/Openssl"
import { existsSync } from "node:fs"
import { mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as Yaml from "yaml"
import { lines, sleeve } from "../support/Sleeve.ts"

let root = ""

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "sleeve-certs-"))
})

afterAll(async () => {
  if (root !== "") await rm(root, { recursive: true, force: true })
})

interface Written {
  readonly tls: Record<
    string,
    { certificateFile: string; privateKeyFile: string; authorizedPeers: Array<string>; privateKeyPassword?: unknown }
  >
  readonly listeners: ReadonlyArray<{ name: string; mode: string; target: string; serverName?: string }>
  readonly admin: { listen: string }
}

describe("sleeve certs", { timeout: 40_000 }, () => {
  it("writes a CA, two dual-use node certificates and a mirror-pair sleeve.yaml that passes check", async () => {
    const out = join(root, "dev-pki")
    const [made, noNames, noEnv, badDays] = await Promise.all([
      sleeve(["certs", "--out", out]),
      sleeve(["certs", "--out", join(root, "never"), "--names", "node1"]),
      sleeve(["certs", "--out", join(root, "never"), "--key-password-env", "SLEEVE_TEST_UNSET_PASSWORD"]),
      sleeve(["certs", "--out", join(root, "never"), "--days", "0"])
    ])
    expect(made.stderr).toBe("")
    expect(made.code).toBe(0)
    expect(lines(made.stdout)[0]).toBe(`sleeve certs: wrote ${out} (EC keys, certificates valid 90 days)`)
    expect(made.stdout).toContain(`Checked: ${out}/sleeve.yaml: OK (2 TLS configurations, 2 listeners). Next:`)
    expect((await readdir(out)).sort()).toEqual(
      ["ca-bundle.pem", "ca.crt", "ca.key", "node1.crt", "node1.key", "node2.crt", "node2.key", "sleeve.yaml"].sort()
    )
    for (const key of ["ca.key", "node1.key", "node2.key"]) {
      expect(((await stat(join(out, key))).mode & 0o777).toString(8), key).toBe("600")
    }

    const config = Yaml.parse(await readFile(join(out, "sleeve.yaml"), "utf8")) as Written
    const [checked, node1Dn, node2Dn, ...verified] = await Promise.all([
      sleeve(["check", "--config", "sleeve.yaml"], { cwd: out }),
      Openssl.dn(join(out, "node1.crt"), "subject"),
      Openssl.dn(join(out, "node2.crt"), "subject"),
      // OpenSSL accepts each node certificate for both roles: the mirror rule, seen by OpenSSL
      ...["node1", "node2"].flatMap((n) =>
        ["sslserver", "sslclient"].map((purpose) =>
          Openssl.output(["verify", "-CAfile", join(out, "ca-bundle.pem"), "-purpose", purpose, join(out, `${n}.crt`)])
        )
      )
    ])
    expect(lines(checked.stdout)).toEqual(["sleeve.yaml: OK (2 TLS configurations, 2 listeners)"])
    expect(checked.code).toBe(0)
    expect(verified).toEqual(Array(4).fill(expect.stringMatching(/: OK\n$/)))
    const ext = await Openssl.output([
      "x509",
      "-in",
      join(out, "node1.crt"),
      "-noout",
      "-ext",
      "keyUsage,extendedKeyUsage"
    ])
    expect(ext).toMatch(/Key Usage: critical\n\s+Digital Signature, Key Encipherment\n/)
    expect(ext).toMatch(/Extended Key Usage: \n\s+TLS Web Server Authentication, TLS Web Client Authentication\n/)

    // the pair: node1 serves and accepts node2; node2 connects and accepts node1
    expect(node1Dn).toBe("CN=node1,O=Sleeve Dev")
    expect(config.tls.MirrorServer).toMatchObject({ certificateFile: "node1.crt", authorizedPeers: [node2Dn] })
    expect(config.tls.MirrorClient).toMatchObject({ certificateFile: "node2.crt", authorizedPeers: [node1Dn] })
    expect(config.listeners.map((l) => [l.name, l.mode])).toEqual([
      ["mirror-in", "terminate"],
      ["mirror-out", "originate"]
    ])
    expect(config.listeners[1]?.serverName).toBe("node1")
    expect(config.admin.listen).toBe("127.0.0.1:9464")

    // bad options: one line, exit 1, nothing written
    expect(noNames.stderr).toBe(
      "sleeve: --names takes exactly two names, the serving node then the connecting one (got 1)\n"
    )
    expect(noEnv.stderr).toBe(
      "sleeve: --key-password-env: environment variable SLEEVE_TEST_UNSET_PASSWORD is not set (it should hold the key password)\n"
    )
    expect(badDays.stderr).toBe("sleeve: --days must be between 1 and 825, got 0\n")
    for (const r of [noNames, noEnv, badDays]) expect(r.code).toBe(1)
    expect(existsSync(join(root, "never"))).toBe(false)
  })

  it("refuses to overwrite without --force; --force with encrypted keys and other names replaces the PKI", async () => {
    // A relative --out, resolved from the working directory (as `sleeve certs --out dev-pki` is used)
    const rel = "again/pki"
    const out = join(root, rel)
    const first = await sleeve(["certs", "--out", rel], { cwd: root })
    expect(first.code).toBe(0)
    const before = await readFile(join(out, "node1.crt"), "utf8")

    const refused = await sleeve(["certs", "--out", rel], { cwd: root })
    expect(refused.stdout).toBe("")
    expect(refused.stderr).toBe(
      `sleeve: ${rel}: would overwrite ca-bundle.pem, ca.crt, ca.key, node1.crt, node1.key, node2.crt, node2.key, sleeve.yaml (use --force to replace them)\n`
    )
    expect(refused.code).toBe(1)
    expect(await readFile(join(out, "node1.crt"), "utf8")).toBe(before)

    const env = { CERTS_TEST_PASSWORD: "correct horse battery staple" }
    const forced = await sleeve(
      [
        "certs",
        "--out",
        rel,
        "--force",
        "--names",
        "iris-a.example.com,iris-b.example.com",
        "--org",
        "Example, Inc",
        "--key-password-env",
        "CERTS_TEST_PASSWORD",
        "--key-type",
        "RSA",
        "--days",
        "30"
      ],
      { env, cwd: root }
    )
    expect(forced.stderr).toBe("")
    expect(forced.code).toBe(0)
    expect(lines(forced.stdout)[0]).toBe(
      `sleeve certs: wrote ${rel} (RSA keys, encrypted with $CERTS_TEST_PASSWORD, certificates valid 30 days)`
    )
    const key = await readFile(join(out, "iris-a.example.com.key"), "utf8")
    expect(key).toMatch(/^-----BEGIN ENCRYPTED PRIVATE KEY-----\n/)
    expect(await readFile(join(out, "ca.key"), "utf8")).toMatch(/^-----BEGIN ENCRYPTED PRIVATE KEY-----\n/)
    const config = Yaml.parse(await readFile(join(out, "sleeve.yaml"), "utf8")) as Written
    expect(config.tls.MirrorServer?.privateKeyPassword).toEqual({ env: "CERTS_TEST_PASSWORD" })
    expect(config.tls.MirrorServer?.authorizedPeers).toEqual(["CN=iris-b.example.com,O=Example\\, Inc"])
    expect(config.tls.MirrorClient?.authorizedPeers).toEqual([
      await Openssl.dn(join(out, "iris-a.example.com.crt"), "subject")
    ])

    const [withPassword, withoutPassword] = await Promise.all([
      sleeve(["check", "--config", join(out, "sleeve.yaml")], { env }),
      sleeve(["check", "--config", join(out, "sleeve.yaml")])
    ])
    expect(withPassword.stdout).toMatch(/: OK \(2 TLS configurations, 2 listeners\)\n$/)
    expect(withPassword.code).toBe(0)
    expect(withoutPassword.stdout).toContain(
      "tls.MirrorServer.privateKeyPassword: environment variable CERTS_TEST_PASSWORD is not set"
    )
    expect(withoutPassword.code).toBe(1)
  })
})
