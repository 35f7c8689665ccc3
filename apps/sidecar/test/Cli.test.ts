/**
 * The CLI in process: the command tree run with test `Stdio` arguments and a `TestConsole`
 * (what goes to stdout and stderr), failure reporting, `--verbose` detection, and the pure
 * parts of `check` and `dn` (report building, summary wording, DER input). The e2e suites
 * cover the same behaviour through a real process.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as NodeServices from "@effect/platform-node/NodeServices"
import * as TestPki from "@sleeve/testing/TestPki"
import { Cause, Effect, Exit, Layer, Result, Stdio } from "effect"
import { TestConsole } from "effect/testing"
import { X509Certificate } from "node:crypto"
import { readFile } from "node:fs/promises"
import * as Cli from "../src/Cli.ts"
import * as Check from "../src/commands/Check.ts"
import * as Dn from "../src/commands/Dn.ts"

let pki: TestPki.TestPki
let leaf: TestPki.Identity

beforeAll(async () => {
  pki = await TestPki.make()
  const ca = await pki.ca({ name: "root", subject: [{ CN: "Unit Root" }] })
  leaf = await pki.leaf(ca, { name: "leaf", subject: [{ CN: "leaf, one" }, { O: "Unit" }] })
  await pki.write(
    "ok.yaml",
    `
expiryWarning: 1d
tls:
  Server:
    type: server
    certificateFile: leaf.crt
    privateKeyFile: leaf.key
  Off:
    type: client
    enabled: false
    caFile: nowhere.pem
listeners:
  - { name: in, mode: terminate, listen: "127.0.0.1:4433", target: "127.0.0.1:8080", tls: Server }
`
  )
})

afterAll(async () => {
  await pki?.cleanup()
})

/** Runs the CLI in process with `args`; returns its exit and what it printed. */
const runCli = (args: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const exit = yield* Effect.exit(Cli.run.pipe(Effect.provide(Stdio.layerTest({ args: Effect.succeed(args) }))))
    const out = yield* TestConsole.logLines
    const err = yield* TestConsole.errorLines
    return { exit, out, err }
  }).pipe(Effect.provide(Layer.mergeAll(NodeServices.layer, TestConsole.layer)))

const exitCode = (exit: Exit.Exit<unknown, unknown>): number =>
  Exit.isSuccess(exit) ? 0 : (Cause.squash(exit.cause) as Cli.ExitError).code

describe("Cli.run (in process)", () => {
  it.effect("prints a DN on stdout and exits 0", () =>
    Effect.gen(function* () {
      const r = yield* runCli(["dn", leaf.certFile])
      expect(r.out).toEqual(["CN=leaf\\, one,O=Unit"])
      expect(r.err).toEqual([])
      expect(exitCode(r.exit)).toBe(0)
    })
  )

  it.effect("a usage error is one stderr line and an already-reported exit 1", () =>
    Effect.gen(function* () {
      const r = yield* runCli(["dn", "--frob", leaf.certFile])
      expect(r.out).toEqual([])
      expect(r.err).toEqual(['sleeve: Unrecognized flag: --frob in command sleeve dn (see "sleeve dn --help")'])
      expect(Exit.isFailure(r.exit)).toBe(true)
      if (Exit.isFailure(r.exit)) {
        const error = Cause.squash(r.exit.cause)
        expect(error).toBeInstanceOf(Cli.ExitError)
        expect((error as Cli.ExitError).code).toBe(1)
      }
    })
  )

  it.effect("check prints its report and fails without adding a line of its own", () =>
    Effect.gen(function* () {
      const r = yield* runCli(["check", "--config", `${pki.dir}/absent.yaml`])
      expect(r.out).toEqual([`${pki.dir}/absent.yaml: configuration file not found`, `${pki.dir}/absent.yaml: 1 error`])
      expect(r.err).toEqual([])
      expect(exitCode(r.exit)).toBe(1)
    })
  )
})

