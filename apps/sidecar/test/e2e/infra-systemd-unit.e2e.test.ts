/**
 * infra/systemd/sleeve.service and its drop-ins, checked with systemd's own tools (Debian's
 * `systemd` package; no running systemd is needed) and against a real `sleeve run`:
 *
 * - `systemd-analyze verify` accepts the unit, alone and with every drop-in of
 *   infra/systemd/drop-ins, and prints nothing. verify insists that ExecStart's binary exists,
 *   so it runs on a copy whose only change is that path (to a real executable);
 * - the settings that matter, field by field: `Type=exec` (Sleeve sends no sd_notify),
 *   SIGHUP reload, restart on failure, SIGTERM with a stop timeout above the default
 *   `drainTimeout`, a dynamic user, no capabilities, the sandbox, no secret in the unit, no
 *   `MemoryDenyWriteExecute`;
 * - `systemd-analyze security --offline=yes` rates it as docs/deployment.md says, and every
 *   exposure it still reports is one the docs explain; the low-port drop-in adds exactly the
 *   capability and the host user namespace, nothing else;
 * - the sandbox does not break Sleeve: a `sleeve run` under `strace -f` (start with an
 *   encrypted key whose password is read from an absolute credentials-style path, a host-name
 *   target, a mutual-TLS connection, a SIGHUP reload, a SIGTERM drain) makes only system calls
 *   the unit's `SystemCallFilter=` allows and opens only socket families its
 *   `RestrictAddressFamilies=` allows, and V8 does map writable+executable memory (why
 *   `MemoryDenyWriteExecute` stays off). The wait-ready drop-in's command waits for that sidecar.
 *   It is started as ExecStart starts it, through the artefact's own file: its shebang
 *   (`#!/usr/bin/env -S node <V8 flags>`, src/NodeFlags.ts) runs env, which runs node with the
 *   V8 flags, and both are traced.
 *
 * Without systemd-analyze or strace the suite fails, naming the package; it never skips.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as ConfigFile from "@sleeve/core/ConfigFile"
import { listen } from "@sleeve/testing/Net"
import * as TestPki from "@sleeve/testing/TestPki"
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises"
import * as Net from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { request } from "undici"
import * as NodeFlags from "../../src/NodeFlags.ts"
import { startDaemon } from "../support/Prometheus.ts"
import { fromSource, main, node, nodeBinDir, repoRoot, run } from "../support/Sleeve.ts"
import { exchange } from "../support/TlsClient.ts"

const unitFile = join(repoRoot, "infra/systemd/sleeve.service")
const dropInDir = join(repoRoot, "infra/systemd/drop-ins")
const installedSleeve = "/usr/local/bin/sleeve"

// ---------------------------------------------------------------------------------------------
// A unit file, as systemd.syntax(7) reads it: sections, `Key=value` lines (a key may repeat),
// comments (`#`, `;`), line continuations (a trailing backslash).
// ---------------------------------------------------------------------------------------------

type Unit = ReadonlyMap<string, ReadonlyArray<readonly [string, string]>>

const parseUnit = (text: string): Unit => {
  const sections = new Map<string, Array<readonly [string, string]>>()
  let current: Array<readonly [string, string]> | undefined
  const joined = text.replace(/\\\n/g, " ")
  for (const raw of joined.split("\n")) {
    const line = raw.trim()
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue
    const section = /^\[(.+)\]$/.exec(line)
    if (section) {
      current = []
      sections.set(section[1]!, current)
      continue
    }
    const eq = line.indexOf("=")
    if (current === undefined || eq < 1) throw new Error(`not a unit file line: ${raw}`)
    current.push([line.slice(0, eq).trim(), line.slice(eq + 1).trim()])
  }
  return sections
}

/** Every value of `key` in `section`, in order (an empty value resets a list setting). */
const all = (unit: Unit, section: string, key: string): ReadonlyArray<string> =>
  (unit.get(section) ?? []).filter(([k]) => k === key).map(([, v]) => v)

/** The value in force of a single-valued `key` (the last one), or undefined. */
const one = (unit: Unit, section: string, key: string): string | undefined => all(unit, section, key).at(-1)

