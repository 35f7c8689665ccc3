/**
 * The libraries as a stranger gets them from npm: `pnpm run pack` writes the tarballs, and a
 * scratch npm project outside the workspace (`npm init -y`, `npm install` of the three library
 * tarballs, third-party dependencies from the registry; no node_modules above it to fall back on)
 *
 * (a) runs a plain `.mjs` that opens a configuration with the Promise facade
 *     (`TlsConfigs.open` from @sleeve/proxy) and proxies a real mutual-TLS connection end to end
 *     — TLS in with `upgradeServer` (DN authorization), TLS out with `connect` to an upstream
 *     that checks the client certificate — on the repository's Node 24 and on the `engines`
 *     floor (Node 22.19.0); a peer outside `authorizedPeers` is refused with a typed error;
 *     subpath exports (`@sleeve/core/DistinguishedName`) resolve, `./internal/*` does not;
 * (a') runs the examples of the three package READMEs as written (the proxy one end to end);
 * (b) type-checks a `.ts` consumer against the published `.d.ts` with `tsc --noEmit`
 *     (`skipLibCheck: false`, so the declaration files themselves are checked), and shows that
 *     the types are real: a wrong call is a compile error.
 *
 * Certificates come from TestPki in this process; the consumer's runtime never sees
 * @sleeve/testing (it is not installed there).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Process from "@sleeve/testing/Process"
import * as TestPki from "@sleeve/testing/TestPki"
import { existsSync } from "node:fs"
import { readdir, readFile, rm, writeFile } from "node:fs/promises"
import { isBuiltin } from "node:module"
import type * as Net from "node:net"
import { join } from "node:path"
import * as Tls from "node:tls"
import * as Yaml from "yaml"
import {
  hasFloorNode,
  manifest,
  nodeFloor,
  nodeModulesAbove,
  npm,
  type Packed,
  packed,
  tarEntries,
  tarFile,
  userEnv
} from "../support/Pack.ts"
import { node, repoRoot } from "../support/Sleeve.ts"

const libraries = ["@sleeve/core", "@sleeve/proxy", "@sleeve/metrics"]

let pack: Packed
let pki: TestPki.TestPki
let client: TestPki.Identity
let intruder: TestPki.Identity
let upstream: Tls.Server
let upstreamPort = 0
const upstreamSockets = new Set<Net.Socket>()
let project = ""

/** The consumer's proxy: plaintext TCP accepted, secured with "Front", forwarded over "Back". */
const proxyMjs = `import { TlsConfigs } from "@sleeve/proxy"
import * as DistinguishedName from "@sleeve/core/DistinguishedName"
import * as net from "node:net"

const [configFile, upstream] = process.argv.slice(2)
const say = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }))

// a subpath export, and one that must stay closed
const dn = DistinguishedName.parse("cn=client, o=Consumer")
say("subpath", { dn: dn._tag === "Success" ? DistinguishedName.format(dn.success) : dn._tag })
await import("@sleeve/core/internal/x509").then(
  () => say("internal", { code: "resolved" }),
  (e) => say("internal", { code: e.code })
)

const sleeve = await TlsConfigs.open(configFile)
const server = net.createServer(async (socket) => {
  socket.on("error", () => {})
  try {
    const inbound = await sleeve.upgradeServer(socket, "Front")
    const outbound = await sleeve.connect("Back", upstream)
    say("proxying", { peer: inbound.getPeerCertificate().subject.CN })
    inbound.pipe(outbound).pipe(inbound)
    inbound.on("error", () => outbound.destroy())
    outbound.on("error", () => inbound.destroy())
  } catch (e) {
    say("refused", { tag: e._tag, reason: e.reason })
    socket.destroy()
  }
})
server.listen(0, "127.0.0.1", () => say("listening", { port: server.address().port, node: process.version }))
process.on("SIGTERM", () => server.close(() => process.exit(0)))
`

