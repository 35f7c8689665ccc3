/**
 * The `sleeve` executable: runs the command line (`Cli.run`) with the Node platform services.
 * Wiring only; failures are printed by `Cli` and turned into the exit code here by `runMain`.
 *
 * Imports name the two platform modules used rather than the `@effect/platform-node` index,
 * which loads every Node integration (HTTP, cluster, sockets…) and doubles start-up time.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as NodeServices from "@effect/platform-node/NodeServices"
import { Effect } from "effect"
import * as Cli from "./Cli.ts"

Cli.run.pipe(
  Effect.provide(NodeServices.layer),
  NodeRuntime.runMain({ disableErrorReporting: true, teardown: Cli.teardownFor(process.argv.slice(2)) })
)