/** A systemd time span such as `45s`, `1min 30s` or `2m`, in milliseconds. */
const timespanMs = (text: string): number => {
  const units: Record<string, number> = { ms: 1, s: 1000, sec: 1000, m: 60_000, min: 60_000, h: 3_600_000 }
  let total = 0
  for (const part of text.trim().split(/\s+/)) {
    const m = /^(\d+(?:\.\d+)?)([a-z]*)$/.exec(part)
    if (!m || units[m[2] || "s"] === undefined) throw new Error(`time span not understood: ${text}`)
    total += Number(m[1]) * units[m[2] || "s"]!
  }
  return total
}

// ---------------------------------------------------------------------------------------------
// systemd-analyze
// ---------------------------------------------------------------------------------------------

const missing = (what: string, pkg: string) => (e: unknown) => {
  throw new Error(`${what} did not run: install Debian's \`${pkg}\` package (.ci/debian-deps does it): ${String(e)}`)
}

const analyze = async (...args: ReadonlyArray<string>) => {
  const r = await run("systemd-analyze", args, { timeoutMs: 60_000 }).catch(missing("systemd-analyze", "systemd"))
  return { code: r.code, stdout: r.stdout, stderr: r.stderr }
}

let unitText = ""
let unit: Unit
let work = ""
/** The copy of the unit that verify reads: only ExecStart's binary differs. */
let copy = ""
let dropIns: ReadonlyArray<string> = []

/** Writes the copy in a fresh folder with the given drop-ins beside it; returns the unit's path. */
const stage = async (name: string, withDropIns: ReadonlyArray<string>): Promise<string> => {
  const dir = join(work, name)
  await mkdir(join(dir, "sleeve.service.d"), { recursive: true })
  await writeFile(join(dir, "sleeve.service"), copy)
  for (const d of withDropIns) await writeFile(join(dir, "sleeve.service.d", d), await readFile(join(dropInDir, d)))
  return join(dir, "sleeve.service")
}

interface SecurityItem {
  readonly json_field: string
  readonly set: boolean
  readonly exposure: number | null
}

const security = async (path: string) => {
  const table = await analyze("security", "--offline=yes", path)
  const json = await analyze("security", "--offline=yes", "--json=short", path)
  expect(json.code, json.stderr).toBe(0)
  const score = /Overall exposure level for sleeve\.service: (\d+\.\d+)/.exec(table.stdout)
  expect(score, table.stdout + table.stderr).not.toBeNull()
  const items = JSON.parse(json.stdout) as ReadonlyArray<SecurityItem>
  return {
    score: score![1]!,
    exposed: items
      .filter((i) => (i.exposure ?? 0) > 0)
      .map((i) => i.json_field)
      .sort()
  }
}

beforeAll(async () => {
  unitText = await readFile(unitFile, "utf8")
  unit = parseUnit(unitText)
  dropIns = (await readdir(dropInDir)).filter((f) => f.endsWith(".conf")).sort()
  work = await mkdtemp(join(tmpdir(), "sleeve-systemd-"))
  const fake = join(work, "sleeve")
  await writeFile(fake, "#!/bin/sh\nexit 0\n")
  await chmod(fake, 0o755)
  copy = unitText.replace(`\nExecStart=${installedSleeve} `, `\nExecStart=${fake} `)
})

afterAll(async () => {
  if (work !== "") await rm(work, { recursive: true, force: true })
})

