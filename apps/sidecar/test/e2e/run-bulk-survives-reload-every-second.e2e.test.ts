/**
 * Bulk data while reloading every second (issue 12, load): a real `sleeve run` with an originate
 * listener (plaintext in, TLS out) in front of its own terminate listener (TLS in, plaintext out)
 * in front of an echo application, so every byte crosses both modes, twice. A client streams
 * random bytes through it and reads them back while the server certificate is swapped (between
 * two complete pairs, by an atomic symlink swap as a Kubernetes Secret update does) and SIGHUP is
 * sent every second. Asserted:
 *
 * - the SHA-256 of the bytes echoed back equals that of the bytes sent, and so do the counts;
 * - the reloads really happened (`reloaded` logged, none failed) while the stream ran, and the
 *   stream's TLS connection was never re-established (one `handshake_ok` per hop);
 * - afterwards a new client sees the certificate swapped in last.
 *
 * Size: 128 MiB by default (the README test command); `SLEEVE_SOAK=1` for the full 1 GiB;
 * `SLEEVE_BULK_MIB` overrides either (see docs/security.md).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { close, freePort, listen, makeConnections } from "@sleeve/testing/Net"
import * as TestPki from "@sleeve/testing/TestPki"
import { createHash, randomBytes, X509Certificate } from "node:crypto"
import * as Fs from "node:fs"
import * as Net from "node:net"
import { join } from "node:path"
import * as Tls from "node:tls"
import { type SleeveDaemon, startSleeve } from "../support/Prometheus.ts"

const soak = process.env.SLEEVE_SOAK === "1"
const MIB = Number(process.env.SLEEVE_BULK_MIB ?? (soak ? 1024 : 128))
const TOTAL = MIB * 1024 * 1024
const CHUNK = 256 * 1024
/** The transfer lasts at least this long: several reloads happen during it. */
const MIN_MS = 4500
const FIGURES = process.env.SLEEVE_FIGURES_FILE

let pki: TestPki.TestPki
const pairs: Array<TestPki.Identity> = []
let echo: Net.Server
const echoSockets = makeConnections()
let sleeve: SleeveDaemon

/** Points `live` at `pair-<n>` atomically (a new symlink renamed over the old one). */
const swapTo = (n: number) => {
  const tmp = join(pki.dir, "live.tmp")
  Fs.rmSync(tmp, { force: true })
  Fs.symlinkSync(`pair-${n}`, tmp)
  Fs.renameSync(tmp, join(pki.dir, "live"))
}

beforeAll(async () => {
  pki = await TestPki.make()
  const root = await pki.ca({ name: "root", subject: [{ CN: "Bulk Root" }] })
  for (const n of [0, 1]) {
    const id = await pki.leaf(root, {
      name: `server-${n}`,
      subject: [{ CN: "localhost", O: `Pair ${n}` }],
      san: { dns: ["localhost"], ip: ["127.0.0.1"] }
    })
    pairs.push(id)
    Fs.mkdirSync(join(pki.dir, `pair-${n}`))
    await pki.write(`pair-${n}/server.crt`, id.certPem)
    await pki.write(`pair-${n}/server.key`, id.keyPem)
  }
  swapTo(0)
  echo = Net.createServer((s) => {
    echoSockets.track(s)
    s.pipe(s)
  })
  const echoPort = await listen(echo)
  const inPort = await freePort()
  await pki.write(
    "sleeve.yaml",
    `
admin: { listen: "127.0.0.1:0" }
tls:
  Server:
    type: server
    certificateFile: live/server.crt
    privateKeyFile: live/server.key
  Client:
    type: client
    caFile: root.crt
listeners:
  - { name: out, mode: originate, listen: "127.0.0.1:0", target: "127.0.0.1:${inPort}", tls: Client, serverName: localhost }
  - { name: in, mode: terminate, listen: "127.0.0.1:${inPort}", target: "127.0.0.1:${echoPort}", tls: Server }
`
  )
  sleeve = await startSleeve("sleeve.yaml", { cwd: pki.dir })
}, 60_000)