describe("Cli.reportFailure", () => {
  it.effect("prints an unexpected failure (a defect) as one flattened line, exit 1", () =>
    Effect.gen(function* () {
      const exit = yield* Effect.exit(Cli.reportFailure(Cause.die(new Error("boom\n  second line")), false))
      expect(exitCode(exit)).toBe(1)
      expect(yield* TestConsole.errorLines).toEqual(["sleeve: boom; second line"])
    }).pipe(Effect.provide(TestConsole.layer))
  )

  it.effect("adds the full cause with a stack trace when verbose", () =>
    Effect.gen(function* () {
      const exit = yield* Effect.exit(Cli.reportFailure(Cause.fail(new Error("bad thing")), true))
      expect(exitCode(exit)).toBe(1)
      const err = yield* TestConsole.errorLines
      expect(err[0]).toBe("sleeve: bad thing")
      expect(String(err[1])).toMatch(/Error: bad thing\n\s+at /)
    }).pipe(Effect.provide(TestConsole.layer))
  )

  it.effect("prints nothing for a failure already reported, and leaves interruption alone", () =>
    Effect.gen(function* () {
      const reported = yield* Effect.exit(
        Cli.reportFailure(Cause.fail(new Check.CheckFailedError({ file: "x" })), true)
      )
      expect(exitCode(reported)).toBe(1)
      expect(yield* TestConsole.errorLines).toEqual([])
      const interrupted = yield* Effect.exit(Cli.reportFailure(Cause.interrupt(), false))
      expect(Exit.isFailure(interrupted) && Cause.hasInterruptsOnly(interrupted.cause)).toBe(true)
    }).pipe(Effect.provide(TestConsole.layer))
  )
})

describe("Cli.isVerbose", () => {
  it("reads --verbose before any `--`, then SLEEVE_VERBOSE", () => {
    expect(Cli.isVerbose(["dn", "x", "--verbose"], {})).toBe(true)
    expect(Cli.isVerbose(["--verbose=true", "dn"], {})).toBe(true)
    expect(Cli.isVerbose(["dn", "--", "--verbose"], {})).toBe(false)
    expect(Cli.isVerbose(["dn"], { SLEEVE_VERBOSE: "1" })).toBe(true)
    expect(Cli.isVerbose(["dn"], { SLEEVE_VERBOSE: "yes" })).toBe(true)
    expect(Cli.isVerbose(["dn"], { SLEEVE_VERBOSE: "0" })).toBe(false)
    expect(Cli.isVerbose(["dn", "--verbose=false"], { SLEEVE_VERBOSE: "1" })).toBe(false)
    expect(Cli.isVerbose([], {})).toBe(false)
  })
})

describe("Cli.isLongRunning / teardownFor", () => {
  it("finds the command after global flags and their values", () => {
    expect(Cli.isLongRunning(["run", "--config", "x"])).toBe(true)
    expect(Cli.isLongRunning(["--verbose", "--log-level", "info", "demo"])).toBe(true)
    expect(Cli.isLongRunning(["--log-level", "run", "check"])).toBe(false)
    expect(Cli.isLongRunning(["check", "--config", "run"])).toBe(false)
    expect(Cli.isLongRunning(["dn", "run"])).toBe(false)
    expect(Cli.isLongRunning(["--", "run"])).toBe(false)
    expect(Cli.isLongRunning([])).toBe(false)
  })

  it("turns an interruption into 0 only for a long-running command; failures keep their code", () => {
    const codeOf = (args: ReadonlyArray<string>, exit: Exit.Exit<unknown, unknown>) => {
      let code = -1
      Cli.teardownFor(args)(exit, (c) => {
        code = c
      })
      return code
    }
    const interrupted = Exit.failCause(Cause.interrupt())
    expect(codeOf(["run", "-c", "x"], interrupted)).toBe(0)
    expect(codeOf(["demo"], interrupted)).toBe(0)
    expect(codeOf(["check", "-c", "x"], interrupted)).toBe(130)
    expect(codeOf(["run", "-c", "x"], Exit.fail(new Cli.ExitError({ code: 1 })))).toBe(1)
    expect(codeOf(["run", "-c", "x"], Exit.succeed(undefined))).toBe(0)
  })
})

