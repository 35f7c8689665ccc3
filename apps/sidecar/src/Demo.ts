/**
 * `sleeve demo`: Sleeve end to end with nothing to prepare. It makes a throwaway PKI in a temp
 * folder (a CA, two dual-use mirror node certificates and an "intruder" certificate from the
 * same CA whose DN is not authorized) and starts two small plaintext "legacy apps": a line
 * service that answers `legacy-app: <line>`, and an SMTP server that knows nothing of TLS. It
 * writes a configuration with
 * - a mirror pair of TLS configurations (`MirrorServer`/`MirrorClient`, each authorizing the
 *   other's DN, `requireDualUse`) and a terminate listener with mutual TLS in front of the line
 *   app (`app-in`), plus an originate listener chained to it (`app-out`: plaintext in, TLS out);
 * - a server-side STARTTLS listener (`mail-in`, `protocol: smtp`) in front of the SMTP app, so a
 *   mail client can upgrade a plaintext session that the app itself could never secure;
 * - the admin endpoint,
 * runs it exactly as `sleeve run` does, and prints numbered commands to try (`openssl s_client`,
 * `curl`), including one whose DN is rejected so that the rejection shows on the metrics page.
 * Ctrl-C drains and exits 0.
 *
 * The printed block is a contract with `test/e2e/demo-prints-working-commands.e2e.test.ts`: it
 * starts with {@link readyLine}, each step is `  N. <what>` followed by one command line, and it
 * ends with {@link endLine}. The test runs every command with `bash -c` and checks its outcome.
 */
import * as TestPki from "@sleeve/testing/TestPki"
import { Effect } from "effect"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"
import * as Sidecar from "./Sidecar.ts"

/** The line printed once the demo is ready (tests wait for it). */
export const readyLine = "sleeve demo: ready"

/** The last line of the printed instructions. */
export const endLine = "  Stop: Ctrl-C"

// ---------------------------------------------------------------------------------------------
// The legacy apps (plaintext only, on loopback)
// ---------------------------------------------------------------------------------------------

const listen = (server: Net.Server): Promise<Net.Server> =>
  new Promise((resolve, reject) => {
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => resolve(server))
  })

/** Splits a socket's text into lines (CRLF or LF), calling `onLine` for each. */
const onLines = (socket: Net.Socket, onLine: (line: string) => void): void => {
  socket.setEncoding("utf8")
  let buf = ""
  socket.on("data", (d: string) => {
    buf += d
    for (let i = buf.indexOf("\n"); i !== -1; i = buf.indexOf("\n")) {
      const line = buf.slice(0, i).replace(/\r$/, "")
      buf = buf.slice(i + 1)
      onLine(line)
    }
  })
  socket.on("error", () => {})
}

/** A line service: every line comes back as `legacy-app: <line>`. */
const startLineApp = (): Promise<Net.Server> =>
  listen(Net.createServer((s) => onLines(s, (line) => s.write(`legacy-app: ${line}\n`))))

/**
 * A minimal SMTP server (RFC 5321: greeting, EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) with
 * no TLS at all, as many legacy mail-producing apps are. Accepted messages are reported through
 * `onMessage`.
 */
const startSmtpApp = (onMessage: (from: string, bytes: number) => void): Promise<Net.Server> =>
  listen(
    Net.createServer((s) => {
      const say = (text: string) => s.write(`${text}\r\n`)
      let from = ""
      let data: Array<string> | undefined
      say("220 legacy-app ESMTP ready (plaintext only)")
      onLines(s, (line) => {
        if (data !== undefined) {
          if (line !== ".") {
            data.push(line)
            return
          }
          onMessage(from, data.join("\r\n").length)
          data = undefined
          return say("250 2.0.0 legacy-app: message accepted")
        }
        const verb = line.split(" ")[0]?.toUpperCase() ?? ""
        const arg = line.slice(verb.length).trim()
        switch (verb) {
          case "EHLO":
            return say(`250-legacy-app greets ${arg || "you"}\r\n250-8BITMIME\r\n250 SIZE 1048576`)
          case "HELO":
            return say(`250 legacy-app greets ${arg || "you"}`)
          case "MAIL":
            from = arg.replace(/^FROM:\s*/i, "")
            return say("250 2.1.0 OK")
          case "RCPT":
            return say("250 2.1.5 OK")
          case "DATA":
            data = []
            return say("354 End data with <CR><LF>.<CR><LF>")
          case "RSET":
          case "NOOP":
            return say("250 2.0.0 OK")
          case "QUIT":
            say("221 2.0.0 legacy-app: bye")
            return void s.end()
          default:
            return say("502 5.5.2 command not implemented")
        }
      })
    })
  )

