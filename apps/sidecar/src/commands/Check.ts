/**
 * `sleeve check`: validate a configuration file and every TLS configuration in it before any
 * socket opens — the same checks `sleeve run` makes at start, printed for an operator.
 *
 * Two passes, both collecting every problem: `ConfigFile.decode` (structure and semantics of the
 * file), then `TlsMaterial.load` for each enabled TLS configuration (files readable, key password,
 * certificate/key match, chain order, Key Usage / Extended Key Usage, expiry, protocol and cipher
 * settings accepted by this Node/OpenSSL). Disabled configurations are skipped with a note.
 *
 * Output is one line per problem (`file: path: rule`, warnings marked) and a summary line, or one
 * JSON document with `--json`. The exit code is 0 when there is no error (warnings allowed) and 1
 * otherwise. A `{ prompt: true }` key password is asked on the terminal, without echo, when stdin
 * is one; otherwise that is reported as a problem. No password is ever printed.
 *
 * It deliberately does not open sockets, resolve targets or connect to peers.
 */
import {
  Console,
  Data,
  Effect,
  FileSystem,
  Option,
  type PlatformError,
  type Redacted,
  Result,
  Runtime,
  Stdio,
  Terminal
} from "effect"
import { Prompt } from "effect/cli"
import * as ConfigFile from "@sleeve/core/ConfigFile"
import * as TlsMaterial from "@sleeve/core/TlsMaterial"

// ---------------------------------------------------------------------------------------------
// Report model
// ---------------------------------------------------------------------------------------------

/** Outcome for one TLS configuration. */
export type TlsStatus = "ok" | "warning" | "error" | "skipped"

/** One TLS configuration in the report. */
export interface TlsConfigurationReport {
  readonly name: string
  readonly type: ConfigFile.TlsConfig["type"]
  readonly enabled: boolean
  readonly status: TlsStatus
  /** Names of the listeners that use it. */
  readonly listeners: ReadonlyArray<string>
  /** Own leaf certificate; `null` when there is none or it did not load without error. */
  readonly certificate: {
    readonly subject: string
    readonly issuer: string
    readonly notAfter: string
    readonly fingerprint256: string
  } | null
  /** Number of trusted CA certificates loaded from `caFile`. */
  readonly caCertificates: number
}

/** One listener in the report. */
export interface ListenerReport {
  readonly name: string
  readonly mode: "terminate" | "originate" | "starttls"
  readonly listen: string
  readonly target: string
  readonly tls: string
  readonly role: "server" | "client"
}

/** Everything `sleeve check` found; `--json` prints exactly this. */
export interface Report {
  /** The configuration file as the operator named it. */
  readonly file: string
  /** No error (warnings allowed). */
  readonly ok: boolean
  readonly problems: ReadonlyArray<ConfigFile.Problem>
  readonly tlsConfigurations: ReadonlyArray<TlsConfigurationReport>
  readonly listeners: ReadonlyArray<ListenerReport>
}

/** Options of {@link makeReport}. */
export interface ReportOptions {
  readonly now: Date
  /** Overrides the file's `expiryWarning`. */
  readonly expiryWarningMs?: number | undefined
  readonly env?: Readonly<Record<string, string | undefined>>
  /** Passwords collected for `{ prompt: true }` configurations, by configuration name. */
  readonly prompted?: ReadonlyMap<string, Redacted.Redacted<string>>
}

const emptyReport = (file: string, problems: ReadonlyArray<ConfigFile.Problem>): Report => ({
  file,
  ok: !problems.some((p) => p.severity === "error"),
  problems,
  tlsConfigurations: [],
  listeners: []
})

/**
 * Checks a configuration given its text: decodes it, then loads every enabled TLS configuration.
 * Reads the files the configuration names; opens no socket.
 */
