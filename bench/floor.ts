/**
 * The floor any Node TLS proxy starts from: `node:tls` + `pipe()` both ways and nothing else —
 * no config, metrics, logging or timers. Run by the suite as `node bench/floor.ts CONFIG.json`,
 * where the file holds `{ listeners: [...] }` (see `FloorListener`). Prints nothing.
 *
 * terminate: TLS in (optionally requiring a client certificate and checking its subject DN, the
 * closest cheap equivalent of Sleeve's DN authorization), plaintext to `target`.
 * originate: plaintext in, TLS to `target`, verifying it against `ca` for the name "localhost".
 */
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Tls from "node:tls"

export interface FloorListener {
  readonly mode: "terminate" | "originate"
  readonly port: number
  readonly target: number
  readonly cert?: string
  readonly key?: string
  readonly ca?: string
  /** terminate: require a client certificate whose subject is exactly this DN. */
  readonly clientSubject?: string
}

const relay = (a: Net.Socket, b: Net.Socket) => {
  a.pipe(b)
  b.pipe(a)
  a.on("error", () => b.destroy())
  b.on("error", () => a.destroy())
  a.on("close", () => b.destroy())
  b.on("close", () => a.destroy())
}

const { listeners } = JSON.parse(Fs.readFileSync(process.argv[2]!, "utf8")) as { listeners: Array<FloorListener> }
for (const l of listeners) {
  if (l.mode === "terminate") {
    Tls.createServer(
      {
        cert: Fs.readFileSync(l.cert!),
        key: Fs.readFileSync(l.key!),
        minVersion: "TLSv1.3",
        ...(l.clientSubject ? { ca: Fs.readFileSync(l.ca!), requestCert: true, rejectUnauthorized: true } : {})
      },
      (tls) => {
        if (l.clientSubject) {
          const subject = tls.getPeerX509Certificate()?.subject.split("\n").reverse().join(",")
          if (subject !== l.clientSubject) return tls.destroy()
        }
        relay(tls, Net.connect(l.target, "127.0.0.1"))
      }
    ).listen(l.port, "127.0.0.1")
  } else {
    const ca = Fs.readFileSync(l.ca!)
    Net.createServer((plain) => {
      relay(
        plain,
        Tls.connect({ port: l.target, host: "127.0.0.1", ca, servername: "localhost", minVersion: "TLSv1.3" })
      )
    }).listen(l.port, "127.0.0.1")
  }
}
