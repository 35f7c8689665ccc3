/**
 * The `sleeve` command line: the command tree (`check`, `explain`, `dn`, `certs`, `run`, `demo`),
 * global flags, and how help, usage errors and failures reach the operator.
 *
 * Output rules, in one place: help goes to stdout; a usage error (unknown flag, missing value)
 * is one line on stderr naming the command whose `--help` explains it; a failure is one line on
 * stderr, `sleeve: <message>`, and exit code 1 — never a stack trace unless `--verbose` (or
 * `SLEEVE_VERBOSE=1`) asks for the full cause. Commands that print their own verdict (`check`, `explain`)
 * mark their failure as reported, so nothing is added after it. SIGINT/SIGTERM interrupt the
 * command: `run` and `demo` then drain and exit 0 (stopping is their normal end, and a
 * supervisor must not see a failure); any other command exits 130.
 *
 * Each command lives in `commands/`; this module only assembles them. `check`, `explain`, `dn` and
 * `certs` are defined (flags, help) in `<Name>Command.ts` and implemented in `<Name>.ts`, which is
 * imported only when that command runs, as `run` and `demo` import theirs: `sleeve run` loads none
 * of the others' code.
 */
import { Cause, Console, Data, Effect, Runtime, Stdio } from "effect"
import { CliError, CliOutput, Command, Flag, GlobalFlag } from "effect/cli"
import { TerminalCapabilities } from "effect/cli/TerminalCapabilities"
import packageJson from "../package.json" with { type: "json" }
import * as Certs from "./commands/CertsCommand.ts"
import * as Check from "./commands/CheckCommand.ts"
import * as Demo from "./commands/Demo.ts"
import * as Dn from "./commands/DnCommand.ts"
import * as Explain from "./commands/ExplainCommand.ts"
import * as Run from "./commands/Run.ts"

/** The version printed by `sleeve --version` (from apps/sidecar/package.json, inlined in the bundle). */
export const version: string = packageJson.version

/**
 * `--verbose`: print the full cause (stack traces included) of a failure. Declared so that the
 * parser accepts it everywhere and help lists it; {@link isVerbose} reads it (and
 * `SLEEVE_VERBOSE`) before parsing, because failures are reported outside any command.
 */
export const Verbose = GlobalFlag.Setting("verbose")({
  flag: Flag.Boolean("verbose").pipe(
    Flag.withDescription("on failure, print the full cause with stack traces (also SLEEVE_VERBOSE=1)"),
    Flag.withDefault(false)
  )
})

/** The whole command tree. */
export const command = Command.make("sleeve").pipe(
  Command.withDescription(
    "Sleeve: a TLS sidecar with named TLS configurations — terminate or originate TLS, STARTTLS, " +
      "mirror-style mutual TLS with DN authorization, Prometheus metrics."
  ),
  Command.withSubcommands([Check.command, Explain.command, Dn.command, Certs.command, Run.command, Demo.command]),
  Command.withGlobalFlags([Verbose]),
  Command.withExamples([
    { command: "sleeve check --config sleeve.yaml", description: "validate a configuration" },
    { command: "sleeve dn node1.crt", description: "the DN to put in authorizedPeers" },
    {
      command: "sleeve explain -c sleeve.yaml --tls-config MirrorServer --peer-cert node2.crt",
      description: "would this peer be accepted, and if not, why"
    },
    { command: "sleeve certs --out ./dev-pki", description: "a development PKI and a mirror-pair configuration" },
    { command: "sleeve run --config sleeve.yaml", description: "run the sidecar" }
  ])
)

// ---------------------------------------------------------------------------------------------
// Output and failures
// ---------------------------------------------------------------------------------------------

/** The process must exit with `code`; whatever explains why has been printed already. */
export class ExitError extends Data.TaggedError("ExitError")<{ readonly code: number }> {
  override readonly [Runtime.errorReported] = false
  override get [Runtime.errorExitCode](): number {
    return this.code
  }
}

/**
 * Help as effect/cli renders it (global flags summarised), on stdout. A usage error is one line
 * per error on stderr: no help dump, so the error stays visible in logs and terminals alike.
 */
