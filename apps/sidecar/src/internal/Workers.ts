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
 * The tightest cgroup v2 CPU quota over this process's cgroup and its ancestors, in CPUs
 * (`cpu.max` = `<quota> <period>`, or `max`): a Kubernetes CPU limit is on the container's cgroup
 * (often the namespace root inside the container), a systemd `CPUQuota=` on the service's cgroup
 * below the root. `undefined` when none applies (no quota, cgroup v1, not Linux).
 */
export const cgroupCpuLimit = (
  readFile: (path: string) => string = (p) => Fs.readFileSync(p, "utf8")
): number | undefined => {
  let own = "/"
  try {
    // cgroup v2: the one line `0::/path/of/the/cgroup`.
    own = /^0::(\/.*)$/m.exec(readFile("/proc/self/cgroup"))?.[1] ?? "/"
  } catch {
    // Not Linux: only the root is tried, and it is absent too.
  }
  let limit: number | undefined
  for (let dir = own.replace(/\/+$/, ""); ; dir = dir.slice(0, dir.lastIndexOf("/"))) {
    try {
      const [quota, period] = readFile(`/sys/fs/cgroup${dir}/cpu.max`).trim().split(/\s+/)
      const q = Number(quota)
      const p = Number(period)
      if (quota !== "max" && Number.isFinite(q) && Number.isFinite(p) && q > 0 && p > 0)
        limit = Math.min(limit ?? Number.POSITIVE_INFINITY, q / p)
    } catch {
      // No cpu.max at this level (the root has none, or the controller is not enabled here).
    }
    if (dir === "") break
  }
  return limit
}

/**
 * CPUs this process may use: the scheduler's view (affinity, cpusets: `os.availableParallelism`)
 * capped by the cgroup v2 CPU quota ({@link cgroupCpuLimit}), rounded up.
 */
export const availableCpus = (): number => {
  const cpus = Os.availableParallelism()
  const limit = cgroupCpuLimit()
  return limit === undefined ? cpus : Math.max(1, Math.min(cpus, Math.ceil(limit)))
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