afterAll(async () => {
  await sleeve?.stop("SIGTERM")
  if (echo !== undefined) await close(echo, echoSockets.sockets)
  await pki?.cleanup()
})

const servedCertificate = (port: number): Promise<string> =>
  new Promise((resolve, reject) => {
    const s = Tls.connect({ host: "127.0.0.1", port, ca: pairs[0]!.issuer!.certPem, servername: "localhost" })
    s.once("error", reject)
    s.once("secureConnect", () => {
      const fp = s.getPeerCertificate().fingerprint256
      s.destroy()
      resolve(fp)
    })
  })

describe(`sleeve run: ${MIB} MiB through originate → terminate while reloading every second`, () => {
  it(
    "the bytes echoed back have the SHA-256 of the bytes sent; every reload succeeded; the stream was never re-established",
    async () => {
      const eventsBefore = sleeve.events().length
      const sentSha = createHash("sha256")
      const receivedSha = createHash("sha256")
      let sent = 0
      let received = 0
      const socket = Net.connect({ host: "127.0.0.1", port: sleeve.listeners.out!.port })
      await new Promise<void>((r, j) => {
        socket.once("connect", () => r())
        socket.once("error", j)
      })
      let current = 0
      let sighups = 0
      const reloader = setInterval(() => {
        current = 1 - current
        swapTo(current)
        sleeve.child.kill("SIGHUP")
        sighups++
      }, 1000)
      const t0 = performance.now()
      const done = new Promise<void>((resolve, reject) => {
        socket.on("data", (d: Buffer) => {
          received += d.length
          receivedSha.update(d)
        })
        socket.once("end", () => resolve())
        socket.once("error", reject)
      })
      await new Promise<void>((resolve, reject) => {
        const pump = () => {
          while (sent < TOTAL) {
            // Never faster than TOTAL in MIN_MS, so that reloads happen during even a small run.
            if (sent > (TOTAL * (performance.now() - t0)) / MIN_MS) return void setTimeout(pump, 10)
            const chunk = randomBytes(Math.min(CHUNK, TOTAL - sent))
            sentSha.update(chunk)
            sent += chunk.length
            if (!socket.write(chunk)) return void socket.once("drain", pump)
          }
          socket.end()
          resolve()
        }
        socket.once("error", reject)
        pump()
      })
      await done
      const seconds = (performance.now() - t0) / 1000
      clearInterval(reloader)

      expect(received).toBe(TOTAL)
      expect(receivedSha.digest("hex")).toBe(sentSha.digest("hex"))

      const during = sleeve.events().slice(eventsBefore)
      const reloaded = during.filter((e) => e.event === "reloaded").length
      expect(during.filter((e) => e.event === "reload_failed")).toEqual([])
      // Reloads really ran while the bytes flowed (the transfer lasts at least MIN_MS).
      expect(sighups).toBeGreaterThanOrEqual(3)
      expect(reloaded).toBeGreaterThanOrEqual(3)
      // The stream kept its connections: one handshake per hop, no other connection.
      expect(during.filter((e) => e.event === "handshake_ok")).toHaveLength(2)
      expect(during.filter((e) => e.event === "accepted")).toHaveLength(2)

      // The certificate swapped in last is what a new client gets, once the last reload ran.
      const lastReloads = sleeve.events().length
      sleeve.child.kill("SIGHUP")
      await sleeve.waitForEvent("reloaded", () => true, { after: lastReloads })
      expect(await servedCertificate(sleeve.listeners.in!.port)).toBe(
        new X509Certificate(pairs[current]!.certPem).fingerprint256
      )

      const line =
        `bulk under reload: ${MIB} MiB echoed through originate → terminate (${(2 * MIB).toFixed(0)} MiB over each hop) ` +
        `in ${seconds.toFixed(1)} s (${((2 * MIB) / seconds).toFixed(1)} MiB/s both ways), SHA-256 match; ` +
        `${sighups} SIGHUPs with a certificate swap, ${reloaded} reloads, 0 failed`
      console.log(line)
      if (FIGURES !== undefined) Fs.appendFileSync(FIGURES, `- ${new Date().toISOString()} ${line}\n`)
    },
    60_000 + MIB * 600
  )
})
