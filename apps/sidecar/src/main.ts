/**
 * The `sleeve` executable: runs the command line (`Cli.run`) with the Node platform services.
 * Wiring only; failures are printed by `Cli` and turned into the exit code here by `runMain`.
 *
 * Imports name the platform modules used rather than the `@effect/platform-node` index, which
 * loads every Node integration (HTTP, cluster, sockets…) and doubles start-up time; and the
 * services are those of `NodeServices.layer` except the child-process spawner, which effect/cli
 * requires in its environment but never calls: it is replaced by one that refuses, so the
 * command line does not load effect's spawner (Node itself loads `node:child_process` with
 * `node:cluster` once a server listens; `workers: N` forks through `node:cluster`, not this).
 */
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import * as NodePath from "@effect/platform-node/NodePath"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as NodeStdio from "@effect/platform-node/NodeStdio"
import * as NodeTerminal from "@effect/platform-node/NodeTerminal"
import { Effect, Layer } from "effect"
import { ChildProcessSpawner } from "effect/process"
import * as Cli from "./Cli.ts"

/** Sleeve never spawns a process; effect/cli only needs the service to exist. */
const noChildProcesses = Layer.succeed(
  ChildProcessSpawner.ChildProcessSpawner,
  ChildProcessSpawner.make(() => Effect.die(new Error("sleeve does not run child processes")))
)

Cli.run.pipe(
  Effect.provide(
    Layer.mergeAll(NodeFileSystem.layer, NodePath.layer, NodeStdio.layer, NodeTerminal.layer, noChildProcesses)
  ),
  NodeRuntime.runMain({ disableErrorReporting: true, teardown: Cli.teardownFor(process.argv.slice(2)) })
)
