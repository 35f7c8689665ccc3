/**
 * The one place where the daemon's layers are assembled (`sleeve run`).
 * CONTRACT STUB — being implemented; the CLI codes against `run`.
 */
import { Effect } from "effect"

/** Options of `sleeve run`. */
export interface RunOptions {
  /** The configuration file (from `--config` or `SLEEVE_CONFIG`). */
  readonly configPath: string
}

/** Runs every listener of the configuration until SIGTERM/SIGINT; fails on an invalid configuration. */
export const run = (options: RunOptions): Effect.Effect<void, Error> =>
  Effect.fail(new Error(`sleeve run is not implemented yet (${options.configPath})`))
