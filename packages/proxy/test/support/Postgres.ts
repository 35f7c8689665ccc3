/**
 * A real, throwaway PostgreSQL server for integration tests, and a `psql` runner.
 *
 * `start` makes a fresh cluster with the Debian server binaries (`initdb` in a temporary
 * directory), configures it for loopback only — `listen_addresses = 127.0.0.1`, a free port, its
 * UNIX socket inside the temporary directory, trust authentication — and starts it with
 * `pg_ctl -w`. With `ssl` it serves TLS with the given certificate and key and, with
 * `requireSsl`, its `pg_hba.conf` admits TCP connections only over SSL (`hostssl`), so a
 * plaintext client is refused by PostgreSQL itself. `stop` shuts it down (`pg_ctl -m fast`) and
 * removes the directory.
 *
 * `initdb` refuses to run as root: when the tests run as root, every server command runs as the
 * `postgres` user (`runuser -u postgres --`) and the directory is handed over to it; otherwise
 * they run as the current user. Needs the Debian packages `postgresql` (server binaries under
 * `/usr/lib/postgresql/<version>/bin`) and `postgresql-client` (`psql`).
 *
 * Test-only: trust authentication and `fsync = off` are fine for a cluster that lives for a few
 * seconds on loopback, and nowhere else.
 */
import { freePort } from "@sleeve/testing/Net"
import * as Process from "@sleeve/testing/Process"
import { execFile } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { promisify } from "node:util"

const exec = promisify(execFile)

/** Options of {@link start}. */
export interface Options {
  /** Serve TLS (`ssl = on`) with this certificate and key (PEM text); absent: `ssl = off`. */
  readonly ssl?: { readonly certPem: string; readonly keyPem: string }
  /** With `ssl`: admit TCP clients only over SSL (`hostssl` lines only in `pg_hba.conf`). */
  readonly requireSsl?: boolean
}

/** A running server. */
export interface Server {
  readonly host: "127.0.0.1"
  readonly port: number
  /** The temporary directory (data directory, socket, log). */
  readonly dir: string
  /** The server log so far. */
  readonly log: () => string
  /** Stops the server and removes its directory. Safe to call twice. */
  readonly stop: () => Promise<void>
}