describe("Check.makeReport / formatText", () => {
  it("checks enabled configurations, skips disabled ones, and lets --expiry-warning override the file", async () => {
    const text = await readFile(`${pki.dir}/ok.yaml`, "utf8")
    const file = `${pki.dir}/ok.yaml`
    const plain = Check.makeReport(text, file, { now: new Date() })
    expect(plain.ok).toBe(true)
    expect(plain.problems).toEqual([])
    expect(plain.tlsConfigurations.map((t) => [t.name, t.status, t.listeners])).toEqual([
      ["Server", "ok", ["in"]],
      ["Off", "skipped", []]
    ])
    expect(Check.formatText(plain)).toEqual([
      `${file}: tls.Off: note: disabled (enabled: false), not checked`,
      `${file}: OK (2 TLS configurations, 1 disabled, 1 listener)`
    ])

    // 30-day leaf: no warning with the file's 1d, a warning with 31d.
    const warned = Check.makeReport(text, file, { now: new Date(), expiryWarningMs: 31 * 86_400_000 })
    expect(warned.ok).toBe(true)
    expect(warned.problems.map((p) => [p.severity, p.path])).toEqual([["warning", "tls.Server.certificateFile"]])
    expect(Check.formatSummary(warned)).toBe(`${file}: OK, 1 warning (2 TLS configurations, 1 disabled, 1 listener)`)

    // The clock is an input: after notAfter the same file has an error.
    const later = new Date(new X509Certificate(leaf.certPem).validToDate.getTime() + 1000)
    const expired = Check.makeReport(text, file, { now: later })
    expect(expired.ok).toBe(false)
    expect(Check.formatSummary(expired)).toBe(`${file}: 1 error`)
    expect(expired.tlsConfigurations[0]?.status).toBe("error")
    expect(expired.tlsConfigurations[0]?.certificate).toBeNull()
  })

  it("words the summary with plurals and counts warnings next to errors", () => {
    const problem = (severity: "error" | "warning") => ({ file: "s.yaml", path: "tls.A", rule: "r", severity })
    const base = { file: "s.yaml", tlsConfigurations: [], listeners: [] }
    expect(Check.formatSummary({ ...base, ok: false, problems: [problem("error")] })).toBe("s.yaml: 1 error")
    expect(
      Check.formatSummary({
        ...base,
        ok: false,
        problems: [problem("error"), problem("warning"), problem("error"), problem("warning")]
      })
    ).toBe("s.yaml: 2 errors, 2 warnings")
    expect(Check.formatSummary({ ...base, ok: true, problems: [] })).toBe(
      "s.yaml: OK (0 TLS configurations, 0 listeners)"
    )
    expect(Check.formatText({ ...base, ok: true, problems: [problem("warning")] })).toEqual([
      "s.yaml: tls.A: warning: r",
      "s.yaml: OK, 1 warning (0 TLS configurations, 0 listeners)"
    ])
  })
})

describe("Dn.parseCertificates / formatDns", () => {
  it("reads PEM and DER, and prints the first or every subject or issuer", () => {
    const der = new Uint8Array(new X509Certificate(leaf.certPem).raw)
    const fromDer = Dn.parseCertificates(der, "leaf.der")
    const fromPem = Dn.parseCertificates(new TextEncoder().encode(leaf.chainPem + pki.caPem), "chain.pem")
    if (Result.isFailure(fromDer) || Result.isFailure(fromPem)) throw new Error("expected certificates")
    expect(Dn.formatDns(fromDer.success, { issuer: false, all: false })).toEqual(["CN=leaf\\, one,O=Unit"])
    expect(Dn.formatDns(fromPem.success, { issuer: false, all: true })).toEqual([
      "CN=leaf\\, one,O=Unit",
      "CN=Unit Root"
    ])
    expect(Dn.formatDns(fromPem.success, { issuer: true, all: false })).toEqual(["CN=Unit Root"])

    const garbage = Dn.parseCertificates(new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x00]), "bad.der")
    expect(Result.isFailure(garbage) && garbage.failure.reason).toBe("MalformedDer")
    const text = Dn.parseCertificates(new TextEncoder().encode("plain text"), "x.txt")
    expect(Result.isFailure(text) && text.failure.reason).toBe("NoCertificate")
  })
})
