/**
 * SIGTERM under heavy load (issue 12, faults): a real `sleeve run` relays many concurrent TLS
 * streams to an echo application when it gets SIGTERM. Bulk streams (several MiB each, as fast as
 * TLS goes) are in flight at that moment, and slow streams that cannot finish before
 * `drainTimeout` trickle alongside. Then:
 *
 * - the process exits 0, within the drain deadline (plus start-up slack);
 * - once it logged `draining`, a new connection is refused by the kernel;
 * - every stream that finished arrived whole: the bytes echoed back have the SHA-256 of the
 *   bytes sent, including the streams that finished after SIGTERM;
 * - every stream still open at the deadline is cut, and the cut is accounted for: the `stopped`
 *   event's `closedAtDeadline` equals the number of streams cut, each has a `closed` event with
 *   reason `aborted`, and what it had received until then is an exact prefix of what it sent.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { close, listen, makeConnections } from "@sleeve/testing/Net"
import * as TestPki from "@sleeve/testing/TestPki"
import { waitUntil } from "@sleeve/testing/Wait"
import { createHash, randomBytes } from "node:crypto"
import * as Net from "node:net"
import * as Tls from "node:tls"
import { type SleeveDaemon, startSleeve } from "../support/Prometheus.ts"

const BULK = Number(process.env.SLEEVE_DRAIN_STREAMS ?? 24)
const BULK_BYTES = Number(process.env.SLEEVE_DRAIN_STREAM_MIB ?? 4) * 1024 * 1024
const SLOW = 6
const DRAIN_MS = 8000
const CHUNK = 64 * 1024

let pki: TestPki.TestPki
let root: TestPki.Identity
let echo: Net.Server
const echoSockets = makeConnections()
let sleeve: SleeveDaemon

beforeAll(async () => {
  pki = await TestPki.make()
  root = await pki.ca({ name: "root", subject: [{ CN: "Drain CA" }] })
  await pki.leaf(root, {
    name: "server",
    subject: [{ CN: "localhost" }],
    san: { dns: ["localhost"], ip: ["127.0.0.1"] }
  })
  echo = Net.createServer((s) => {
    echoSockets.track(s)
    s.pipe(s)
  })
  const echoPort = await listen(echo)
  await pki.write(
    "sleeve.yaml",
    `
admin: { listen: "127.0.0.1:0" }
drainTimeout: ${DRAIN_MS / 1000}s
tls:
  Server:
    type: server
    certificateFile: server.crt
    privateKeyFile: server.key
listeners:
  - { name: in, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${echoPort}", tls: Server }
`
  )
  sleeve = await startSleeve("sleeve.yaml", { cwd: pki.dir })
}, 60_000)

afterAll(async () => {
  await sleeve?.stop("SIGKILL")
  if (echo !== undefined) await close(echo, echoSockets.sockets)
  await pki?.cleanup()
})

/** What one stream saw. */
interface Stream {
  readonly kind: "bulk" | "slow"
  /** Bytes written so far (all of them are kept, to check what came back). */
  sent: Array<Buffer>
  sentBytes: number
  received: number
  /** Every byte received so far equals the byte sent at that offset. */
  prefixOk: boolean
  receivedSha: ReturnType<typeof createHash>
  /** The client wrote everything and got it all back, then the end of the stream. */
  completed: boolean
  completedAt?: number
  closedAt?: number
  receivedAfterSigterm: number
  error?: string
  readonly closed: Promise<void>
}

let sigtermAt: number | undefined

const startStream = (port: number, kind: Stream["kind"]): Promise<Stream> =>
  new Promise((resolve, reject) => {
    const socket = Tls.connect({ host: "127.0.0.1", port, ca: root.certPem, servername: "localhost" })
    let onClosed: () => void = () => {}
    const st: Stream = {
      kind,
      sent: [],
      sentBytes: 0,
      received: 0,
      prefixOk: true,
      receivedSha: createHash("sha256"),
      completed: false,
      receivedAfterSigterm: 0,
      closed: new Promise<void>((r) => {
        onClosed = r
      })
    }
    // The bytes sent, looked up by offset, to check each received chunk against them.
    let cursor = { index: 0, offset: 0 }
    const check = (d: Buffer) => {
      let at = 0
      while (at < d.length) {
        const src = st.sent[cursor.index]
        if (src === undefined) {
          st.prefixOk = false
          return
        }
        const n = Math.min(src.length - cursor.offset, d.length - at)
        if (!d.subarray(at, at + n).equals(src.subarray(cursor.offset, cursor.offset + n))) st.prefixOk = false
        at += n
        cursor.offset += n
        if (cursor.offset === src.length) cursor = { index: cursor.index + 1, offset: 0 }
      }
    }
    socket.on("data", (d: Buffer) => {
      check(d)
      st.received += d.length
      st.receivedSha.update(d)
      if (sigtermAt !== undefined) st.receivedAfterSigterm += d.length
    })
    socket.on("end", () => {
      if (kind === "bulk" && st.received === BULK_BYTES && st.sentBytes === BULK_BYTES) {
        st.completed = true
        st.completedAt = performance.now()
      }
    })
    socket.on("close", () => {
      st.closedAt = performance.now()
      onClosed()
    })
    socket.on("error", (e) => {
      st.error = e.message
    })
    socket.once("secureConnect", () => {
      resolve(st)
      if (kind === "bulk") {
        const data = randomBytes(BULK_BYTES)
        let off = 0
        const pump = () => {
          while (off < data.length) {
            const chunk = data.subarray(off, off + CHUNK)
            st.sent.push(chunk)
            st.sentBytes += chunk.length
            off += chunk.length
            if (!socket.write(chunk)) return void socket.once("drain", pump)
          }
          socket.end()
        }
        pump()
      } else {
        // A trickle that cannot finish before the deadline.
        const timer = setInterval(() => {
          if (socket.destroyed) return clearInterval(timer)
          const chunk = randomBytes(16 * 1024)
          st.sent.push(chunk)
          st.sentBytes += chunk.length
          socket.write(chunk)
        }, 100)
        socket.once("close", () => clearInterval(timer))
      }
    })
    socket.once("error", reject)
  })

