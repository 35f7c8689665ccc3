/**
 * docs/iris-mapping.md stays true. Every IRIS `OPEN`/`USE` statement in the guide is parsed with
 * `TcpDevice` (device name with `parseDevice`, parameters with `parseOpen`/`parseUse`). Each row
 * of its device table must parse as the type it names, with the TLS configuration it names, and
 * map to the listener mode and library verb it names. That listener is then written into a
 * configuration and decoded with `ConfigFile.decode`: the mode, the side and the TLS
 * configuration's type must be a combination Sleeve accepts. The `TcpDevice` code sample's
 * claimed results are checked against the real functions, and every YAML example in the guide
 * decodes as a Sleeve configuration. In the operator guides written with
 * it (quickstart, IRIS mapping, deployment), every relative link, every `#anchor` and every
 * repository path named in backticks must exist.
 */
import { describe, expect, it } from "@effect/vitest"
import * as ConfigFile from "@sleeve/core/ConfigFile"
import * as TcpDevice from "@sleeve/core/TcpDevice"
import { Redacted, Result } from "effect"
import { existsSync, readFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { repoRoot } from "../support/Sleeve.ts"

const guide = readFileSync(join(repoRoot, "docs/iris-mapping.md"), "utf8")
/** The guide with GFM's table escapes (`\|` inside cells) undone. */
const text = guide.replaceAll("\\|", "|")

interface Statement {
  readonly verb: "OPEN" | "USE"
  readonly device: string
  readonly params: string
}

/** Reads an IRIS string literal (`""` is a quote) starting at `i`; returns the index after it. */
const skipString = (s: string, i: number): number => {
  let j = i + 1
  while (j < s.length) {
    if (s[j] === '"') {
      if (s[j + 1] === '"') j += 2
      else return j + 1
    } else j++
  }
  return j
}

/** Every `OPEN dev:(…)` / `USE dev:(…)` in a text, the parameter list read with balanced parentheses. */
const statements = (s: string): ReadonlyArray<Statement> => {
  const out: Array<Statement> = []
  for (const m of s.matchAll(/\b(OPEN|USE) +(?=["\w%])/g)) {
    let i = (m.index ?? 0) + m[0].length
    const deviceStart = i
    if (s[i] === '"') i = skipString(s, i)
    else while (i < s.length && /[\w%$.]/.test(s[i] as string)) i++
    const device = s.slice(deviceStart, i)
    if (s.slice(i, i + 2) !== ":(") continue
    const start = i + 1
    let depth = 0
    let j = start
    for (; j < s.length; j++) {
      const c = s[j]
      if (c === '"') {
        j = skipString(s, j) - 1
        continue
      }
      if (c === "(") depth++
      if (c === ")" && --depth === 0) break
    }
    out.push({ verb: m[1] as "OPEN" | "USE", device, params: s.slice(start, j + 1) })
  }
  return out
}

const parse = (st: Statement): Result.Result<TcpDevice.Parameters, TcpDevice.TcpDeviceParseError> =>
  st.verb === "OPEN" ? TcpDevice.parseOpen(st.params) : TcpDevice.parseUse(st.params)

/** The device table: the rows between the markers, cells split on unescaped pipes. */
const rows = (): ReadonlyArray<ReadonlyArray<string>> => {
  const begin = guide.indexOf("<!-- iris-devices:begin -->")
  const end = guide.indexOf("<!-- iris-devices:end -->")
  expect(begin).toBeGreaterThan(-1)
  expect(end).toBeGreaterThan(begin)
  return guide
    .slice(begin, end)
    .split("\n")
    .filter((l) => l.startsWith("| `"))
    .map((l) =>
      l
        .slice(1, -1)
        .split(/(?<!\\)\|/)
        .map((c) => c.trim().replaceAll("\\|", "|"))
    )
}

const code = (cell: string): string => /^`([^`]*)`/.exec(cell)?.[1] ?? cell

const modeFor = { ClientOpen: "originate", ServerOpen: "terminate", Upgrade: "starttls" } as const

describe("docs/iris-mapping.md", () => {
  it("every OPEN/USE statement in the guide parses", () => {
    const all = statements(text)
    expect(all.length).toBeGreaterThanOrEqual(rows().length + 2)
    for (const st of all) {
      const r = parse(st)
      expect(
        Result.isSuccess(r),
        `${st.verb} ${st.device}:${st.params}: ${Result.isFailure(r) ? r.failure.message : ""}`
      ).toBe(true)
      if (st.device.startsWith('"')) {
        const device = TcpDevice.parseDevice(st.device.slice(1, -1))
        expect(Result.isSuccess(device), st.device).toBe(true)
      }
    }
  })

  it("each table row parses as it says and maps to the listener and verb it names, which Sleeve accepts", () => {
    const table = rows()
    expect(table.length).toBeGreaterThanOrEqual(6)
    const tags = new Set<string>()
    for (const [statement = "", parsesAs = "", tlsName = "", listener = "", call = ""] of table) {
      const [st] = statements(code(statement))
      expect(st, statement).toBeDefined()
      const r = parse(st as Statement)
      if (Result.isFailure(r)) throw new Error(`${statement}: ${r.failure.message}`)
      const p = r.success
      tags.add(p._tag)
      expect(p._tag, statement).toBe(code(parsesAs))
      expect(p.tls?.config, statement).toBe(code(tlsName))

      // the listener mode (and STARTTLS side) the row names
      const mode = modeFor[p._tag]
      expect(code(listener), statement).toBe(mode)
      const side = /side: (server|client)/.exec(listener)?.[1]
      if (p._tag === "Upgrade") expect(side, statement).toBeDefined()
      else expect(side, statement).toBeUndefined()

      // the library verb
      const cfg = code(tlsName)
      const verb = code(call)
      if (p._tag === "ClientOpen") {
        expect(verb).toMatch(new RegExp(`^connect\\("${cfg}", "${p.host}:${p.port}"`))
        expect(verb.includes("{ password }"), statement).toBe(p.tls?.password !== undefined)
      } else if (p._tag === "ServerOpen") {
        expect(verb).toBe(`upgradeServer(socket, "${cfg}")`)
      } else {
        expect(verb).toMatch(new RegExp(`^upgrade${side === "server" ? "Server" : "Client"}\\(socket, "${cfg}"`))
      }
      if (p.tls?.password !== undefined) expect(Redacted.value(p.tls.password).length).toBeGreaterThan(0)

      // Sleeve accepts that listener with a TLS configuration of the type its role needs
      const role = mode === "terminate" || side === "server" ? "server" : "client"
      const port = p._tag === "Upgrade" ? 2525 : p.port
      const yaml = `
tls:
  "${cfg}":
    type: ${role}
    caFile: ca.pem
    certificateFile: node.crt
    privateKeyFile: node.key
    verifyPeer: require
listeners:
  - name: from-docs
    mode: ${mode}
    listen: "127.0.0.1:0"
    target: "${p._tag === "ClientOpen" ? p.host : "127.0.0.1"}:${port}"
    tls: "${cfg}"${mode === "starttls" ? `\n    protocol: smtp\n    side: ${side}` : ""}
`
      const decoded = ConfigFile.decode(yaml, "from-docs.yaml")
      expect(Result.isSuccess(decoded) ? "" : decoded.failure.message, statement).toBe("")
    }
    expect([...tags].sort()).toEqual(["ClientOpen", "ServerOpen", "Upgrade"])
  })

  it("every YAML example in the guide is a configuration Sleeve decodes", () => {
    const blocks = [...guide.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1] as string)
    expect(blocks.length).toBeGreaterThanOrEqual(2)
    blocks.forEach((block, i) => {
      const decoded = ConfigFile.decode(block, `iris-mapping.md yaml block ${i + 1}`)
      expect(Result.isSuccess(decoded) ? "" : decoded.failure.message).toBe("")
    })
  })

  it("the TcpDevice sample's results are the real ones", () => {
    const open = /TcpDevice\.parseOpen\('([^']+)'\)/.exec(text)?.[1]
    const printed = /TcpDevice\.formatOpen\(open\.success\) \/\/ '([^']+)'/.exec(text)?.[1]
    expect(open).toBeDefined()
    const parsed = TcpDevice.parseOpen(open as string)
    if (Result.isFailure(parsed)) throw parsed.failure
    expect(TcpDevice.formatOpen(parsed.success)).toBe(printed)
    expect(parsed.success).toMatchObject({ _tag: "ClientOpen", host: "node2.example.com", port: 2188 })
    expect(text).toContain('open.success.host // "node2.example.com"')
    expect(text).toContain("open.success.port // 2188")
    expect(text).toContain('open.success.tls?.config // "MirrorClient"')

    const use = /TcpDevice\.parseUse\('([^']+)'\) \/\/ (\w+)/.exec(text)
    const upgraded = TcpDevice.parseUse(use?.[1] as string)
    expect(Result.isSuccess(upgraded) ? upgraded.success._tag : "").toBe(use?.[2])

    const device = /TcpDevice\.parseDevice\("([^"]+)"\) \/\/ \{ _tag: "(\w+)", port: (\d+) \}/.exec(text)
    expect(TcpDevice.parseDevice(device?.[1] as string)).toEqual(
      Result.succeed({ _tag: device?.[2], port: Number(device?.[3]) })
    )
  })

  it("links, anchors and repository paths in the operator guides resolve", () => {
    /** GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens. */
    const slug = (heading: string) =>
      heading
        .toLowerCase()
        .replace(/[^\p{L}\p{N} _-]/gu, "")
        .replaceAll(" ", "-")
    const anchors = (file: string) =>
      new Set(
        readFileSync(file, "utf8")
          .split("\n")
          .filter((l) => /^#{1,6} /.test(l))
          .map((l) => slug(l.replace(/^#+ /, "")))
      )
    const checked: Array<string> = []
    for (const doc of ["quickstart.md", "iris-mapping.md", "deployment.md"]) {
      const file = join(repoRoot, "docs", doc)
      const body = readFileSync(file, "utf8")
      for (const [, target = ""] of body.matchAll(/\]\(([^)\s]+)\)/g)) {
        if (/^https?:/.test(target)) continue
        const [path = "", anchor] = target.split("#")
        const resolved = path === "" ? file : join(dirname(file), path)
        expect(existsSync(resolved), `${doc}: link ${target}`).toBe(true)
        if (anchor !== undefined) expect(anchors(resolved).has(anchor), `${doc}: anchor ${target}`).toBe(true)
        checked.push(target)
      }
      for (const [, path = ""] of body.matchAll(/`((?:apps|packages|infra|docs)\/[\w./-]+)`/g)) {
        // Build outputs do not exist in a fresh clone: they must be what the bundler writes.
        if (path.startsWith("apps/sidecar/dist/")) {
          // The bundler writes the folder (`output.dir`) and one `<entry>.js` per input name.
          const config = readFileSync(join(repoRoot, "apps/sidecar/rolldown.config.ts"), "utf8")
          expect(config, `${doc}: ${path}: the bundle is not written to dist/`).toContain(`dir: here("dist")`)
          const file = path.slice("apps/sidecar/dist/".length)
          if (file !== "") {
            const entries = [...(/input: \{([^}]*)\}/.exec(config)?.[1]?.matchAll(/(\w+):/g) ?? [])].map(
              (m) => `${m[1]}.js`
            )
            expect(entries, `${doc}: ${path} is not an entry point of the bundle`).toContain(file)
          }
        } else expect(existsSync(join(repoRoot, path)), `${doc}: ${path}`).toBe(true)
        checked.push(path)
      }
    }
    expect(checked.length).toBeGreaterThan(20)
  })
})