/** Type-checked against the published declarations; `wrong.ts` must not compile. */
const consumerTs = `import * as DistinguishedName from "@sleeve/core/DistinguishedName"
import { Metrics } from "@sleeve/metrics"
import { TlsConfigs } from "@sleeve/proxy"
import { Effect, Layer, Redacted } from "effect"
import type * as Net from "node:net"
import type * as Tls from "node:tls"

export const withPromises = async (accepted: Net.Socket): Promise<string> => {
  const sleeve: TlsConfigs.PromiseApi = await TlsConfigs.open("sleeve.yaml")
  const out: Tls.TLSSocket = await sleeve.connect("Back", "127.0.0.1:2188", { serverName: "localhost" })
  out.end("hello\\n")
  const secured = await sleeve.upgradeServer(accepted, "Front", { password: Redacted.make("interactive") })
  return String(secured.getPeerCertificate().subject.CN) + [...sleeve.config.tls.keys()].join(",")
}

export const withEffect = Effect.gen(function* () {
  const sleeve = yield* TlsConfigs.TlsConfigs
  const { socket } = yield* sleeve.connect("Back", "127.0.0.1:2188")
  socket.write("hello\\n")
}).pipe(
  Effect.scoped,
  Effect.provide(TlsConfigs.TlsConfigs.layerFromFile("sleeve.yaml").pipe(Layer.provide(Metrics.Metrics.layerNoop)))
)

export const parsed = DistinguishedName.parse("CN=node2,O=Example Corp")
`
const wrongTs = `import { TlsConfigs } from "@sleeve/proxy"
const sleeve = await TlsConfigs.open("sleeve.yaml")
export const n: number = await sleeve.connect("Back", 2188)
`

beforeAll(async () => {
  pack = await packed()
  pki = await TestPki.make()
  const ca = await pki.ca({ name: "root" })
  await pki.leaf(ca, { name: "front", subject: [{ CN: "front" }, { O: "Consumer" }] })
  await pki.leaf(ca, { name: "back", subject: [{ CN: "back" }, { O: "Consumer" }] })
  const up = await pki.leaf(ca, { name: "upstream", subject: [{ CN: "upstream" }, { O: "Consumer" }] })
  client = await pki.leaf(ca, { name: "client", subject: [{ CN: "client" }, { O: "Consumer" }] })
  intruder = await pki.leaf(ca, { name: "intruder", subject: [{ CN: "intruder" }, { O: "Consumer" }] })
  await pki.write(
    "sleeve.yaml",
    `
tls:
  Front:
    type: server
    certificateFile: front.crt
    privateKeyFile: front.key
    caFile: ca-bundle.pem
    verifyPeer: require
    authorizedPeers: ["CN=client,O=Consumer"]
  Back:
    type: client
    certificateFile: back.crt
    privateKeyFile: back.key
    caFile: ca-bundle.pem
    authorizedPeers: ["CN=upstream,O=Consumer"]
`
  )
  // The upstream application: TLS, requires a client certificate, answers with who it saw.
  upstream = Tls.createServer(
    { cert: up.certPem, key: up.keyPem, ca: pki.caPem, requestCert: true, rejectUnauthorized: true },
    (socket) => {
      upstreamSockets.add(socket)
      socket.on("close", () => upstreamSockets.delete(socket))
      socket.setEncoding("utf8")
      socket.on("data", (d: string) => socket.write(`upstream saw ${socket.getPeerCertificate().subject.CN}: ${d}`))
      socket.on("error", () => {})
    }
  )
  await new Promise<void>((resolve) => upstream.listen(0, "127.0.0.1", resolve))
  upstreamPort = (upstream.address() as Net.AddressInfo).port

  project = pki.dir
  const init = await npm(["init", "-y"], project)
  expect(init.code, init.stderr).toBe(0)
  const workspace = Yaml.parse(await readFile(join(repoRoot, "pnpm-workspace.yaml"), "utf8")) as {
    catalog: Record<string, string>
  }
  const install = await npm(
    [
      "install",
      ...libraries.map((name) => pack.tarball[name] as string),
      `typescript@${workspace.catalog.typescript}`,
      `@types/node@${workspace.catalog["@types/node"]}`
    ],
    project
  )
  expect(install.code, install.stderr).toBe(0)
  await writeFile(join(project, "proxy.mjs"), proxyMjs)
}, 400_000)