export const makeReport = (text: string, file: string, options: ReportOptions): Report => {
  const decoded = ConfigFile.decode(text, file)
  if (Result.isFailure(decoded)) return emptyReport(file, decoded.failure.problems)
  const config = decoded.success
  const problems: Array<ConfigFile.Problem> = []
  const tlsConfigurations: Array<TlsConfigurationReport> = []
  for (const tls of config.tls.values()) {
    const listeners = ConfigFile.listenersUsing(config, tls.name).map((l) => l.name)
    if (!tls.enabled) {
      tlsConfigurations.push({
        name: tls.name,
        type: tls.type,
        enabled: false,
        status: "skipped",
        listeners,
        certificate: null,
        caCertificates: 0
      })
      continue
    }
    const loaded = TlsMaterial.load(tls, {
      file,
      now: options.now,
      expiryWarningMs: options.expiryWarningMs ?? config.expiryWarningMs,
      ...(options.env === undefined ? {} : { env: options.env }),
      prompt: (name) => options.prompted?.get(name)
    })
    problems.push(...loaded.problems)
    const leaf = loaded.material?.chain?.[0]
    tlsConfigurations.push({
      name: tls.name,
      type: tls.type,
      enabled: true,
      status: loaded.problems.some((p) => p.severity === "error")
        ? "error"
        : loaded.problems.length > 0
          ? "warning"
          : "ok",
      listeners,
      certificate:
        leaf === undefined
          ? null
          : {
              subject: leaf.subjectString,
              issuer: leaf.issuerString,
              notAfter: leaf.notAfter.toISOString(),
              fingerprint256: leaf.fingerprint256
            },
      caCertificates: loaded.material?.ca.length ?? 0
    })
  }
  // Plaintext guardrails (issue 13 §3): an allowed plaintext side off the host stays visible.
  problems.push(...ConfigFile.plaintextWarnings(config).map((p) => ({ ...p, file })))
  return {
    file,
    ok: !problems.some((p) => p.severity === "error"),
    problems,
    tlsConfigurations,
    listeners: config.listeners.map((l) => ({
      name: l.name,
      mode: l.mode,
      listen: ConfigFile.formatAddress(l.listen),
      target: ConfigFile.formatAddress(l.target),
      tls: l.tls,
      role: ConfigFile.tlsRole(l)
    }))
  }
}

const plural = (n: number, noun: string): string => `${n} ${noun}${n === 1 ? "" : "s"}`

/** The last line of the text output, e.g. `sleeve.yaml: 2 errors, 1 warning` or `sleeve.yaml: OK (…)`. */
export const formatSummary = (report: Report): string => {
  const errors = report.problems.filter((p) => p.severity === "error").length
  const warnings = report.problems.length - errors
  if (errors > 0)
    return `${report.file}: ${plural(errors, "error")}${warnings > 0 ? `, ${plural(warnings, "warning")}` : ""}`
  const disabled = report.tlsConfigurations.filter((t) => !t.enabled).length
  const counts = [
    plural(report.tlsConfigurations.length, "TLS configuration"),
    ...(disabled > 0 ? [`${disabled} disabled`] : []),
    plural(report.listeners.length, "listener")
  ]
  return `${report.file}: OK${warnings > 0 ? `, ${plural(warnings, "warning")}` : ""} (${counts.join(", ")})`
}

/** The text output: problems, notes on skipped configurations, summary; one item a line. */
export const formatText = (report: Report): ReadonlyArray<string> => [
  ...report.problems.map(ConfigFile.formatProblem),
  ...report.tlsConfigurations
    .filter((t) => t.status === "skipped")
    .map((t) => `${report.file}: tls.${t.name}: note: disabled (enabled: false), not checked`),
  formatSummary(report)
]

/** The `--json` output. */
export const formatJson = (report: Report): string =>
  JSON.stringify(
    {
      ok: report.ok,
      problems: report.problems.map((p) => ({ file: p.file, path: p.path, rule: p.rule, severity: p.severity })),
      tlsConfigurations: report.tlsConfigurations,
      listeners: report.listeners
    },
    null,
    2
  )

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/** `sleeve check` found at least one error; the report has been printed already. */
export class CheckFailedError extends Data.TaggedError("CheckFailedError")<{ readonly file: string }> {
  /** The report is the message: the runner must not print anything else. */
  override readonly [Runtime.errorReported] = false
  override get message(): string {
    return `${this.file}: configuration has errors`
  }
}