// ---------------------------------------------------------------------------------------------
// The demo
// ---------------------------------------------------------------------------------------------

/** Runs the demo until interrupted. */
export const run = (options: { readonly dir?: string | undefined }): Effect.Effect<void, Error> =>
  Effect.gen(function* () {
    // Absolute: TestPki joins its folder with paths that already contain a relative one.
    const dir = options.dir === undefined ? undefined : Path.resolve(options.dir)
    if (dir !== undefined) Fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
    const pki = yield* Effect.acquireRelease(
      Effect.promise(() => TestPki.make(dir === undefined ? {} : { dir })),
      (p) => Effect.promise(() => (dir === undefined ? p.cleanup() : Promise.resolve()))
    )
    const ca = yield* Effect.promise(() => pki.ca({ subject: [{ CN: "Sleeve Demo CA" }, { O: "Sleeve Demo" }] }))
    const leaf = (name: string) =>
      Effect.promise(() => pki.leaf(ca, { name, subject: [{ CN: `${name}.sleeve.demo` }, { O: "Sleeve Demo" }] }))
    const node1 = yield* leaf("node1")
    const node2 = yield* leaf("node2")
    const intruder = yield* leaf("intruder")
    const lineApp = yield* Effect.acquireRelease(Effect.promise(startLineApp), (s) => Effect.sync(() => s.close()))
    const smtpApp = yield* Effect.acquireRelease(
      Effect.promise(() =>
        startSmtpApp((from, bytes) => {
          process.stderr.write(
            `${JSON.stringify({ time: new Date().toISOString(), level: "info", event: "legacy_smtp_message", from, bytes })}\n`
          )
        })
      ),
      (s) => Effect.sync(() => s.close())
    )
    const port = (s: Net.Server) => (s.address() as Net.AddressInfo).port
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
  MailFront:
    description: "STARTTLS for a plaintext SMTP app; mail clients send no certificate"
    type: server
    certificateFile: ${node1.certFile}
    privateKeyFile: ${node1.keyFile}
listeners:
  - name: app-in
    mode: terminate
    listen: "127.0.0.1:${terminatePort}"
    target: "127.0.0.1:${port(lineApp)}"
    tls: MirrorServer
  - name: app-out
    mode: originate
    listen: "127.0.0.1:0"
    target: "127.0.0.1:${terminatePort}"
    serverName: localhost
    tls: MirrorClient
  - name: mail-in
    mode: starttls
    protocol: smtp
    side: server
    listen: "127.0.0.1:0"
    target: "127.0.0.1:${port(smtpApp)}"
    tls: MailFront
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
        const address = (name: string) => splitHostPort(ready.listeners.find((l) => l.name === name)?.listen ?? "?:?")
        const [host, p] = address("app-in")
        const [, out] = address("app-out")
        const [mailHost, mail] = address("mail-in")
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
            "  5. STARTTLS in front of a plaintext SMTP app: openssl upgrades, then talks to the app over TLS.",
            `     printf 'EHLO demo\\r\\nQUIT\\r\\n' | openssl s_client -quiet -starttls smtp -connect ${mailHost}:${mail} ` +
              `-CAfile ${pki.caFile} -verify_return_error`,
            "  6. The same with a mail client: curl sends a message through the upgraded session.",
            `     printf 'Subject: hello\\r\\n\\r\\nhello from curl\\r\\n' | curl -sS --ssl-reqd --cacert ${pki.caFile} ` +
              `--mail-from demo@sleeve.demo --mail-rcpt app@legacy.demo -T - smtp://${mailHost}:${mail} && echo sent`,
            `  Status: curl -s ${ready.admin}/status`,
            endLine,
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
