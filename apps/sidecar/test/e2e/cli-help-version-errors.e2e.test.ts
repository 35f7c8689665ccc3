/**
 * The command line as an operator meets it: `--help` on the root and every command (commands,
 * flags, examples), `--version` from package.json, usage errors as one line on stderr (no help
 * dump, no stack trace), failures as one line unless `--verbose` / `SLEEVE_VERBOSE=1` ask for
 * the full cause.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { mkdtemp, readFile, rm } from "node:fs/promises"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { appDir, lines, sleeve } from "../support/Sleeve.ts"

let dir = ""

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "sleeve-cli-"))
})

afterAll(async () => {
  if (dir !== "") await rm(dir, { recursive: true, force: true })
})

const stackFrame = /^\s+at /m

describe("sleeve --help / --version", { timeout: 30_000 }, () => {
  it("lists the commands, documents each with its flags and examples, and prints the package version", async () => {
    const [root, check, dn, run, version] = await Promise.all([
      sleeve(["--help"]),
      sleeve(["check", "--help"]),
      sleeve(["dn", "--help"]),
      sleeve(["run", "--help"]),
      sleeve(["--version"])
    ])
    for (const r of [root, check, dn, run, version]) {
      expect(r.stderr).toBe("")
      expect(r.code).toBe(0)
    }
    const rootLines = lines(root.stdout)
    expect(rootLines).toContain("SUBCOMMANDS")
    for (const name of ["check", "dn", "run", "demo"]) {
      expect(rootLines.some((l) => new RegExp(`^  ${name}\\s{2,}\\S`).test(l))).toBe(true)
    }
    expect(root.stdout).toContain("--verbose")
    expect(root.stdout).toContain("sleeve check --config sleeve.yaml")

    for (const [help, flags, example] of [
      [
        check.stdout,
        ["--config, -c FILE", "--json", "--expiry-warning DURATION"],
        "sleeve check -c sleeve.yaml --json"
      ],
      [dn.stdout, ["FILE", "--issuer", "--all"], "sleeve dn --all chain.pem"],
      [run.stdout, ["--config, -c FILE"], "SLEEVE_CONFIG=/etc/sleeve/sleeve.yaml sleeve run"]
    ] as const) {
      expect(help).toContain("USAGE")
      for (const flag of flags) expect(help).toContain(flag)
      expect(help).toContain("EXAMPLES")
      expect(help).toContain(example)
    }

    const pkg = JSON.parse(await readFile(join(appDir, "package.json"), "utf8")) as { version: string }
    expect(version.stdout).toBe(`sleeve ${pkg.version}\n`)
  })
})

describe("sleeve usage errors and failures", { timeout: 30_000 }, () => {
  it("reports a usage error in one line on stderr, naming the help to read", async () => {
    const [badFlag, missingFlag, unknownCommand, badDuration] = await Promise.all([
      sleeve(["check", "--config", "x.yaml", "--bogus"]),
      sleeve(["dn"]),
      sleeve(["frobnicate"]),
      sleeve(["check", "--config", "x.yaml", "--expiry-warning", "soon"])
    ])
    expect(badFlag.stderr).toBe(
      'sleeve: Unrecognized flag: --bogus in command sleeve check (see "sleeve check --help")\n'
    )
    expect(missingFlag.stderr).toBe('sleeve: Missing required argument: file (see "sleeve dn --help")\n')
    expect(unknownCommand.stderr).toMatch(
      /^sleeve: Unknown subcommand "frobnicate" for "sleeve".* \(see "sleeve --help"\)\n$/
    )
    expect(badDuration.stderr).toBe(
      'sleeve: Invalid value for flag --expiry-warning: "soon". Expected: a duration such as "500ms", "10s", "5m" or "1h", got "soon" (see "sleeve check --help")\n'
    )
    for (const r of [badFlag, missingFlag, unknownCommand, badDuration]) {
      expect(r.stdout).toBe("")
      expect(r.code).toBe(1)
    }
  })

  it("prints a failure as one line, and its full cause only with --verbose or SLEEVE_VERBOSE=1", async () => {
    const missing = join(dir, "missing.pem")
    const [plain, aDirectory, verbose, verboseEnv] = await Promise.all([
      sleeve(["dn", missing]),
      sleeve(["dn", dir]),
      sleeve(["dn", missing, "--verbose"]),
      sleeve(["dn", missing], { env: { SLEEVE_VERBOSE: "1" } })
    ])
    expect(plain.stderr).toBe(`sleeve: ${missing}: file not found\n`)
    expect(aDirectory.stderr).toBe(`sleeve: ${dir}: is a directory, not a file\n`)
    for (const r of [plain, aDirectory]) {
      expect(r.stderr).not.toMatch(stackFrame)
      expect(r.code).toBe(1)
    }
    for (const r of [verbose, verboseEnv]) {
      const err = lines(r.stderr)
      expect(err[0]).toBe(`sleeve: ${missing}: file not found`)
      expect(r.stderr).toMatch(stackFrame)
      // The Node error is kept as the cause, not stringified away.
      expect(r.stderr).toContain("ENOENT")
      expect(r.stdout).toBe("")
      expect(r.code).toBe(1)
    }
  })

  it("run takes its configuration from --config or SLEEVE_CONFIG and fails in one line when it is unusable", async () => {
    const missing = join(dir, "absent.yaml")
    const [viaFlag, viaEnv, neither] = await Promise.all([
      sleeve(["run", "--config", missing]),
      sleeve(["run"], { env: { SLEEVE_CONFIG: missing } }),
      sleeve(["run"])
    ])
    for (const r of [viaFlag, viaEnv]) {
      expect(lines(r.stderr)).toHaveLength(1)
      expect(r.stderr).toMatch(/^sleeve: /)
      expect(r.stderr).toContain(missing)
      expect(r.stderr).not.toMatch(stackFrame)
      expect(r.code).toBe(1)
    }
    expect(neither.stderr).toBe('sleeve: Missing required flag: --config (see "sleeve run --help")\n')
    expect(neither.code).toBe(1)
  })
})
