/**
 * Long-running processes for the black-box suites, on top of `Process.startDaemon` from
 * @sleeve/testing (a process with its output collected, a wait for a line of it, and a stop that
 * escalates to SIGKILL, so no test leaves a process behind):
 *
 * - `startDaemon`: any such process with the cleaned environment of `Sleeve.childEnv`.
 * - `startSleeve`: `sleeve run --config FILE` (the artefact, see `Sleeve.main`) with the repo's
 *   Node, its JSON log lines parsed, resolved once the `ready` line (listener addresses, admin
 *   URL) is out.
 * - `startPrometheus`: Debian's real `/usr/bin/prometheus` on a free loopback port, with its own
 *   temporary TSDB, scraping the given targets every second and loading rule files; its HTTP
 *   API (`/api/v1/query`, `/rules`, `/targets`, `/alerts`) is read with undici. When the binary
 *   is missing the suite fails with how to install it: it never skips.
 *
 * A scrape of `/metrics` is read with `Exposition` from @sleeve/testing. Process helpers only:
 * nothing here asserts anything about Sleeve.
 */
import * as Net from "@sleeve/testing/Net"
import * as Process from "@sleeve/testing/Process"
import { waitUntil } from "@sleeve/testing/Wait"
import { existsSync } from "node:fs"
import { mkdtemp, rm, writeFile } from "node:fs/promises"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { request } from "undici"
import { childEnv, main, node } from "./Sleeve.ts"

// ---------------------------------------------------------------------------------------------
// Daemon
// ---------------------------------------------------------------------------------------------

/** A process that runs until it is stopped. */
export type Daemon = Process.Daemon

/** Options of {@link startDaemon}. */
export interface DaemonOptions {
  readonly cwd: string
  /** Added to (and overriding) the cleaned environment; `undefined` removes a variable. */
  readonly env?: Readonly<Record<string, string | undefined>>
}

/** Spawns `command args…` with the cleaned environment of `Sleeve.childEnv`. */
export const startDaemon = (command: string, args: ReadonlyArray<string>, options: DaemonOptions): Daemon =>
  Process.startDaemon(command, args, { cwd: options.cwd, env: childEnv(options.env) })

// ---------------------------------------------------------------------------------------------
// sleeve run
// ---------------------------------------------------------------------------------------------

/** One JSON log line of `sleeve run`. */
export type LogEvent = { readonly time: string; readonly level: string; readonly event: string } & Readonly<
  Record<string, unknown>
>

/** A running `sleeve run`. */
export interface SleeveDaemon extends Daemon {
  /** The admin endpoint, e.g. `http://127.0.0.1:40123` (from the `ready` line). */
  readonly admin: string
  /** Bound address (`127.0.0.1:port`) of each listener, by name (from the `ready` line). */
  readonly listeners: Readonly<Record<string, { readonly host: string; readonly port: number }>>
  /** Every JSON line logged so far (non-JSON lines are skipped). */
  readonly events: () => ReadonlyArray<LogEvent>
  /**
   * Waits for the first event named `event` that matches `where`, among the events logged at or
   * after index `after` of `events()` (default 0: all of them).
   */
  readonly waitForEvent: (
    event: string,
    where?: (e: LogEvent) => boolean,
    options?: { readonly timeoutMs?: number; readonly after?: number }
  ) => Promise<LogEvent>
}

const parseEvents = (stdout: string): ReadonlyArray<LogEvent> => {
  const out: Array<LogEvent> = []
  for (const line of stdout.split("\n")) {
    if (!line.startsWith("{")) continue
    try {
      out.push(JSON.parse(line) as LogEvent)
    } catch {
      // a line still being written
    }
  }
  return out
}

/**
 * Starts `sleeve run --config <config>` in `cwd` and resolves once it logged `ready`; if it exits
 * or stays silent for `timeoutMs` (default 20 s), it is killed and the promise rejects with its
 * output.
 */
