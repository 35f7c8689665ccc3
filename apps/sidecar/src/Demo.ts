/**
 * `sleeve demo`: Sleeve end to end with nothing to prepare. It makes a throwaway PKI in a temp
 * folder (a CA, two dual-use mirror node certificates and an "intruder" certificate from the
 * same CA whose DN is not authorized), starts a small plaintext "legacy app" (a line service),
 * writes a configuration with a mirror pair of TLS configurations, a terminate listener with
 * mutual TLS and DN authorization, an originate listener chained to it, and the admin endpoint,
 * runs it exactly as `sleeve run` does, and prints commands to try, including one whose DN is
 * rejected so the rejection shows on the metrics page. Ctrl-C drains and exits 0.
 */
import * as TestPki from "@sleeve/testing/TestPki"
import { Effect } from "effect"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"
import * as Sidecar from "./Sidecar.ts"

/** The line printed once the demo is ready (tests wait for it). */
export const readyLine = "sleeve demo: ready"

const startLegacyApp = (): Promise<Net.Server> =>
  new Promise((resolve) => {
    const server = Net.createServer((s) => {
      s.setEncoding("utf8")
      let buf = ""
      s.on("data", (d: string) => {
        buf += d
        let i = buf.indexOf("\n")
        while (i !== -1) {
          s.write(`legacy-app: ${buf.slice(0, i).replace(/\r$/, "")}\n`)
          buf = buf.slice(i + 1)
          i = buf.indexOf("\n")
        }
      })
      s.on("error", () => {})
    })
    server.listen(0, "127.0.0.1", () => resolve(server))
  })

/** Runs the demo until interrupted. */
export const run = (options: { readonly dir?: string | undefined }): Effect.Effect<void, Error> =>
  Effect.gen(function* () {
    const pki = yield* Effect.acquireRelease(
      Effect.promise(() => TestPki.make(options.dir === undefined ? {} : { dir: options.dir })),
      (p) => Effect.promise(() => (options.dir === undefined ? p.cleanup() : Promise.resolve()))
    )
    const ca = yield* Effect.promise(() => pki.ca({ subject: [{ CN: "Sleeve Demo CA" }, { O: "Sleeve Demo" }] }))
    const leaf = (name: string) =>
      Effect.promise(() => pki.leaf(ca, { name, subject: [{ CN: `${name}.sleeve.demo` }, { O: "Sleeve Demo" }] }))
    const node1 = yield* leaf("node1")
    const node2 = yield* leaf("node2")
    const intruder = yield* leaf("intruder")
    const app = yield* Effect.acquireRelease(Effect.promise(startLegacyApp), (s) => Effect.sync(() => s.close()))
    const appPort = (app.address() as Net.AddressInfo).port
    // The terminate listener gets a fixed-for-this-run port so the originate listener can target it.
    const terminatePort = yield* Effect.promise(freePort)
    const configPath = Path.join(pki.dir, "sleeve.yaml")
    Fs.writeFileSync(
      configPath,
      `# Written by sleeve demo. A mirror pair: node1 serves, node2 connects; each checks the other's DN.
tls:
  MirrorServer:
    description: "like IRIS %MirrorServer"
    type: server
    caFile: ${pki.caFile}
    certificateFile: ${node1.certFile}
    privateKeyFile: ${node1.keyFile}
    verifyPeer: require
    authorizedPeers: ["${node2.subject}"]
    requireDualUse: true
  MirrorClient:
    description: "like IRIS %MirrorClient"
    type: client
    caFile: ${pki.caFile}
    certificateFile: ${node2.certFile}
    privateKeyFile: ${node2.keyFile}
    verifyPeer: require
    authorizedPeers: ["${node1.subject}"]
    requireDualUse: true
listeners:
  - name: app-in
    mode: terminate
    listen: "127.0.0.1:${terminatePort}"
    target: "127.0.0.1:${appPort}"
    tls: MirrorServer
  - name: app-out
    mode: originate
    listen: "127.0.0.1:0"
    target: "127.0.0.1:${terminatePort}"
    serverName: localhost
    tls: MirrorClient
admin:
  listen: "127.0.0.1:0"
`
    )
    yield* Sidecar.run({
      configPath,
      log: (level, event, fields) => {
        // Connection events go to stderr so the instructions stay readable on stdout.
        process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), level, event, ...fields })}\n`)
      },
      onReady: (ready) => {
        const port = (name: string) => ready.listeners.find((l) => l.name === name)?.listen ?? "?"
        const [host, p] = splitHostPort(port("app-in"))
        const [, out] = splitHostPort(port("app-out"))
        const sClient = (id: { certFile: string; keyFile: string }) =>
          `(echo hello; sleep 1) | openssl s_client -quiet -no_ign_eof -connect ${host}:${p} -servername localhost ` +
          `-CAfile ${pki.caFile} -cert ${id.certFile} -key ${id.keyFile}`
        process.stdout.write(
          [
            `${readyLine}`,
            `  PKI and configuration: ${pki.dir} (sleeve.yaml; check it with: sleeve check --config ${configPath})`,
            "",
            "  1. Mutual TLS with an authorized certificate (node2): the legacy app answers.",
            `     ${sClient(node2)}`,
            "  2. The same with a certificate from the same CA whose DN is not authorized: dropped and counted.",
            `     ${sClient(intruder)}`,
            "  3. Plaintext in, TLS out (originate -> terminate -> legacy app), as a legacy client would:",
            `     (echo hello; sleep 1) | curl -s --max-time 2 telnet://127.0.0.1:${out}`,
            "  4. The rejection on the metrics page:",
            `     curl -s ${ready.admin}/metrics | grep -E '^sleeve_tls_(dn_rejections|handshakes)_total'`,
            `  Status: curl -s ${ready.admin}/status     Stop: Ctrl-C`,
            ""
          ].join("\n")
        )
      }
    })
  }).pipe(Effect.scoped)

const splitHostPort = (s: string): [string, string] => {
  const i = s.lastIndexOf(":")
  return [s.slice(0, i), s.slice(i + 1)]
}

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const s = Net.createServer()
    s.once("error", reject)
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as Net.AddressInfo).port
      s.close(() => resolve(port))
    })
  })
