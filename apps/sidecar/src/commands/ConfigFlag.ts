/**
 * The `--config FILE` flag shared by `run`, `check` and `explain`: `-c` for short, falling back to
 * the `SLEEVE_CONFIG` environment variable (how a container passes it).
 */
import { Config } from "effect"
import { Flag } from "effect/cli"

/** `--config FILE` / `-c FILE`, default `$SLEEVE_CONFIG`. */
export const configFlag = Flag.String("config").pipe(
  Flag.withAlias("c"),
  Flag.withMetavar("FILE"),
  Flag.withDescription("configuration file (YAML or JSON); default: $SLEEVE_CONFIG"),
  Flag.withFallbackConfig(Config.String("SLEEVE_CONFIG"))
)