/** The outcome of a `psql` run. */
export interface PsqlResult {
  /** Exit code (0 ok, 1 SQL error, 2 connection failure); null when it was killed. */
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/** The newest installed `/usr/lib/postgresql/<version>/bin`, or an error naming the Debian package. */
export const binDir = (): string => {
  const root = "/usr/lib/postgresql"
  const versions = Fs.existsSync(root)
    ? Fs.readdirSync(root)
        .filter((v) => /^\d+$/.test(v) && Fs.existsSync(Path.join(root, v, "bin", "initdb")))
        .sort((a, b) => Number(b) - Number(a))
    : []
  if (versions[0] === undefined) {
    throw new Error(`no PostgreSQL server binaries under ${root}: install the Debian package "postgresql"`)
  }
  return Path.join(root, versions[0], "bin")
}

const asRoot = process.getuid?.() === 0

/** Runs a server binary as the `postgres` user when we are root. */
const runServerCommand = (bin: string, args: ReadonlyArray<string>) =>
  asRoot
    ? exec("runuser", ["-u", "postgres", "--", bin, ...args], { timeout: 30_000, cwd: Os.tmpdir() })
    : exec(bin, [...args], { timeout: 30_000, cwd: Os.tmpdir() })

let ids: { readonly uid: number; readonly gid: number } | undefined
const postgresIds = (): { readonly uid: number; readonly gid: number } => {
  if (ids !== undefined) return ids
  const line = Fs.readFileSync("/etc/passwd", "utf8")
    .split("\n")
    .find((l) => l.startsWith("postgres:"))
  const fields = line?.split(":")
  if (fields === undefined || fields[2] === undefined || fields[3] === undefined) {
    throw new Error(`running as root but there is no "postgres" user: install the Debian package "postgresql"`)
  }
  ids = { uid: Number(fields[2]), gid: Number(fields[3]) }
  return ids
}

/** Gives `path` to the `postgres` user when we are root (the server runs as that user). */
const handOver = (path: string): void => {
  if (asRoot) Fs.chownSync(path, postgresIds().uid, postgresIds().gid)
}

/** Makes a cluster, configures it and starts it; see the module header. */
export const start = async (options: Options = {}): Promise<Server> => {
  const bin = binDir()
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "sleeve-pg-"))
  const data = Path.join(dir, "data")
  const logFile = Path.join(dir, "server.log")
  handOver(dir)
  let started = false
  const stop = async () => {
    if (started) {
      started = false
      await runServerCommand(Path.join(bin, "pg_ctl"), ["-D", data, "-m", "fast", "-w", "stop"]).catch(() => undefined)
    }
    Fs.rmSync(dir, { recursive: true, force: true })
  }
  try {
    await runServerCommand(Path.join(bin, "initdb"), [
      "-D",
      data,
      "-U",
      "postgres",
      "-A",
      "trust",
      "-E",
      "UTF8",
      "--locale=C",
      "--no-sync"
    ])
    const conf: Array<string> = [
      "listen_addresses = '127.0.0.1'",
      `unix_socket_directories = '${dir}'`,
      "fsync = off",
      "max_connections = 20",
      "shared_buffers = 16MB",
      "log_connections = on"
    ]
    if (options.ssl !== undefined) {
      // PostgreSQL wants its key owned by the server user and unreadable by others.
      for (const [file, pem, mode] of [
        ["server.crt", options.ssl.certPem, 0o644],
        ["server.key", options.ssl.keyPem, 0o600]
      ] as const) {
        Fs.writeFileSync(Path.join(data, file), pem, { mode })
        handOver(Path.join(data, file))
      }
      conf.push("ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'")
    } else conf.push("ssl = off")
    Fs.appendFileSync(Path.join(data, "postgresql.conf"), `\n# sleeve test\n${conf.join("\n")}\n`)
    if (options.ssl !== undefined && options.requireSsl === true) {
      Fs.writeFileSync(
        Path.join(data, "pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n"
      )
    }
    // PostgreSQL needs a port number, not port 0; one picked now may be taken before the
    // server binds it: try a few.
    for (let attempt = 1; ; attempt++) {
      const port = await freePort()
      try {
        await runServerCommand(Path.join(bin, "pg_ctl"), [
          "-D",
          data,
          "-l",
          logFile,
          "-o",
          `-p ${port}`,
          "-w",
          "-t",
          "20",
          "start"
        ])
        started = true
        return {
          host: "127.0.0.1",
          port,
          dir,
          log: () => (Fs.existsSync(logFile) ? Fs.readFileSync(logFile, "utf8") : ""),
          stop
        }
      } catch (e) {
        if (attempt >= 3) {
          const log = Fs.existsSync(logFile) ? Fs.readFileSync(logFile, "utf8") : ""
          throw new Error(`PostgreSQL did not start: ${(e as Error).message}\n${log}`)
        }
      }
    }
  } catch (e) {
    await stop()
    throw e
  }
}

/**
 * Runs `psql` with a connection string and one SQL command, unaligned and tuples-only output,
 * no `~/.psqlrc`. Never waits longer than `timeoutMs`.
 */
export const psql = async (conninfo: string, sql: string, timeoutMs = 10_000): Promise<PsqlResult> => {
  const { code, stdout, stderr } = await Process.run(
    "psql",
    ["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql],
    {
      timeoutMs,
      // Only the connection string decides: no PGHOST, PGSSLMODE, ... from the environment.
      env: {
        ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("PG"))),
        PGCONNECT_TIMEOUT: "5",
        PGAPPNAME: "sleeve-test"
      }
    }
  )
  return { code, stdout, stderr }
}
