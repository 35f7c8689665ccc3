/**
 * `sleeve run --config FILE`: start the sidecar. Everything happens in `Sidecar.run` (the one
 * place where layers are assembled); this module only turns flags into its options.
 *
 * `Sidecar` is imported when `run` is chosen, not before: it pulls in the proxy, metrics and
 * HTTP stacks, which would make `sleeve check` and `sleeve dn` start about twice as slowly.
 */
import { Effect } from "effect"
import { Command } from "effect/cli"
import { configFlag } from "./ConfigFlag.ts"

/** `sleeve run --config FILE` (or `SLEEVE_CONFIG`). */
export const command = Command.make(
  "run",
  {
    config: configFlag
  },
  (input) =>
    Effect.promise(() => import("../Sidecar.ts")).pipe(
      Effect.flatMap((Sidecar) => Sidecar.run({ configPath: input.config }))
    )
).pipe(
  Command.withShortDescription("run the sidecar until SIGTERM/SIGINT"),
  Command.withDescription(
    "Validate the configuration (as `sleeve check` does), then run every listener until SIGTERM or " +
      "SIGINT. Refuses to start on any configuration error."
  ),
  Command.withExamples([
    { command: "sleeve run --config /etc/sleeve/sleeve.yaml", description: "run in the foreground" },
    { command: "SLEEVE_CONFIG=/etc/sleeve/sleeve.yaml sleeve run", description: "take the file from the environment" }
  ])
)