export const presenter: CliOutput.Presenter = {
  present: (event) =>
    Effect.gen(function* () {
      const { canColor } = yield* TerminalCapabilities
      const formatter = CliOutput.defaultFormatter({ colors: canColor, globalFlags: "summary" })
      switch (event._tag) {
        case "Help":
          return yield* Console.log(formatter.formatHelpDoc(event.helpDoc))
        case "Version":
          return yield* Console.log(`sleeve ${version}`)
        case "InvalidInvocation": {
          const help = `${event.commandPath.join(" ")} --help`
          for (const e of event.errors) {
            const message = formatter.formatCliError(e).replace(/\s*\n\s*/g, " ")
            yield* Console.error(`sleeve: ${message} (see "${help}")`)
          }
        }
      }
    })
}

/** Whether `--verbose` (before any `--`) or `SLEEVE_VERBOSE` asks for full causes. */
export const isVerbose = (args: ReadonlyArray<string>, env: Readonly<Record<string, string | undefined>>): boolean => {
  const end = args.indexOf("--")
  const flags = end === -1 ? args : args.slice(0, end)
  if (flags.includes("--verbose") || flags.includes("--verbose=true")) return true
  if (flags.includes("--verbose=false")) return false
  return /^(1|true|yes|on|y)$/i.test(env.SLEEVE_VERBOSE ?? "")
}

/** The one line shown for a failure: the error's message, flattened. */
export const failureLine = (error: unknown): string => {
  const message =
    error instanceof Error || (typeof error === "object" && error !== null && "message" in error)
      ? String((error as { message: unknown }).message)
      : String(error)
  const flat = message.replace(/\s*\n\s*/g, "; ").trim()
  return `sleeve: ${flat === "" ? "unexpected failure" : flat}`
}

/**
 * Turns any failure into exit code 1 after printing it once. Usage errors were presented by
 * the parser; reported failures (a failed `check`) printed their own verdict.
 */
export const reportFailure = (cause: Cause.Cause<unknown>, verbose: boolean): Effect.Effect<never, ExitError> => {
  // Only interruptions: no failure to type, and the runtime owns the exit code (130).
  if (Cause.hasInterruptsOnly(cause)) return Effect.failCause(cause as Cause.Cause<never>)
  const error = Cause.squash(cause)
  const presented = CliError.isCliError(error) || !Runtime.getErrorReported(error)
  return Effect.gen(function* () {
    if (!presented) yield* Console.error(failureLine(error))
    if (verbose && !presented) yield* Console.error(Cause.pretty(cause))
    return yield* new ExitError({ code: 1 })
  })
}

/**
 * Parses the process arguments (from `Stdio`) and runs the selected command. Fails only with
 * an {@link ExitError} (already reported) or an interruption.
 */
export const run = Effect.gen(function* () {
  const args = yield* (yield* Stdio.Stdio).args
  const verbose = isVerbose(args, process.env)
  return yield* Command.run(command, { version }).pipe(
    Effect.provide(CliOutput.layerPresenter(presenter)),
    Effect.catchCause((cause) => reportFailure(cause, verbose)),
    Effect.asVoid
  )
})

// ---------------------------------------------------------------------------------------------
// Exit codes
// ---------------------------------------------------------------------------------------------

/** Global flags that take a value in the next argument (`--log-level info`). */
const globalFlagsWithValue = new Set(["--log-level", "--completions"])

/** Whether the arguments select a command that runs until stopped (`run`, `demo`). */
export const isLongRunning = (args: ReadonlyArray<string>): boolean => {
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string
    if (a === "--") return false
    if (globalFlagsWithValue.has(a)) {
      i++
      continue
    }
    if (a.startsWith("-")) continue
    return a === "run" || a === "demo"
  }
  return false
}

/**
 * The runtime's exit codes (0, 1, 130 for an interruption), except that a long-running command
 * stopped by SIGINT/SIGTERM exits 0: it drained and stopped as asked. A check or a lookup that
 * was interrupted did not finish, and keeps 130 — it must never pass for a success.
 */
export const teardownFor =
  (args: ReadonlyArray<string>): Runtime.Teardown =>
  (exit, onExit) =>
    Runtime.defaultTeardown(exit, (code) => onExit(code === 130 && isLongRunning(args) ? 0 : code))
