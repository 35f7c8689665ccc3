/**
 * A real HAProxy (Debian's package) for the PROXY protocol suites: started in the foreground
 * (`-db`) from a configuration written to a temporary directory, on ports the caller picks with
 * `freePort` (HAProxy cannot bind port 0 and report it), and considered up once every given port
 * accepts a TCP connection. A port taken by someone else in between makes HAProxy exit at once;
 * `start` then retries with new ports, up to three times.
 *
 * Nothing here is product code: HAProxy is the oracle (`accept-proxy` on a `bind` parses what
 * Sleeve sends) and the load balancer in front (`send-proxy` / `send-proxy-v2` on a `server`).
 */
import { freePort } from "@sleeve/testing/Net"
import * as Process from "@sleeve/testing/Process"
import { waitUntil } from "@sleeve/testing/Wait"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"

/** A running HAProxy. */
export interface Haproxy {
  /** The ports it was configured with, in the order the caller asked for them. */
  readonly ports: ReadonlyArray<number>
  readonly daemon: Process.Daemon
  readonly stop: () => Promise<void>
}

const accepts = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const s = Net.connect({ host: "127.0.0.1", port })
    s.once("connect", () => {
      s.destroy()
      resolve(true)
    })
    s.once("error", () => resolve(false))
  })

/** The `global`/`defaults` every configuration here starts with (logs to stderr). */
export const preamble = (mode: "http" | "tcp"): string => `global
  log stderr format raw local0 info
defaults
  log global
  mode ${mode}
  timeout client 10s
  timeout server 10s
  timeout connect 5s
`

/** A frontend that only accepts and drops connections: a readiness probe that reaches no backend. */
export const readyFrontend = (port: number): string => `frontend ready
  mode tcp
  bind 127.0.0.1:${port}
  tcp-request connection reject
`

/**
 * Starts HAProxy with the configuration `render` builds from `count` free ports. Resolves once
 * it accepts on the ports `probe` picks (default: all). A load balancer's frontend should not be
 * probed — the probe would be relayed like a client — so give it a spare port with a
 * {@link readyFrontend}.
 */
export const start = async (
  count: number,
  render: (ports: ReadonlyArray<number>) => string,
  probe: (ports: ReadonlyArray<number>) => ReadonlyArray<number> = (ports) => ports
): Promise<Haproxy> => {
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "sleeve-haproxy-"))
  let lastOutput = ""
  for (let attempt = 0; attempt < 3; attempt++) {
    const ports: Array<number> = []
    for (let i = 0; i < count; i++) ports.push(await freePort())
    const file = Path.join(dir, "haproxy.cfg")
    Fs.writeFileSync(file, render(ports))
    const daemon = Process.startDaemon("haproxy", ["-db", "-f", file])
    try {
      await waitUntil(
        "haproxy to accept on its ports",
        async () => {
          if (daemon.hasExited()) throw new Error(`haproxy exited\n${daemon.output()}`)
          for (const p of probe(ports)) if (!(await accepts(p))) return undefined
          return true
        },
        { timeoutMs: 10_000, everyMs: 50, detail: daemon.output }
      )
      return {
        ports,
        daemon,
        stop: async () => {
          await daemon.stop("SIGTERM", 3000)
          Fs.rmSync(dir, { recursive: true, force: true })
        }
      }
    } catch (e) {
      lastOutput = e instanceof Error ? e.message : String(e)
      await daemon.stop("SIGKILL", 1000)
    }
  }
  Fs.rmSync(dir, { recursive: true, force: true })
  throw new Error(`haproxy did not start\n${lastOutput}`)
}
