/**
 * Long-running processes for the black-box suites, and the Prometheus side of them:
 *
 * - `Daemon`: any process that runs until stopped (`sleeve run`, Prometheus), with its output
 *   collected, a way to wait for a line, and a stop that escalates to SIGKILL, so no test leaves
 *   a process behind.
 * - `startSleeve`: `sleeve run --config FILE` from source with the repo's Node, its JSON log
 *   lines parsed, resolved once the `ready` line (listener addresses, admin URL) is out.
 * - `parseExposition`: the Prometheus text format as a map from series to value, so a test can
 *   take the difference of two scrapes of `/metrics`.
 * - `startPrometheus`: Debian's real `/usr/bin/prometheus` on a free loopback port, with its own
 *   temporary TSDB, scraping the given targets every second and loading rule files; its HTTP
 *   API (`/api/v1/query`, `/rules`, `/targets`, `/alerts`) is read with undici. When the binary
 *   is missing the suite fails with how to install it: it never skips.
 *
 * Process helpers only: nothing here asserts anything about Sleeve.
 */
import { spawn, type ChildProcess } from "node:child_process"
import { existsSync } from "node:fs"
import { mkdtemp, rm, writeFile } from "node:fs/promises"
import * as Net from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { request } from "undici"
import { childEnv, mainTs, node } from "./Sleeve.ts"

// ---------------------------------------------------------------------------------------------
// Daemon
// ---------------------------------------------------------------------------------------------

/** How a daemon ended. */
export interface Exited {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
}

/** A process that runs until it is stopped. */
export interface Daemon {
  readonly child: ChildProcess
  /** Everything written to stdout so far. */
  readonly stdout: () => string
  /** Everything written to stderr so far. */
  readonly stderr: () => string
  /** Resolves when the process has exited (never rejects). */
  readonly exited: Promise<Exited>
  /** Whether the process has exited. */
  readonly hasExited: () => boolean
  /**
   * Sends `signal` (default SIGTERM) and waits up to `graceMs` (default 10 s) for the exit;
   * then SIGKILL. Resolves with how it ended; safe to call more than once, or after the exit.
   */
  readonly stop: (signal?: NodeJS.Signals, graceMs?: number) => Promise<Exited>
}

/** Options of {@link startDaemon}. */
export interface DaemonOptions {
  readonly cwd: string
  readonly env?: Readonly<Record<string, string | undefined>>
}

/** Spawns `command args…` with the cleaned environment of `Sleeve.childEnv`. */
export const startDaemon = (command: string, args: ReadonlyArray<string>, options: DaemonOptions): Daemon => {
  const child = spawn(command, args, {
    cwd: options.cwd,
    env: childEnv(options.env),
    stdio: ["ignore", "pipe", "pipe"]
  })
  let stdout = ""
  let stderr = ""
  child.stdout?.setEncoding("utf8").on("data", (c: string) => {
    stdout += c
  })
  child.stderr?.setEncoding("utf8").on("data", (c: string) => {
    stderr += c
  })
  let ended: Exited | undefined
  const exited = new Promise<Exited>((resolve) => {
    child.on("error", (e) => {
      stderr += `spawn failed: ${e.message}\n`
      ended = { code: null, signal: null }
      resolve(ended)
    })
    child.on("close", (code, signal) => {
      ended = { code, signal }
      resolve(ended)
    })
  })
  const stop = async (signal: NodeJS.Signals = "SIGTERM", graceMs = 10_000): Promise<Exited> => {
    if (ended !== undefined) return ended
    child.kill(signal)
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs)
    const result = await exited
    clearTimeout(timer)
    return result
  }
  return { child, stdout: () => stdout, stderr: () => stderr, exited, hasExited: () => ended !== undefined, stop }
}

/** Polls `check` every `everyMs` until it returns a value other than `undefined`; fails after `timeoutMs`. */
export const waitUntil = async <A>(
  what: string,
  check: () => A | undefined | Promise<A | undefined>,
  options: { readonly timeoutMs?: number; readonly everyMs?: number; readonly detail?: () => string } = {}
): Promise<A> => {
  const deadline = Date.now() + (options.timeoutMs ?? 10_000)
  for (;;) {
    const value = await check()
    if (value !== undefined) return value
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}${options.detail === undefined ? "" : `\n${options.detail()}`}`)
    }
    await new Promise((r) => setTimeout(r, options.everyMs ?? 50))
  }
}

/** A free TCP port on 127.0.0.1 (bound and released; good enough for a test). */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = Net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as Net.AddressInfo
      server.close(() => resolve(port))
    })
  })

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
  options: DaemonOptions & { readonly timeoutMs?: number }
): Promise<SleeveDaemon> => {
  const daemon = startDaemon(node, [mainTs, "run", "--config", config], options)
  const events = () => parseEvents(daemon.stdout())
  const output = () => `--- stdout\n${daemon.stdout()}--- stderr\n${daemon.stderr()}`
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
// Text exposition format
// ---------------------------------------------------------------------------------------------

/**
 * The samples of a Prometheus text exposition, keyed by series exactly as written
 * (`name{label="value",…}`, or `name` alone). Comments and blank lines are skipped.
 */
export const parseExposition = (text: string): ReadonlyMap<string, number> => {
  const samples = new Map<string, number>()
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue
    // The value follows the last space outside the label set (label values may hold spaces).
    const close = line.lastIndexOf("}")
    const space = line.indexOf(" ", close === -1 ? 0 : close)
    if (space === -1) throw new Error(`not an exposition line: ${line}`)
    const value = line.slice(space + 1).split(" ")[0] as string
    samples.set(line.slice(0, space), value === "+Inf" ? Infinity : value === "-Inf" ? -Infinity : Number(value))
  }
  return samples
}

/**
 * The series of `after` whose value differs from `before` (a missing series counts as 0),
 * restricted to the metric names in `names`, as `{ series: change }`.
 */
export const diffExposition = (
  before: ReadonlyMap<string, number>,
  after: ReadonlyMap<string, number>,
  names: ReadonlyArray<string>
): Record<string, number> => {
  const out: Record<string, number> = {}
  for (const [series, value] of after) {
    const name = series.split("{")[0] as string
    if (!names.includes(name)) continue
    const change = value - (before.get(series) ?? 0)
    if (change !== 0) out[series] = change
  }
  return out
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
    const port = await freePort()
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