export const startSleeve = async (
  config: string,
  options: DaemonOptions & {
    readonly timeoutMs?: number
    /** Run under `ulimit -n <n>` (through bash), for file-descriptor exhaustion tests. */
    readonly maxOpenFiles?: number
    /** Node options before the script (`node <nodeArgs> main.js run …`), as a launcher's shebang gives them. */
    readonly nodeArgs?: ReadonlyArray<string>
  }
): Promise<SleeveDaemon> => {
  const args = [...(options.nodeArgs ?? []), main, "run", "--config", config]
  const daemon =
    options.maxOpenFiles === undefined
      ? startDaemon(node, args, options)
      : startDaemon("bash", ["-c", `ulimit -n ${options.maxOpenFiles} && exec "$0" "$@"`, node, ...args], options)
  const events = () => parseEvents(daemon.stdout())
  const output = daemon.output
  let ready: LogEvent
  try {
    ready = await waitUntil(
      "sleeve run to log ready",
      () => {
        if (daemon.hasExited()) throw new Error(`sleeve run exited before it was ready\n${output()}`)
        return events().find((e) => e.event === "ready")
      },
      { timeoutMs: options.timeoutMs ?? 20_000, detail: output }
    )
  } catch (e) {
    await daemon.stop("SIGKILL")
    throw e
  }
  const listeners: Record<string, { host: string; port: number }> = {}
  for (const l of ready.listeners as ReadonlyArray<{ name: string; listen: string }>) {
    const i = l.listen.lastIndexOf(":")
    listeners[l.name] = { host: l.listen.slice(0, i).replace(/^\[|\]$/g, ""), port: Number(l.listen.slice(i + 1)) }
  }
  const waitForEvent: SleeveDaemon["waitForEvent"] = (event, where = () => true, opts = {}) =>
    waitUntil(
      `log event "${event}"`,
      () => events().find((e, i) => i >= (opts.after ?? 0) && e.event === event && where(e)),
      { timeoutMs: opts.timeoutMs ?? 10_000, detail: output }
    )
  return { ...daemon, admin: String(ready.admin), listeners, events, waitForEvent }
}

// ---------------------------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------------------------

/** Where the Debian `prometheus` package installs the server. */
export const prometheusBinary = "/usr/bin/prometheus"

/** One series of an instant query. */
export interface VectorSample {
  readonly metric: Readonly<Record<string, string>>
  readonly value: number
}

/** A rule as `/api/v1/rules` lists it (the fields used here). */
export interface RuleInfo {
  readonly name: string
  readonly type: string
  readonly health: string
  readonly lastError?: string
  readonly query: string
}

/** A running Prometheus. */
export interface Prometheus {
  /** `http://127.0.0.1:<port>` */
  readonly url: string
  readonly daemon: Daemon
  /** `GET /api/v1/query?query=…` (instant query, now); the result must be a vector. */
  readonly query: (expr: string) => Promise<ReadonlyArray<VectorSample>>
  /** `GET /api/v1/<path>`: the `data` of a successful answer. */
  readonly api: (path: string) => Promise<unknown>
  /** `/api/v1/rules`: the rules of every group, with the group name. */
  readonly rules: () => Promise<ReadonlyArray<RuleInfo & { readonly group: string }>>
  /** Stops the server (SIGTERM, SIGKILL after 10 s) and removes its temporary directory. */
  readonly stop: () => Promise<void>
}

/** Options of {@link startPrometheus}. */
export interface PrometheusOptions {
  /** `host:port` of each scrape target of the job. */
  readonly targets: ReadonlyArray<string>
  /** Job name (default `sleeve`). */
  readonly job?: string
  /** Absolute paths of rule files to load. */
  readonly ruleFiles?: ReadonlyArray<string>
  /** How long to wait for `/-/ready` (default 20 s). */
  readonly timeoutMs?: number
}

