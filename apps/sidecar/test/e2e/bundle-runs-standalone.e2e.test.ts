/**
 * The production build: `rolldown -c rolldown.config.ts` (the package's `bundle` script) writes
 * `main.js` and the chunks it imports into one folder; a copy of that folder, alone in an empty
 * folder with no node_modules anywhere above, must run `--version`, `dn` and `check` (encrypted
 * key, chain, dual-use) exactly as the source does, `check` of a configuration with a CRL (parsed
 * by @peculiar/x509 in `x509.js`, which the core `require()`s beside `main.js` on first use), and
 * `demo`, whose test PKI needs @peculiar/x509 and so the reflect-metadata polyfill.
 *
 * It builds into a folder of its own (`--dir`), never into `dist/`, which the other e2e tests
 * are running (test/support/BuildArtefact.ts builds that one).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as TestPki from "@sleeve/testing/TestPki"
import { existsSync } from "node:fs"
import { chmod, cp, mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises"
import { isBuiltin } from "node:module"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { readyLine } from "../../src/Demo.ts"
import * as NodeFlags from "../../src/NodeFlags.ts"
import { appDir, lines, node, nodeBinDir, run, stopWhenReady } from "../support/Sleeve.ts"

let pki: TestPki.TestPki
let bundleDir = ""
const password = "bundle-key-password"

beforeAll(async () => {
  pki = await TestPki.make()
  const ca = await pki.ca({ name: "root" })
  const intermediate = await pki.intermediate(ca, { name: "intermediate" })
  await pki.leaf(intermediate, { name: "node", subject: [{ CN: "node" }, { O: "Bundle, Inc" }], keyPassword: password })
  await pki.write(
    "sleeve.yaml",
    `
tls:
  Mirror:
    type: server
    certificateFile: node.chain.pem
    privateKeyFile: node.key
    privateKeyPassword: { env: KEY_PASSWORD }
    caFile: ca-bundle.pem
    verifyPeer: require
    requireDualUse: true
listeners:
  - { name: in, mode: terminate, listen: "127.0.0.1:2188", target: "127.0.0.1:1972", tls: Mirror }
`
  )
  // A CRL from a CA that is not in caFile: refusing it names the issuer read from the parsed CRL.
  const foreign = await TestPki.make()
  try {
    const crl = await foreign.crl(await foreign.ca({ name: "foreign", subject: [{ CN: "Foreign Root" }] }))
    await pki.write("foreign.crl.pem", crl.pem)
  } finally {
    await foreign.cleanup()
  }
  await pki.write(
    "crl.yaml",
    (await readFile(join(pki.dir, "sleeve.yaml"), "utf8")).replace(
      "    caFile: ca-bundle.pem\n",
      "    caFile: ca-bundle.pem\n    crlFile: foreign.crl.pem\n"
    )
  )
  bundleDir = await mkdtemp(join(tmpdir(), "sleeve-bundle-"))
})

afterAll(async () => {
  await pki?.cleanup()
  if (bundleDir !== "") await rm(bundleDir, { recursive: true, force: true })
})

describe("bundle (dist/main.js and its chunks)", { timeout: 90_000 }, () => {
  it("builds with rolldown and runs from an empty folder without node_modules", async () => {
    const started = Date.now()
    const buildDir = join(bundleDir, "build")
    const build = await run(
      join(appDir, "node_modules/.bin/rolldown"),
      ["-c", "rolldown.config.ts", "--dir", buildDir],
      {
        cwd: appDir,
        env: { PATH: `${nodeBinDir}:${process.env.PATH ?? ""}` },
        timeoutMs: 80_000
      }
    )
    expect(build.code, build.stderr + build.stdout).toBe(0)
    const files = (await readdir(buildDir)).sort()
    expect(files).toContain("main.js")
    expect((await stat(join(buildDir, "main.js"))).mtimeMs).toBeGreaterThanOrEqual(started - 1000)
    // Only Node built-ins and the folder's own chunks are left to import at run time.
    const imports: Array<string | undefined> = []
    for (const file of files) {
      const code = await readFile(join(buildDir, file), "utf8")
      imports.push(
        ...[...code.matchAll(/(?:^|[;}])\s*import\s*(?:[^'"`;]*?from\s*)?["'`]([^"'`]+)["'`]/g)].map((m) => m[1])
      )
      imports.push(...[...code.matchAll(/\bimport\(\s*["'`]([^"'`]+)["'`]\s*\)/g)].map((m) => m[1]))
    }
    expect(imports.length).toBeGreaterThan(0)
    expect(
      imports.filter((s) => s === undefined || !(isBuiltin(s) || (s.startsWith("./") && files.includes(s.slice(2)))))
    ).toEqual([])

    const appFolder = join(bundleDir, "app")
    await cp(buildDir, appFolder, { recursive: true })
    await rm(buildDir, { recursive: true })
    const main = join(appFolder, "main.js")
    expect((await readdir(appFolder)).sort()).toEqual(files)
    // Nothing to fall back on: no node_modules in the folder or any folder above it.
    const above: Array<string> = []
    for (let d = bundleDir; ; d = dirname(d)) {
      if (existsSync(join(d, "node_modules"))) above.push(d)
      if (dirname(d) === d) break
    }
    expect(above).toEqual([])

    // The launcher: `#!/usr/bin/env -S node <V8 flags>` (src/NodeFlags.ts), and it runs as such.
    expect((await readFile(main, "utf8")).split("\n", 1)[0]).toBe(NodeFlags.shebang)
    expect(NodeFlags.shebang).toMatch(
      /^#!\/usr\/bin\/env -S node --max-semi-space-size=\d+ --initial-old-space-size=\d+$/
    )
    await chmod(main, 0o755)
    const direct = await run(main, ["--version"], {
      cwd: appFolder,
      env: { PATH: `${nodeBinDir}:${process.env.PATH ?? ""}` }
    })
    const pkg = JSON.parse(await readFile(join(appDir, "package.json"), "utf8")) as { version: string }
    expect(direct).toMatchObject({ code: 0, stdout: `sleeve ${pkg.version}\n`, stderr: "" })
    const [version, dn, check, checkNoPassword, checkCrl, demo] = await Promise.all([
      run(node, [main, "--version"], { cwd: appFolder }),
      run(node, [main, "dn", "--all", "node.chain.pem"], { cwd: pki.dir }),
      run(node, [main, "check", "--config", "sleeve.yaml"], { cwd: pki.dir, env: { KEY_PASSWORD: password } }),
      run(node, [main, "check", "--config", "sleeve.yaml"], { cwd: pki.dir }),
      run(node, [main, "check", "--config", "crl.yaml"], { cwd: pki.dir, env: { KEY_PASSWORD: password } }),
      stopWhenReady(node, [main, "demo"], { cwd: appFolder, ready: (out) => out.includes(readyLine), signal: "SIGINT" })
    ])
    expect(version.stdout).toBe(`sleeve ${pkg.version}\n`)
    expect(version.code).toBe(0)

    expect(lines(dn.stdout)).toEqual(["CN=node,O=Bundle\\, Inc", "CN=intermediate"])
    expect(dn.code).toBe(0)

    expect(check.stderr).toBe("")
    expect(lines(check.stdout)).toEqual(["sleeve.yaml: OK (1 TLS configuration, 1 listener)"])
    expect(check.code).toBe(0)

    expect(lines(checkNoPassword.stdout)).toEqual([
      "sleeve.yaml: tls.Mirror.privateKeyPassword: environment variable KEY_PASSWORD is not set (it should hold the key password)",
      "sleeve.yaml: 1 error"
    ])
    expect(checkNoPassword.code).toBe(1)

    expect(checkCrl.stderr).toBe("")
    expect(lines(checkCrl.stdout)).toEqual([
      'crl.yaml: tls.Mirror.crlFile: CRL #1 (issuer "CN=Foreign Root") was not issued by a CA in caFile; OpenSSL could not verify it and would reject every peer it applies to',
      "crl.yaml: 1 error"
    ])
    expect(checkCrl.code).toBe(1)

    expect(demo.signalled).toBe(true)
    expect(demo.stderr, demo.stderr).not.toMatch(/^sleeve: |^\s+at /m)
    expect(demo.code).toBe(0)
  })
})