describe("infra/systemd/sleeve.service", { timeout: 60_000 }, () => {
  it("the verified copy differs from the committed unit only in ExecStart's binary", () => {
    const a = unitText.split("\n")
    const b = copy.split("\n")
    expect(b.length).toBe(a.length)
    const changed = a.flatMap((line, i) => (line === b[i] ? [] : [[line, b[i]]]))
    expect(changed).toEqual([
      [
        `ExecStart=${installedSleeve} run --config /etc/sleeve/sleeve.yaml`,
        `ExecStart=${join(work, "sleeve")} run --config /etc/sleeve/sleeve.yaml`
      ]
    ])
  })

  it("systemd-analyze verify accepts it and prints nothing, alone and with each drop-in", async () => {
    expect(dropIns).toEqual(["key-password.conf", "low-port.conf", "static-user.conf", "wait-ready.conf"])
    for (const [name, withDropIns] of [
      ["alone", []],
      ...dropIns.map((d) => [d, [d]] as const),
      ["all", dropIns]
    ] as const) {
      const r = await analyze("verify", await stage(name, withDropIns))
      expect({ name, ...r }).toEqual({ name, code: 0, stdout: "", stderr: "" })
    }
  })

  it("a broken unit fails verify (the check is live)", async () => {
    const path = await stage("broken", [])
    await writeFile(path, copy.replace("KillSignal=SIGTERM", "KillSignal=SIGNOTASIGNAL"))
    const r = await analyze("verify", path)
    expect(r.stderr).toContain("SIGNOTASIGNAL")
  })

  it("runs `sleeve run` as Type=exec, reloads with SIGHUP, restarts on failure, drains on SIGTERM", () => {
    expect(one(unit, "Service", "Type")).toBe("exec")
    expect(one(unit, "Service", "ExecStart")).toBe(`${installedSleeve} run --config /etc/sleeve/sleeve.yaml`)
    expect(one(unit, "Service", "ExecReload")).toBe("/bin/kill -HUP $MAINPID")
    expect(one(unit, "Service", "Restart")).toBe("on-failure")
    expect(one(unit, "Service", "KillSignal")).toBe("SIGTERM")
    // systemd must not SIGKILL a drain that is still within drainTimeout (default 30 s).
    const stopMs = timespanMs(one(unit, "Service", "TimeoutStopSec")!)
    expect(stopMs).toBeGreaterThan(ConfigFile.defaults.drainTimeoutMs)
    expect(stopMs).toBeGreaterThanOrEqual(ConfigFile.defaults.drainTimeoutMs + 10_000)
    expect(one(unit, "Install", "WantedBy")).toBe("multi-user.target")
  })

  it("Type=notify would hang: nothing in the sidecar sends sd_notify", async () => {
    const sources = await readdir(join(repoRoot, "apps/sidecar/src"), { recursive: true })
    for (const f of sources.filter((s) => s.endsWith(".ts"))) {
      expect(await readFile(join(repoRoot, "apps/sidecar/src", f), "utf8"), f).not.toContain("NOTIFY_SOCKET")
    }
    expect(one(unit, "Service", "NotifyAccess")).toBeUndefined()
  })

  it("sandbox: dynamic user, no capabilities, read-only system, no home, private /tmp, no MDWE", () => {
    const expected: Record<string, string> = {
      DynamicUser: "yes",
      NoNewPrivileges: "yes",
      ProtectSystem: "strict",
      ProtectHome: "yes",
      PrivateTmp: "yes",
      PrivateDevices: "yes",
      PrivateUsers: "yes",
      ProtectKernelTunables: "yes",
      ProtectKernelModules: "yes",
      ProtectControlGroups: "yes",
      RestrictSUIDSGID: "yes",
      RestrictNamespaces: "yes",
      LockPersonality: "yes",
      SystemCallArchitectures: "native",
      UMask: "0077"
    }
    for (const [key, value] of Object.entries(expected)) expect(one(unit, "Service", key), key).toBe(value)
    // Empty: no capability at all (a port below 1024 is the low-port drop-in).
    expect(all(unit, "Service", "CapabilityBoundingSet")).toEqual([""])
    expect(all(unit, "Service", "AmbientCapabilities")).toEqual([""])
    expect(one(unit, "Service", "MemoryDenyWriteExecute")).toBeUndefined()
    expect(one(unit, "Service", "SystemCallErrorNumber")).toBe("EPERM")
    // No secret, and no environment at all, in the unit itself.
    expect(unitText).not.toMatch(/^\s*(Environment|LoadCredential|SetCredential)\w*=/m)
  })

  it("systemd-analyze security: the documented score; each remaining exposure is explained", async () => {
    const base = await security(await stage("security", []))
    expect(base.exposed).toEqual([
      "DeviceAllow", // char-rtc:r, which ProtectClock= itself adds
      "IPAddressDeny", // where Sleeve may connect is the configuration's business
      "MemoryDenyWriteExecute", // V8's JIT (asserted below, from a real run)
      "PrivateNetwork", // a network proxy
      "ProcSubset", // Node reads /proc/meminfo at start
      "RestrictAddressFamilies_AF_INET_INET6",
      "RestrictAddressFamilies_AF_NETLINK",
      "RestrictAddressFamilies_AF_UNIX",
      "RootDirectoryOrRootImage" // the installed Node and sleeve live in the host's /usr
    ])
    const docs = await readFile(join(repoRoot, "docs/deployment.md"), "utf8")
    expect(docs).toContain(`exposure level **${base.score}**`)
    expect(unitText).toContain(`rates it ${base.score} (OK)`)
    const gate = await analyze("security", "--offline=yes", "--threshold=15", await stage("threshold", []))
    expect(gate.code, gate.stdout).toBe(0)

    // The low-port drop-in opens exactly CAP_NET_BIND_SERVICE (ambient) and the host user namespace.
    const lowPort = await security(await stage("security-low-port", ["low-port.conf"]))
    expect(lowPort.exposed.filter((f) => !base.exposed.includes(f))).toEqual([
      "AmbientCapabilities",
      "CapabilityBoundingSet_CAP_NET_BIND_SERVICE_BROADCAST_RAW)",
      "PrivateUsers"
    ])
    expect(docs).toContain(`at **${lowPort.score}** with \`drop-ins/low-port.conf\``)
  })
})