const refused = (port: number): Promise<string> =>
  new Promise((resolve) => {
    const s = Net.connect({ host: "127.0.0.1", port })
    s.once("connect", () => {
      s.destroy()
      resolve("connected")
    })
    s.once("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message))
  })

describe("sleeve run: SIGTERM during heavy load", () => {
  it("drains and exits 0: finished streams arrive whole, new connections are refused, streams cut at the deadline are counted", async () => {
    const port = sleeve.listeners.in!.port
    const streams = await Promise.all([
      ...Array.from({ length: BULK }, () => startStream(port, "bulk")),
      ...Array.from({ length: SLOW }, () => startStream(port, "slow"))
    ])
    // SIGTERM early in the bulk transfer (an eighth of it echoed), so that most bulk streams are
    // in flight.
    const bulkReceived = () => streams.reduce((n, s) => n + (s.kind === "bulk" ? s.received : 0), 0)
    await waitUntil("the bulk transfer to be under way", () => bulkReceived() >= (BULK * BULK_BYTES) / 8 || undefined, {
      timeoutMs: 30_000,
      everyMs: 5
    })
    const inFlight = streams.filter((s) => s.kind === "bulk" && !s.completed).length
    const eventsBefore = sleeve.events().length
    sigtermAt = performance.now()
    sleeve.child.kill("SIGTERM")
    const draining = await sleeve.waitForEvent("draining", () => true, { after: eventsBefore })
    expect(draining.deadlineMs).toBe(DRAIN_MS)
    // New connections are refused while the old ones drain.
    const attempts = [await refused(port), await refused(port), await refused(port)]
    expect(attempts).toEqual(["ECONNREFUSED", "ECONNREFUSED", "ECONNREFUSED"])

    const exit = await sleeve.exited
    const exitedAfterMs = performance.now() - sigtermAt
    await Promise.all(streams.map((s) => s.closed))
    expect(exit).toEqual({ code: 0, signal: null })
    // Within the deadline: the drain itself, plus the time to log and exit (generous for CI).
    expect(exitedAfterMs).toBeLessThan(DRAIN_MS + 10_000)

    // Finished streams arrived whole.
    const completed = streams.filter((s) => s.completed)
    for (const s of completed) {
      const sentSha = createHash("sha256")
      for (const c of s.sent) sentSha.update(c)
      expect(s.receivedSha.digest("hex")).toBe(sentSha.digest("hex"))
      expect(s.prefixOk).toBe(true)
    }
    const finishedAfterSigterm = completed.filter((s) => s.completedAt! > sigtermAt!).length
    expect(finishedAfterSigterm).toBeGreaterThan(0)

    // Cut streams: exactly the ones the sidecar says it closed at the deadline; each got a
    // prefix of what it sent, intact, and kept receiving during the drain.
    const cut = streams.filter((s) => !s.completed)
    expect(cut.filter((s) => s.kind === "slow")).toHaveLength(SLOW)
    for (const s of cut) {
      expect(s.prefixOk).toBe(true)
      expect(s.received).toBeLessThanOrEqual(s.sentBytes)
    }
    expect(cut.filter((s) => s.kind === "slow").every((s) => s.receivedAfterSigterm > 0)).toBe(true)
    const stopped = sleeve.events().find((e) => e.event === "stopped")
    expect(stopped?.closedAtDeadline).toBe(cut.length)
    const closed = sleeve.events().filter((e) => e.event === "closed")
    expect(closed).toHaveLength(streams.length)
    expect(closed.filter((e) => e.reason === "aborted")).toHaveLength(cut.length)
    expect(closed.filter((e) => e.reason === "closed")).toHaveLength(completed.length)

    const mib = (n: number) => (n / 1024 / 1024).toFixed(1)
    console.log(
      `SIGTERM under load: ${BULK} bulk streams of ${mib(BULK_BYTES)} MiB + ${SLOW} slow; ${inFlight} bulk in flight at SIGTERM; ` +
        `${completed.length} arrived whole (${finishedAfterSigterm} after SIGTERM), ${cut.length} cut at the ${DRAIN_MS / 1000} s deadline ` +
        `(closedAtDeadline ${String(stopped?.closedAtDeadline)}); exit 0 after ${(exitedAfterMs / 1000).toFixed(1)} s; ` +
        `${mib(streams.reduce((n, s) => n + s.received, 0))} MiB echoed in all`
    )
  }, 120_000)
})
