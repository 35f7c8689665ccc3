/**
 * `npm install -g` of the CLI tarball, as an operator without pnpm or a clone would: the tarball
 * from `pnpm run pack` holds the bundle (`dist/`) and a manifest with `bin.sleeve` and no runtime
 * dependencies; installed into a temporary prefix, `sleeve` is on PATH and, on the repository's
 * Node 24 and on the `engines` floor (Node 22.19.0), prints its version, a certificate's DN,
 * checks a configuration, and runs: one real mutual-TLS connection goes through a `terminate`
 * listener to a plaintext echo application, and SIGTERM ends it with exit code 0. npm's bin link
 * is a symlink to `dist/main.js`, so its shebang (`#!/usr/bin/env -S node <V8 flags>`,
 * src/NodeFlags.ts) is the launcher: the running `sleeve` has the V8 flags on its command line.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Process from "@sleeve/testing/Process"
import * as TestPki from "@sleeve/testing/TestPki"
import { existsSync, realpathSync } from "node:fs"
import { mkdtemp, readFile, rm } from "node:fs/promises"
import * as Net from "node:net"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import * as NodeFlags from "../../src/NodeFlags.ts"
import {
  hasFloorNode,
  manifest,
  nodeFloor,
  nodeModulesAbove,
  npm,
  type Packed,
  packed,
  systemPath,
  tarEntries,
  tarFile,
  userEnv
} from "../support/Pack.ts"
import { node } from "../support/Sleeve.ts"
import { exchange } from "../support/TlsClient.ts"

let pack: Packed
let pki: TestPki.TestPki
let client: TestPki.Identity
let intruder: TestPki.Identity
let node1: TestPki.Identity
let prefix = ""
let echo: Net.Server
let echoPort = 0
const echoSockets = new Set<Net.Socket>()
let configFile = ""

beforeAll(async () => {
  pack = await packed()
  pki = await TestPki.make()
  const ca = await pki.ca({ name: "root" })
  node1 = await pki.leaf(ca, { name: "node1", subject: [{ CN: "node1" }, { OU: "Mirror" }, { O: "Install, Inc" }] })
  client = await pki.leaf(ca, { name: "client", subject: [{ CN: "client" }, { O: "Install, Inc" }] })
  intruder = await pki.leaf(ca, { name: "intruder", subject: [{ CN: "intruder" }, { O: "Install, Inc" }] })
  echo = Net.createServer((s) => {
    echoSockets.add(s)
    s.on("close", () => echoSockets.delete(s))
    s.on("error", () => {})
    s.pipe(s)
  })
  await new Promise<void>((resolve) => echo.listen(0, "127.0.0.1", resolve))
  echoPort = (echo.address() as Net.AddressInfo).port
  configFile = await pki.write(
    "sleeve.yaml",
    `
tls:
  Front:
    type: server
    certificateFile: node1.crt
    privateKeyFile: node1.key
    caFile: ca-bundle.pem
    verifyPeer: require
    authorizedPeers: ["CN=client,O=Install\\\\, Inc"]
listeners:
  - { name: app-in, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${echoPort}", tls: Front }
admin:
  listen: "127.0.0.1:0"
`
  )
  prefix = await mkdtemp(join(tmpdir(), "sleeve-prefix-"))
  const installed = await npm(["install", "-g", "--prefix", prefix, pack.tarball["@sleeve/sidecar"] as string], pki.dir)
  expect(installed.code, installed.stderr).toBe(0)
}, 300_000)

afterAll(async () => {
  for (const s of echoSockets) s.destroy()
  echo?.close()
  await pki?.cleanup()
  if (prefix !== "") await rm(prefix, { recursive: true, force: true })
  if (pack !== undefined) await rm(pack.dir, { recursive: true, force: true })
})

/** The environment of an operator's shell with `nodeBin` as the `node` on PATH and the prefix's bin first. */
const shell = (nodeBin: string) =>
  userEnv({ PATH: [join(prefix, "bin"), dirname(realpathSync(nodeBin)), systemPath()].join(":") })

/** `sleeve …` as the shell finds it. */
const sleeve = (nodeBin: string, args: ReadonlyArray<string>) =>
  Process.run("sleeve", args, { cwd: pki.dir, env: shell(nodeBin), timeoutMs: 30_000 })