afterAll(async () => {
  for (const s of upstreamSockets) s.destroy()
  upstream?.close()
  await pki?.cleanup()
  if (pack !== undefined) await rm(pack.dir, { recursive: true, force: true })
})

/** One client connection through the consumer's proxy: what came back, or how it failed. */
const exchange = (port: number, who: TestPki.Identity): Promise<{ secured: boolean; reply: string; error?: string }> =>
  new Promise((resolve) => {
    let secured = false
    let reply = ""
    let error: string | undefined
    const socket = Tls.connect({ host: "127.0.0.1", port, ca: pki.caPem, cert: who.certPem, key: who.keyPem })
    socket.setEncoding("utf8")
    socket.on("secureConnect", () => {
      secured = true
      socket.write("hello\n")
    })
    socket.on("data", (d: string) => {
      reply += d
      if (reply.endsWith("\n")) socket.end()
    })
    socket.on("error", (e: NodeJS.ErrnoException) => {
      error = e.code ?? e.message
    })
    socket.on("close", () => resolve({ secured, reply, ...(error === undefined ? {} : { error }) }))
    socket.setTimeout(15_000, () => socket.destroy(new Error("client timeout")))
  })

/** Runs proxy.mjs on `nodeBin`, sends one authorized and one unauthorized client through it, stops it. */
const proxyThrough = async (nodeBin: string) => {
  const daemon = Process.startDaemon(nodeBin, ["proxy.mjs", "sleeve.yaml", `127.0.0.1:${upstreamPort}`], {
    cwd: project,
    env: userEnv(),
    killAfterMs: 60_000
  })
  try {
    await daemon.waitForOutput('"event":"listening"', { timeoutMs: 30_000 })
    const events = () =>
      daemon
        .stdout()
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l) as Record<string, unknown>)
    const listening = events().find((e) => e.event === "listening") as { port: number; node: string }
    expect(events().find((e) => e.event === "subpath")).toEqual({ event: "subpath", dn: "CN=client,O=Consumer" })
    expect(events().find((e) => e.event === "internal")).toEqual({
      event: "internal",
      code: "ERR_PACKAGE_PATH_NOT_EXPORTED"
    })

    const allowed = await exchange(listening.port, client)
    expect(allowed).toEqual({ secured: true, reply: "upstream saw back: hello\n" })
    const denied = await exchange(listening.port, intruder)
    expect(denied.reply).toBe("")
    await daemon.waitForOutput('"event":"refused"', { timeoutMs: 15_000 })
    expect(events().filter((e) => e.event === "proxying")).toEqual([{ event: "proxying", peer: "client" }])
    expect(events().find((e) => e.event === "refused")).toEqual({
      event: "refused",
      tag: "TlsSessionError",
      reason: "dn_rejected"
    })

    daemon.child.kill("SIGTERM")
    expect(await daemon.exited).toEqual({ code: 0, signal: null })
    expect(daemon.stderr()).toBe("")
    return listening.node
  } finally {
    await daemon.stop("SIGKILL")
  }
}

