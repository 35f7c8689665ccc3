/**
 * Runnable example: a tiny line protocol with its own STARTTLS command, secured partway through
 * with a named TLS configuration — the IRIS `USE dev:(::/TLS="cfg")` pattern, both sides.
 *
 *   node packages/proxy/examples/starttls-line.ts      (from the repository root, Node 24)
 *
 * The server greets in plaintext, answers `STARTTLS` with `OK`, then calls `upgradeServer`; the
 * client sends `STARTTLS`, waits for `OK`, then calls `upgradeClient`. Everything after that is
 * TLS, with mutual authentication and DN authorization from the configuration file.
 */
import * as TestPki from "@sleeve/testing/TestPki"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"
import { TlsConfigs } from "../src/index.ts"

/** Reads one line from a socket (plaintext or TLS), then stops reading. */
const readLine = (socket: Net.Socket): Promise<string> =>
  new Promise((resolve, reject) => {
    let buf = ""
    const onData = (d: Buffer) => {
      buf += d.toString("utf8")
      const i = buf.indexOf("\n")
      if (i === -1) return
      socket.off("data", onData)
      socket.off("error", reject)
      socket.pause()
      // Anything after the line is dropped: before an upgrade, bytes a peer pipelines after
      // STARTTLS must never be treated as part of the secured session (CVE-2011-0411 class).
      resolve(buf.slice(0, i).replace(/\r$/, ""))
    }
    socket.on("data", onData)
    socket.once("error", reject)
    socket.resume()
  })

// A throwaway PKI and a configuration with one server and one client TLS configuration.
const pki = await TestPki.make()
const ca = await pki.ca()
const server = await pki.leaf(ca, { name: "server", subject: [{ CN: "line-server" }, { O: "Example" }] })
const client = await pki.leaf(ca, { name: "client", subject: [{ CN: "line-client" }, { O: "Example" }] })
const configPath = Path.join(pki.dir, "sleeve.yaml")
Fs.writeFileSync(
  configPath,
  `tls:
  LineServer:
    type: server
    caFile: ${pki.caFile}
    certificateFile: ${server.certFile}
    privateKeyFile: ${server.keyFile}
    verifyPeer: require
    authorizedPeers: ["CN=line-client,O=Example"]
  LineClient:
    type: client
    caFile: ${pki.caFile}
    certificateFile: ${client.certFile}
    privateKeyFile: ${client.keyFile}
    authorizedPeers: ["CN=line-server,O=Example"]
`
)
const sleeve = await TlsConfigs.open(configPath)

// Server: greet, wait for STARTTLS, answer OK, upgrade, then serve lines over TLS.
const listener = Net.createServer(async (socket) => {
  socket.write("HELLO legacy-line-protocol\n")
  const command = await readLine(socket)
  if (command !== "STARTTLS") {
    socket.end("ERR say STARTTLS first\n")
    return
  }
  socket.write("OK begin TLS\n")
  const secure = await sleeve.upgradeServer(socket, "LineServer") // USE dev:(::/TLS="LineServer")
  const line = await readLine(secure)
  secure.end(`secure echo: ${line}\n`)
})
await new Promise<void>((r) => listener.listen(0, "127.0.0.1", () => r()))
const port = (listener.address() as Net.AddressInfo).port

// Client: plaintext first, then STARTTLS, then TLS.
const socket = Net.connect(port, "127.0.0.1")
console.log(`server says: ${await readLine(socket)}`)
socket.write("STARTTLS\n")
console.log(`server says: ${await readLine(socket)}`)
const secure = await sleeve.upgradeClient(socket, "LineClient", { serverName: "localhost" }) // USE dev:(::/TLS="LineClient")
console.log(`upgraded: ${secure.getProtocol()}, server certificate ${secure.getPeerCertificate().subject.CN}`)
secure.write("ping\n")
console.log(`server says: ${await readLine(secure)}`)
secure.destroy()
listener.close()
await pki.cleanup()
