/**
 * What the primary and its workers share when `sleeve run` runs several data-path processes
 * (`workers: N`): how many to run, and the messages they exchange over the cluster IPC channel.
 *
 * Kept free of the data path (types only from @sleeve/proxy), so the primary can import it
 * without loading listeners and sessions.
 */
import type { ConfigFile } from "@sleeve/core"
import type { MetricsJson } from "@sleeve/metrics/Metrics"
import type { Snapshot as ConfigSnapshot } from "@sleeve/proxy/Activation"
import type { Snapshot as ListenerSnapshot } from "@sleeve/proxy/Listener"
import * as Fs from "node:fs"
import * as Os from "node:os"

/** The environment variable that tells a worker its slot (1..N), for its log lines and `/status`. */
export const slotVariable = "SLEEVE_WORKER_SLOT"

/**
 * CPUs this process may use: the scheduler's view (affinity, cpusets: `os.availableParallelism`)
 * capped by a cgroup v2 CPU quota (`/sys/fs/cgroup/cpu.max`, which is how Kubernetes CPU limits
 * arrive), rounded up.
 */
export const availableCpus = (): number => {
  const cpus = Os.availableParallelism()
  try {
    const [quota, period] = Fs.readFileSync("/sys/fs/cgroup/cpu.max", "utf8").trim().split(/\s+/)
    const q = Number(quota)
    const p = Number(period)
    if (quota !== "max" && Number.isFinite(q) && Number.isFinite(p) && q > 0 && p > 0) {
      return Math.max(1, Math.min(cpus, Math.ceil(q / p)))
    }
  } catch {
    // No cgroup v2 CPU controller here (not Linux, or cgroup v1): the scheduler's view stands.
  }
  return cpus
}

/** How many worker processes a `workers` setting asks for; 1 means no worker process at all. */
export const count = (setting: ConfigFile.Workers, cpus: () => number = availableCpus): number =>
  setting === "auto" ? Math.min(cpus(), 64) : setting

/** Primary to worker. */
export type ToWorker =
  /** The configuration to serve, as the primary validated it (the worker reads no file itself). */
  | { readonly type: "sleeve:start"; readonly configPath: string; readonly snapshot: ConfigSnapshot }
  | { readonly type: "sleeve:reload"; readonly id: number; readonly snapshot: ConfigSnapshot }
  | { readonly type: "sleeve:collect"; readonly id: number; readonly what: "status" | "metrics" }

/** Worker to primary. */
export type FromWorker =
  /** Bound: its listeners as it serves them (connection counts aside, see `sleeve:status`). */
  | { readonly type: "sleeve:ready"; readonly listeners: ReadonlyArray<ListenerSnapshot> }
  | { readonly type: "sleeve:start-failed"; readonly error: string }
  | {
      readonly type: "sleeve:reloaded"
      readonly id: number
      readonly error?: string
      /** Its listeners after a reload that succeeded. */
      readonly listeners?: ReadonlyArray<ListenerSnapshot>
    }
  | { readonly type: "sleeve:status"; readonly id: number; readonly listeners: ReadonlyArray<ListenerSnapshot> }
  | { readonly type: "sleeve:metrics"; readonly id: number; readonly metrics: MetricsJson }
  | { readonly type: "sleeve:drained"; readonly closedAtDeadline: number }

const isMessage = (m: unknown): m is { readonly type: string } =>
  typeof m === "object" && m !== null && typeof (m as { type?: unknown }).type === "string"

/** Whether an IPC message is one of ours from the primary (other modules may use the channel too). */
export const isToWorker = (m: unknown): m is ToWorker => isMessage(m) && m.type.startsWith("sleeve:")

/** Whether an IPC message is one of ours from a worker. */
export const isFromWorker = (m: unknown): m is FromWorker => isMessage(m) && m.type.startsWith("sleeve:")