/** The operator cancelled a password prompt (Escape, Ctrl-C, Ctrl-D). */
export class PromptCancelledError extends Data.TaggedError("PromptCancelledError")<{ readonly tls: string }> {
  override get message(): string {
    return `password prompt for TLS configuration "${this.tls}" cancelled`
  }
}

// ---------------------------------------------------------------------------------------------
// Reading the file and prompting
// ---------------------------------------------------------------------------------------------

/** Why a file could not be read, in words. */
const readError = (e: PlatformError.PlatformError): string => {
  const code = (e.reason.cause as NodeJS.ErrnoException | undefined)?.code
  if (e.reason._tag === "NotFound") return "configuration file not found"
  if (e.reason._tag === "PermissionDenied") return "configuration file not readable (permission denied)"
  if (code === "EISDIR") return "is a directory, not a configuration file"
  return `cannot read the configuration file: ${(e.reason.cause as Error | undefined)?.message ?? e.reason.description ?? e.reason._tag}`
}

/** Reads the configuration; a missing or unreadable file becomes one problem, like any other. */
const readConfig = (file: string) =>
  Effect.gen(function* () {
    const fs = yield* FileSystem.FileSystem
    return yield* fs.readFileString(file).pipe(
      Effect.map(Result.succeed),
      Effect.catch((e) =>
        Effect.succeed(Result.fail<ConfigFile.Problem>({ file, path: "", rule: readError(e), severity: "error" }))
      )
    )
  })

/** TLS configurations whose key password is `{ prompt: true }` (enabled, with a key file). */
const promptedConfigurations = (text: string, file: string): ReadonlyArray<string> => {
  const decoded = ConfigFile.decode(text, file)
  if (Result.isFailure(decoded)) return []
  return [...decoded.success.tls.values()]
    .filter((t) => t.enabled && t.privateKeyFile !== undefined && t.privateKeyPassword?._tag === "Prompt")
    .map((t) => t.name)
}

/**
 * Asks for each password on the terminal without echo. The prompt is drawn on stderr so that
 * stdout stays the report (and valid JSON with `--json`).
 */
const promptPasswords = (names: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const out = new Map<string, Redacted.Redacted<string>>()
    if (names.length === 0 || !(yield* (yield* Stdio.Stdio).stdinIsTerminal)) return out
    const terminal = yield* Terminal.Terminal
    const onStderr = Terminal.make({
      columns: Effect.sync(() => process.stderr.columns ?? 80),
      rows: Effect.sync(() => process.stderr.rows ?? 24),
      size: terminal.size,
      readInput: terminal.readInput,
      readLine: terminal.readLine,
      display: (text) => Effect.sync(() => void process.stderr.write(text))
    })
    for (const name of names) {
      const pw = yield* Prompt.run(
        Prompt.Hidden({ message: `Private key password of TLS configuration "${name}"` })
      ).pipe(
        Effect.provideService(Terminal.Terminal, onStderr),
        Effect.catchTag("QuitError", () => Effect.fail(new PromptCancelledError({ tls: name })))
      )
      out.set(name, pw as Redacted.Redacted<string>)
    }
    return out
  })

// ---------------------------------------------------------------------------------------------
// Command
// ---------------------------------------------------------------------------------------------

/** Runs `sleeve check`: prints the report; fails with {@link CheckFailedError} when it has an error. */
export const handler = (input: {
  readonly config: string
  readonly json: boolean
  readonly expiryWarning: Option.Option<number>
}) =>
  Effect.gen(function* () {
    const text = yield* readConfig(input.config)
    let report: Report
    if (Result.isFailure(text)) report = emptyReport(input.config, [text.failure])
    else {
      const prompted = yield* promptPasswords(promptedConfigurations(text.success, input.config))
      report = makeReport(text.success, input.config, {
        now: new Date(),
        expiryWarningMs: Option.getOrUndefined(input.expiryWarning),
        prompted
      })
    }
    if (input.json) yield* Console.log(formatJson(report))
    else for (const line of formatText(report)) yield* Console.log(line)
    if (!report.ok) return yield* new CheckFailedError({ file: input.config })
  })