const runsEverywhere = async (nodeBin: string, nodeVersion: string) => {
  const env = shell(nodeBin)
  // the `node` that `#!/usr/bin/env node` finds is the one under test, and `sleeve` is the installed one
  const which = await Process.run("sh", ["-c", "node --version && command -v sleeve"], { env, timeoutMs: 20_000 })
  expect(which.stdout).toBe(`${nodeVersion}\n${join(prefix, "bin/sleeve")}\n`)

  const version = (await manifest("apps/sidecar")).version
  const [v, dn, check] = await Promise.all([
    sleeve(nodeBin, ["--version"]),
    sleeve(nodeBin, ["dn", "node1.crt"]),
    sleeve(nodeBin, ["check", "-c", "sleeve.yaml"])
  ])
  expect(v).toMatchObject({ code: 0, stdout: `sleeve ${version}\n`, stderr: "" })
  expect(dn).toMatchObject({ code: 0, stdout: `${node1.subject}\n`, stderr: "" })
  expect(node1.subject).toBe("CN=node1,OU=Mirror,O=Install\\, Inc")
  expect(check).toMatchObject({ code: 0, stdout: `sleeve.yaml: OK (1 TLS configuration, 1 listener)\n`, stderr: "" })

  const daemon = Process.startDaemon("sleeve", ["run", "-c", configFile], {
    cwd: pki.dir,
    env,
    stdin: "pipe",
    killAfterMs: 60_000
  })
  try {
    await daemon.waitForOutput('"event":"ready"', { timeoutMs: 30_000 })
    // The shebang's `env -S` handed the V8 flags to node: they are on the process's command line.
    const argv = (await readFile(`/proc/${daemon.child.pid}/cmdline`, "utf8")).split("\0").slice(0, -1)
    expect(argv).toEqual(["node", ...NodeFlags.v8Flags, join(prefix, "bin/sleeve"), "run", "-c", configFile])
    const listening = daemon
      .stdout()
      .split("\n")
      .filter((l) => l.includes('"event":"listening"'))
      .map((l) => JSON.parse(l) as { listener: string; address: string })
    expect(listening.map((l) => l.listener)).toEqual(["app-in"])
    const port = Number(/:(\d+)$/.exec(listening[0]?.address ?? "")?.[1])
    expect(port).toBeGreaterThan(0)
    expect(await exchange(port, pki.caPem, client, "through the installed sleeve\n")).toEqual({
      secured: true,
      echoed: "through the installed sleeve\n",
      error: undefined
    })
    const denied = await exchange(port, pki.caPem, intruder, "not me\n")
    expect(denied.echoed).toBe("")
    await daemon.waitForOutput('"event":"peer_rejected"', { timeoutMs: 15_000 })
    daemon.child.kill("SIGTERM")
    expect(await daemon.exited).toEqual({ code: 0, signal: null })
    expect(daemon.stdout()).toContain('"event":"stopped"')
    expect(daemon.stderr()).toBe("")
  } finally {
    await daemon.stop("SIGKILL")
  }
}

describe("npm install -g @sleeve/sidecar", { timeout: 180_000 }, () => {
  it("the CLI tarball holds the bundle, bin.sleeve and no runtime dependencies", async () => {
    const tgz = pack.tarball["@sleeve/sidecar"] as string
    const entries = await tarEntries(tgz)
    expect(entries).toContain("package/dist/main.js")
    expect(entries.filter((e) => !/^package\/dist\/|^package\/(package\.json|README\.md|LICENSE)$/.test(e))).toEqual([])
    const published = JSON.parse(await tarFile(tgz, "package/package.json")) as Record<string, unknown>
    expect(published.bin).toEqual({ sleeve: "dist/main.js" })
    expect(published.dependencies).toBeUndefined()
    expect(published.private).toBeUndefined()
    expect(published.engines).toEqual({ node: ">=22.19.0" })
    const shebang = (await tarFile(tgz, "package/dist/main.js")).split("\n", 1)[0]
    expect(shebang).toBe(NodeFlags.shebang)
    expect(shebang).toBe("#!/usr/bin/env -S node --max-semi-space-size=2 --initial-old-space-size=128")
    // installed: the bundle and nothing else, nowhere to fall back on
    const installed = join(prefix, "lib/node_modules/@sleeve/sidecar")
    expect(realpathSync(join(prefix, "bin/sleeve"))).toBe(join(installed, "dist/main.js"))
    expect(existsSync(join(installed, "node_modules"))).toBe(false)
    expect(nodeModulesAbove(prefix)).toEqual([])
  })

  it("sleeve --version, dn, check and run on Node 24", async () => {
    await runsEverywhere(node, process.version)
  })

  it.runIf(hasFloorNode)("sleeve --version, dn, check and run on the engines floor, Node 22.19.0", async () => {
    await runsEverywhere(await nodeFloor(), "v22.19.0")
  })
})
