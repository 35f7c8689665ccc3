/**
 * The definition of `sleeve check` (flags, help): its implementation, Check.ts, is imported when
 * the command runs, so that no other command (`run` above all) loads it.
 */
import * as ConfigFile from "@sleeve/core/ConfigFile"
import { Effect, Result } from "effect"
import { Command, Flag } from "effect/cli"
import { configFlag } from "./ConfigFlag.ts"

/** Flags of `sleeve check`. */
export const flags = {
  config: configFlag,
  json: Flag.Boolean("json").pipe(
    Flag.withDescription("print one JSON document { ok, problems, tlsConfigurations, listeners }"),
    Flag.withDefault(false)
  ),
  expiryWarning: Flag.String("expiry-warning").pipe(
    Flag.withMetavar("DURATION"),
    Flag.withDescription(
      'warn about certificates expiring within this time, e.g. "30d" (default: the file\'s expiryWarning, 14d)'
    ),
    Flag.mapTryCatch(
      (s) => {
        const r = ConfigFile.parseDuration(s)
        if (Result.isFailure(r)) throw new Error(r.failure)
        return r.success
      },
      // effect/cli prefixes "Expected: "; the rule from parseDuration starts with "expected".
      (e) => (e as Error).message.replace(/^expected /, "")
    ),
    Flag.optional
  )
}

/** `sleeve check --config FILE [--json] [--expiry-warning DURATION]`. */
export const command = Command.make("check", flags, (input) =>
  Effect.promise(() => import("./Check.ts")).pipe(Effect.flatMap((Check) => Check.handler(input)))
).pipe(
  Command.withShortDescription("validate a configuration and its certificates and keys"),
  Command.withDescription(
    "Validate a configuration file and every enabled TLS configuration in it (files, key passwords, " +
      "certificate/key match, chain order, Key Usage for the role or for mirroring, expiry, protocols and " +
      "ciphers) without opening a socket. Prints one line per problem (file: path: rule) and a summary; " +
      "exits 0 when there is no error (warnings allowed), 1 otherwise."
  ),
  Command.withExamples([
    { command: "sleeve check --config sleeve.yaml", description: "validate before (re)starting" },
    { command: "sleeve check -c sleeve.yaml --json", description: "machine-readable report" },
    { command: "sleeve check -c sleeve.yaml --expiry-warning 30d", description: "warn 30 days before expiry" }
  ])
)