const getJson = async (url: string): Promise<{ status: number; body: unknown; text: string }> => {
  const res = await request(url, { headersTimeout: 5000, bodyTimeout: 5000 })
  const text = await res.body.text()
  let body: unknown
  try {
    body = JSON.parse(text)
  } catch {
    body = undefined
  }
  return { status: res.statusCode, body, text }
}

/**
 * Starts Prometheus on a free loopback port with `scrape_interval` and `evaluation_interval`
 * of 1 s, a TSDB in a fresh temporary directory, the given targets (job `sleeve`) and rule files,
 * and resolves when `/-/ready` answers 200. Fails (never skips) when the binary is missing.
 */
export const startPrometheus = async (options: PrometheusOptions): Promise<Prometheus> => {
  if (!existsSync(prometheusBinary)) {
    throw new Error(
      `${prometheusBinary} not found: this suite runs a real Prometheus server. Install Debian's ` +
        "`prometheus` package (apt-get install -y --no-install-recommends prometheus); .ci/debian-deps does it."
    )
  }
  const dir = await mkdtemp(join(tmpdir(), "sleeve-prometheus-"))
  let daemon: Daemon | undefined
  const stop = async () => {
    await daemon?.stop("SIGTERM", 10_000)
    await rm(dir, { recursive: true, force: true })
  }
  try {
    const job = options.job ?? "sleeve"
    const configFile = join(dir, "prometheus.yml")
    // JSON is YAML: no quoting questions for paths and addresses.
    await writeFile(
      configFile,
      JSON.stringify(
        {
          global: { scrape_interval: "1s", scrape_timeout: "1s", evaluation_interval: "1s" },
          rule_files: options.ruleFiles ?? [],
          scrape_configs: [{ job_name: job, static_configs: [{ targets: options.targets }] }]
        },
        null,
        2
      )
    )
    const port = await Net.freePort()
    const url = `http://127.0.0.1:${port}`
    daemon = startDaemon(
      prometheusBinary,
      [
        `--config.file=${configFile}`,
        `--storage.tsdb.path=${join(dir, "data")}`,
        `--web.listen-address=127.0.0.1:${port}`,
        "--log.level=warn"
      ],
      { cwd: dir }
    )
    const running = daemon
    await waitUntil(
      "Prometheus /-/ready",
      async () => {
        if (running.hasExited()) throw new Error(`prometheus exited before it was ready:\n${running.stderr()}`)
        try {
          return (await getJson(`${url}/-/ready`)).status === 200 ? true : undefined
        } catch {
          return undefined
        }
      },
      { timeoutMs: options.timeoutMs ?? 20_000, everyMs: 100, detail: running.stderr }
    )

    const api = async (path: string): Promise<unknown> => {
      const { status, body, text } = await getJson(`${url}/api/v1/${path}`)
      const doc = body as { status?: string; data?: unknown } | undefined
      if (status !== 200 || doc?.status !== "success") throw new Error(`Prometheus /api/v1/${path}: ${status} ${text}`)
      return doc.data
    }
    const query = async (expr: string): Promise<ReadonlyArray<VectorSample>> => {
      const data = (await api(`query?query=${encodeURIComponent(expr)}`)) as {
        resultType: string
        result: ReadonlyArray<{ metric: Record<string, string>; value: [number, string] }>
      }
      if (data.resultType !== "vector") throw new Error(`${expr}: expected a vector, got ${data.resultType}`)
      return data.result.map((r) => ({ metric: r.metric, value: Number(r.value[1]) }))
    }
    const rules = async () => {
      const data = (await api("rules")) as { groups: ReadonlyArray<{ name: string; rules: ReadonlyArray<RuleInfo> }> }
      return data.groups.flatMap((g) => g.rules.map((r) => ({ ...r, group: g.name })))
    }
    return { url, daemon: running, query, api, rules, stop }
  } catch (e) {
    await stop()
    throw e
  }
}