// ---------------------------------------------------------------------------------------------
// The sandbox against a real run
// ---------------------------------------------------------------------------------------------

/** `systemd-analyze syscall-filter @group…`, expanded recursively into system call names. */
const expandFilter = async (names: ReadonlyArray<string>, seen = new Set<string>()): Promise<Set<string>> => {
  const out = new Set<string>()
  for (const name of names) {
    if (!name.startsWith("@")) {
      out.add(name)
      continue
    }
    if (seen.has(name)) continue
    seen.add(name)
    const r = await analyze("syscall-filter", name)
    expect(r.code, r.stderr).toBe(0)
    const members = r.stdout
      .split("\n")
      .slice(1)
      .map((l) => l.trim())
      .filter((l) => l !== "" && !l.startsWith("#"))
    for (const s of await expandFilter(members, seen)) out.add(s)
  }
  return out
}

describe("the unit's sandbox against a real `sleeve run` under strace", { timeout: 120_000 }, () => {
  it("every system call and socket family is allowed; V8 maps W+X memory; wait-ready waits", async () => {
    await using pki = await TestPki.make()
    const root = await pki.ca({ name: "root" })
    await pki.leaf(root, { name: "server", keyPassword: "correct horse" })
    const alice = await pki.leaf(root, { name: "alice" })
    await pki.write("trust.pem", root.certPem)
    // Where LoadCredential= puts the password (here under the test's folder), with the
    // trailing newline an editor leaves.
    const credentials = join(pki.dir, "run/credentials/sleeve.service")
    await mkdir(credentials, { recursive: true })
    const password = await pki.write(join(credentials, "sleeve-key-password"), "correct horse\n")
    await chmod(password, 0o400)

    const echo = Net.createServer((s) => {
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
  Server:
    type: server
    certificateFile: server.crt
    privateKeyFile: server.key
    privateKeyPassword: { file: ${password} }
    caFile: trust.pem
    verifyPeer: require
    authorizedPeers: ["CN=alice"]
listeners:
  - { name: in, mode: terminate, listen: "127.0.0.1:0", target: "localhost:${echoPort}", tls: Server }
`
    )
    const trace = join(pki.dir, "strace.txt")
    /** The listener's port, once it is up. */
    let port = 0
    // As ExecStart runs /usr/local/bin/sleeve (npm's link to dist/main.js, made executable by
    // npm): the file itself, so its shebang's env and node are traced (the sources: node main.ts).
    if (!fromSource) await chmod(main, 0o755)
    const launch = fromSource ? [node, main] : [main]
    const daemon = startDaemon(
      "strace",
      ["-f", "-qq", "-o", trace, ...launch, "run", "--config", join(pki.dir, "sleeve.yaml")],
      { cwd: pki.dir, env: { PATH: `${nodeBinDir}:${process.env.PATH ?? ""}` } }
    )
    try {
      const readyLine = await daemon.waitForOutput(/"event":"ready".*\n/, { timeoutMs: 60_000 }).catch((e) => {
        if (/spawn failed/.test(daemon.stderr())) missing("strace", "strace")(e)
        throw e
      })
      const ready = JSON.parse(readyLine.split("\n").find((l) => l.includes('"event":"ready"'))!) as {
        admin: string
        listeners: ReadonlyArray<{ name: string; listen: string }>
      }
      port = Number(ready.listeners[0]!.listen.split(":").at(-1))
      // The traced process is strace's child: signals go to it, not to strace.
      const sleevePid = Number(
        (await readFile(`/proc/${daemon.child.pid}/task/${daemon.child.pid}/children`, "utf8")).trim().split(" ")[0]
      )
      expect(sleevePid).toBeGreaterThan(0)
      if (!fromSource) {
        const argv = (await readFile(`/proc/${sleevePid}/cmdline`, "utf8")).split("\0").slice(0, -1)
        expect(argv).toEqual(["node", ...NodeFlags.v8Flags, main, "run", "--config", join(pki.dir, "sleeve.yaml")])
      }

      // wait-ready.conf's command, pointed at this sidecar's admin endpoint.
      const waitReady = parseUnit(await readFile(join(dropInDir, "wait-ready.conf"), "utf8"))
      const [curl, ...curlArgs] = one(waitReady, "Service", "ExecStartPost")!.split(" ")
      const waited = await run(
        curl!,
        curlArgs.map((a) => a.replace("http://127.0.0.1:9464", ready.admin)),
        { timeoutMs: 60_000 }
      )
      expect(waited, waited.stderr).toMatchObject({ code: 0 })

      expect(await exchange(port, root.certPem, alice)).toMatchObject({ secured: true, echoed: "ping\n" })
      const metrics = await request(`${ready.admin}/metrics`)
      expect(metrics.statusCode).toBe(200)
      await metrics.body.text()
      process.kill(sleevePid, "SIGHUP")
      await daemon.waitForOutput('"event":"reloaded"', { timeoutMs: 30_000 })
      expect(await exchange(port, root.certPem, alice)).toMatchObject({ secured: true, echoed: "ping\n" })
      process.kill(sleevePid, "SIGTERM")
      expect(await daemon.exited).toEqual({ code: 0, signal: null })
    } finally {
      await daemon.stop("SIGKILL")
      await new Promise((r) => echo.close(r))
    }

    const text = await readFile(trace, "utf8")
    const used = new Set([...text.matchAll(/^\d+\s+([a-z0-9_]+)\(/gm)].map((m) => m[1]!))
    expect(used.has("execve") && used.has("accept4") && used.has("connect"), [...used].join(" ")).toBe(true)

    // SystemCallFilter=: allowed = union of the allow lists, minus the `~` deny lists.
    const filters = all(unit, "Service", "SystemCallFilter")
    const allow = await expandFilter(filters.filter((f) => !f.startsWith("~")).flatMap((f) => f.split(/\s+/)))
    const deny = await expandFilter(filters.filter((f) => f.startsWith("~")).flatMap((f) => f.slice(1).split(/\s+/)))
    expect(allow.size).toBeGreaterThan(100)
    expect(deny.has("setuid") && deny.has("sched_setaffinity")).toBe(true)
    expect([...used].filter((s) => !allow.has(s) || deny.has(s))).toEqual([])

    // RestrictAddressFamilies=
    const families = new Set(one(unit, "Service", "RestrictAddressFamilies")!.split(/\s+/))
    const opened = new Set([...text.matchAll(/\bsocket\((AF_[A-Z0-9]+)/g)].map((m) => m[1]!))
    expect(opened.has("AF_INET")).toBe(true)
    expect([...opened].filter((f) => !families.has(f))).toEqual([])

    // Nagle is off on both legs, as in the C proxies: every socket accepted on the listener and
    // every socket dialled to the target gets TCP_NODELAY (with it on, handshakes waited for
    // delayed ACKs: docs/performance.md). strace -f prefixes each line with the pid.
    const fdsOf = (re: RegExp) => [...text.matchAll(re)].map((m) => `${m[1]} ${m[2]}`)
    const noDelay = new Set(fdsOf(/^(\d+)\s+setsockopt\((\d+), (?:SOL_TCP|IPPROTO_TCP), TCP_NODELAY, \[1\]/gm))
    // Every accepted socket: the listener's two connections and the admin endpoint's (Node's
    // HTTP server sets TCP_NODELAY on its own).
    const accepted = [...text.matchAll(/^(\d+)\s+accept4\(\d+, .*\) = (\d+)$/gm)].map((m) => `${m[1]} ${m[2]}`)
    const dialled = fdsOf(
      new RegExp(`^(\\d+)\\s+connect\\((\\d+), \\{sa_family=AF_INET6?, sin6?_port=htons\\(${echoPort}\\)`, "gm")
    )
    expect(accepted.length).toBeGreaterThanOrEqual(3)
    expect(dialled.length).toBe(2)
    expect([...accepted, ...dialled].filter((fd) => !noDelay.has(fd))).toEqual([])

    // What MemoryDenyWriteExecute=yes would forbid, and why the unit leaves it off.
    expect(text).toMatch(/\b(mmap|mprotect)\([^)]*PROT_WRITE\|PROT_EXEC/)
    // What ProcSubset=pid would hide, and why the unit leaves it off.
    expect(text).toContain('"/proc/meminfo"')
  })
})