describe("the library packages from npm", { timeout: 240_000 }, () => {
  it("packs one tarball per published package with built JavaScript, declarations and manifests for npm", async () => {
    expect(pack.artifacts).toEqual([
      "sleeve-core-0.1.0.tgz",
      "sleeve-metrics-0.1.0.tgz",
      "sleeve-proxy-0.1.0.tgz",
      "sleeve-sidecar-0.1.0.tgz"
    ])
    for (const name of libraries) {
      const tgz = pack.tarball[name] as string
      const entries = await tarEntries(tgz)
      expect(entries).toContain("package/dist/index.js")
      expect(entries).toContain("package/dist/index.d.ts")
      expect(entries).toContain("package/LICENSE")
      expect(entries).toContain("package/README.md")
      // only what ships: no tests, no build configuration
      expect(
        entries.filter((e) => !/^package\/(dist|src)\/|^package\/(package\.json|README\.md|LICENSE)$/.test(e))
      ).toEqual([])
      const published = JSON.parse(await tarFile(tgz, "package/package.json")) as Record<string, unknown> & {
        dependencies: Record<string, string>
        exports: Record<string, unknown>
      }
      expect(published.private).toBeUndefined()
      expect(published.license).toBe("Apache-2.0")
      expect(published.engines).toEqual({ node: ">=22.19.0" })
      expect(published.exports["."]).toEqual({ types: "./dist/index.d.ts", default: "./dist/index.js" })
      expect(published.exports["./*"]).toEqual({ types: "./dist/*.d.ts", default: "./dist/*.js" })
      expect(published.exports["./internal/*"]).toBeNull()
      // workspace: and catalog: ranges became exact versions; nothing from @sleeve/testing at run time
      for (const [dep, range] of Object.entries(published.dependencies)) {
        expect(range, `${name} → ${dep}`).toMatch(/^\d+\.\d+\.\d+$/)
        expect(dep).not.toBe("@sleeve/testing")
      }
      // the repository itself still runs the sources
      const inRepo = await manifest(`packages/${name.split("/")[1]}`)
      expect((inRepo.exports as Record<string, string>)["."]).toBe("./src/index.ts")
    }
    // what the built JavaScript imports: Node built-ins, its own files, or a declared dependency
    for (const name of libraries) {
      const installed = join(project, "node_modules", name)
      const deps = Object.keys(
        (JSON.parse(await readFile(join(installed, "package.json"), "utf8")) as { dependencies: object }).dependencies
      )
      const files = (await readdir(join(installed, "dist"), { recursive: true })).filter((f) => f.endsWith(".js"))
      expect(files).toContain("index.js")
      let imports = 0
      for (const f of files) {
        const code = await readFile(join(installed, "dist", f), "utf8")
        const specs = [
          ...code.matchAll(/^\s*(?:import|export)\s[^;]*?\sfrom\s*["']([^"']+)["']/gm),
          ...code.matchAll(/^\s*import\s*["']([^"']+)["']/gm),
          ...code.matchAll(/\bimport\(\s*["']([^"']+)["']\s*\)/g)
        ].map((m) => m[1] ?? "")
        imports += specs.length
        for (const spec of specs) {
          if (spec.startsWith(".") || isBuiltin(spec)) continue
          const pkg = spec.startsWith("@") ? spec.split("/").slice(0, 2).join("/") : (spec.split("/")[0] ?? "")
          expect(deps, `${name}/dist/${f} imports ${spec}`).toContain(pkg)
        }
      }
      expect(imports, name).toBeGreaterThan(files.length)
    }
    expect(existsSync(join(project, "node_modules/@sleeve/testing"))).toBe(false)
    expect(nodeModulesAbove(project)).toEqual([])
  })

  it("(a) a plain .mjs proxies mutual TLS end to end with TlsConfigs.open on Node 24", async () => {
    expect(await proxyThrough(node)).toBe(process.version)
  })

  it.runIf(hasFloorNode)("(a) … and on the engines floor, Node 22.19.0", async () => {
    expect(await proxyThrough(await nodeFloor())).toBe("v22.19.0")
  })

  it("the @sleeve/proxy README's proxy.mjs runs as written and proxies mutual TLS", async () => {
    const readme = await readFile(join(repoRoot, "packages/proxy/README.md"), "utf8")
    const code = /`proxy\.mjs`:\n\n```js\n([\s\S]*?)\n```\n/.exec(readme)?.[1] ?? ""
    expect(code).toContain("TlsConfigs.open(")
    await writeFile(join(project, "readme-proxy.mjs"), code)
    const daemon = Process.startDaemon(node, ["readme-proxy.mjs", "sleeve.yaml", `127.0.0.1:${upstreamPort}`, "0"], {
      cwd: project,
      env: userEnv(),
      killAfterMs: 60_000
    })
    try {
      const out = await daemon.waitForOutput(/listening on 127\.0\.0\.1:\d+\n/, { timeoutMs: 30_000 })
      const port = Number(/listening on 127\.0\.0\.1:(\d+)/.exec(out)?.[1])
      expect(await exchange(port, client)).toEqual({ secured: true, reply: "upstream saw back: hello\n" })
      expect((await exchange(port, intruder)).reply).toBe("")
      expect(await daemon.waitForOutput("refused:", { stream: "stderr", timeoutMs: 15_000 })).toBe(
        "refused: TlsSessionError dn_rejected\n"
      )
    } finally {
      await daemon.stop("SIGTERM")
    }
  })

  it("the runnable examples of the @sleeve/core and @sleeve/metrics READMEs run as written", async () => {
    const example = async (pkg: string) => {
      const readme = await readFile(join(repoRoot, "packages", pkg, "README.md"), "utf8")
      const code = /\n```js\n([\s\S]*?)\n```\n/.exec(readme)?.[1] ?? ""
      expect(code, `${pkg}/README.md has a js example`).toContain(`@sleeve/${pkg}`)
      await writeFile(join(project, `readme-${pkg}.mjs`), code)
      return Process.run(node, [`readme-${pkg}.mjs`], { cwd: project, env: userEnv(), timeoutMs: 30_000 })
    }
    const [core, metrics] = await Promise.all([example("core"), example("metrics")])
    expect(core.stderr).toBe("")
    expect(core.stdout).toBe(
      'CN=node2,O=Example Corp true\nsleeve.yaml: tls.Front.type: expected "client" | "server" | "mirror", got "sever"\n'
    )
    expect(metrics.stderr).toBe("")
    expect(metrics.stdout).toContain("# HELP sleeve_tls_handshakes_total ")
  })

  it("(b) a .ts consumer type-checks against the published declarations; a wrong call does not", async () => {
    const tsconfig = {
      compilerOptions: {
        target: "ES2024",
        module: "NodeNext",
        moduleResolution: "NodeNext",
        types: ["node"],
        strict: true,
        exactOptionalPropertyTypes: true,
        skipLibCheck: false,
        noEmit: true
      }
    }
    await writeFile(join(project, "tsconfig.json"), JSON.stringify({ ...tsconfig, files: ["consumer.mts"] }))
    await writeFile(join(project, "tsconfig.wrong.json"), JSON.stringify({ ...tsconfig, files: ["wrong.mts"] }))
    await writeFile(join(project, "consumer.mts"), consumerTs)
    await writeFile(join(project, "wrong.mts"), wrongTs)
    const tsc = join(project, "node_modules/typescript/bin/tsc")
    const env = userEnv()
    const [ok, wrong] = await Promise.all([
      Process.run(node, [tsc, "--noEmit", "-p", "tsconfig.json"], { cwd: project, env, timeoutMs: 120_000 }),
      Process.run(node, [tsc, "--noEmit", "-p", "tsconfig.wrong.json"], { cwd: project, env, timeoutMs: 120_000 })
    ])
    expect(ok.stdout + ok.stderr).toBe("")
    expect(ok.code).toBe(0)
    expect(wrong.code).not.toBe(0)
    expect(wrong.stdout).toMatch(
      /wrong\.mts\(3,\d+\): error TS2345: Argument of type 'number' is not assignable to parameter of type 'string'/
    )
    expect(wrong.stdout).toMatch(
      /wrong\.mts\(3,\d+\): error TS2322: Type 'TLSSocket' is not assignable to type 'number'/
    )
  })
})
