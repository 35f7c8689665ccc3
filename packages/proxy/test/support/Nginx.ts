/**
 * A real nginx (Debian's package with libnginx-mod-stream) as a second PROXY protocol parser: a
 * `stream` server on `listen … proxy_protocol` that answers every connection with the
 * `$proxy_protocol_*` variables it parsed, then closes. Started in the foreground, single
 * process, with its own prefix directory, on a port from `freePort` (retried when taken).
 *
 * nginx 1.22 has `$proxy_protocol_addr`, `_port`, `_server_addr` and `_server_port`; the
 * `$proxy_protocol_tlv_*` variables only exist from 1.23.2, and 1.22 refuses version 2 headers
 * longer than 107 bytes.
 */
import { freePort } from "@sleeve/testing/Net"
import * as Process from "@sleeve/testing/Process"
import { waitUntil } from "@sleeve/testing/Wait"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"

/** Debian's path of the stream module (libnginx-mod-stream). */
export const streamModule = "/usr/lib/nginx/modules/ngx_stream_module.so"

/** A running nginx. */
export interface Nginx {
  readonly port: number
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

/** Starts nginx answering `addr=… port=… server=…:…\n` from each PROXY header it parses. */
export const startEcho = async (): Promise<Nginx> => {
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "sleeve-nginx-"))
  Fs.mkdirSync(Path.join(dir, "logs"))
  let last = ""
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort()
    const file = Path.join(dir, "nginx.conf")
    Fs.writeFileSync(
      file,
      `load_module ${streamModule};
daemon off;
master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log stderr info;
events { worker_connections 64; }
stream {
  server {
    listen 127.0.0.1:${port} proxy_protocol;
    return "addr=$proxy_protocol_addr port=$proxy_protocol_port server=$proxy_protocol_server_addr:$proxy_protocol_server_port\\n";
  }
}
`
    )
    const daemon = Process.startDaemon("nginx", ["-p", dir, "-c", file])
    try {
      // A probe connection sends nothing: nginx waits for a header, then drops it.
      await waitUntil(
        "nginx to accept",
        async () => {
          if (daemon.hasExited()) throw new Error(`nginx exited\n${daemon.output()}`)
          return (await accepts(port)) ? true : undefined
        },
        { timeoutMs: 10_000, everyMs: 50, detail: daemon.output }
      )
      return {
        port,
        stop: async () => {
          await daemon.stop("SIGTERM", 3000)
          Fs.rmSync(dir, { recursive: true, force: true })
        }
      }
    } catch (e) {
      last = e instanceof Error ? e.message : String(e)
      await daemon.stop("SIGKILL", 1000)
    }
  }
  Fs.rmSync(dir, { recursive: true, force: true })
  throw new Error(`nginx did not start\n${last}`)
}
