/**
 * `sleeve demo`: Sleeve end to end with nothing to prepare (`pnpm start`). Everything happens in
 * `Demo.run`; this module only turns flags into its options.
 *
 * `Demo` is imported when `demo` is chosen: it needs the test PKI (a development dependency),
 * which an installation without development dependencies does not have — the other commands
 * must not depend on it.
 */
import { Effect, Option } from "effect"
import { Command, Flag } from "effect/cli"

/** `sleeve demo [--dir DIR]`. */
export const command = Command.make(
  "demo",
  {
    dir: Flag.String("dir").pipe(
      Flag.withMetavar("DIR"),
      Flag.withDescription("write the demo PKI and configuration here and keep them (default: a temp folder, removed)"),
      Flag.optional
    )
  },
  (input) =>
    Effect.promise(() => import("../Demo.ts")).pipe(
      Effect.flatMap((Demo) => Demo.run({ dir: Option.getOrUndefined(input.dir) }))
    )
).pipe(
  Command.withShortDescription("try Sleeve end to end: throwaway PKI, legacy app, mirror pair (Ctrl-C to stop)"),
  Command.withDescription(
    "Make a throwaway PKI, start a small plaintext legacy app, and run a mirror pair of TLS configurations " +
      "with mutual TLS and DN authorization exactly as `sleeve run` does; prints commands to try. " +
      "Ctrl-C drains and exits."
  ),
  Command.withExamples([
    { command: "sleeve demo", description: "run the demo in a temp folder" },
    { command: "sleeve demo --dir ./dev-pki", description: "keep the demo's certificates and configuration" }
  ])
)
