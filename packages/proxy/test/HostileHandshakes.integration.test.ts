/**
 * Hostile peers at a terminate listener (mutual TLS, `handshakeTimeout: 2s`), each on real
 * sockets: garbage instead of a ClientHello, an HTTP request on the TLS port, a ClientHello cut
 * short (then silent, or then closed), a ClientHello dribbled one byte per write, a ClientHello
 * declaring an oversized body, `openssl s_client` limited to TLS 1.0 or TLS 1.1, or offering only
 * NULL or only CBC ciphers, and a client-initiated renegotiation.
 *
 * For each bad connection: Sleeve closes it (the client sees the end of the stream, at most a
 * TLS alert, never application data), counts it once in `sleeve_tls_handshakes_total` and once
 * in `sleeve_tls_handshake_failures_total` with the expected reason, logs exactly one
 * `handshake_failed` event for it, never dials the target for it, and keeps serving: a fresh
 * mutual-TLS client is served after each attack, and a connection opened before the first one
 * still echoes after the last. Then every attack is repeated in a batch and the process's file
 * descriptors come back to where they were.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { MetricName } from "@sleeve/metrics/Metrics"
import type * as Metrics from "@sleeve/metrics/Metrics"
import { eventually, sleep, within } from "@sleeve/testing/Wait"
import { readdirSync } from "node:fs"
import * as Net from "node:net"
import { Duplex } from "node:stream"
import * as Tls from "node:tls"
import {
  type Cleanup,
  clientTls,
  connectTls,
  type DataPki,
  failureReasons,
  handshakeCounts,
  makeCleanup,
  makeDataPki,
  makeReader,
  type ProxyUnderTest,
  spawnOpenssl,
  startProxy,
  startTarget,
  type Target,
  terminateTls,
  writeConfig
} from "./support/DataPathHarness.ts"

let pki: DataPki
let cleanup: Cleanup
let proxy: ProxyUnderTest
let target: Target
let port = 0
/** A real ClientHello as Node's TLS client sends it to this listener (one TLS record). */
let clientHello: Buffer

// ---------------------------------------------------------------------------------------------
// Raw clients
// ---------------------------------------------------------------------------------------------

/** What a raw TCP client saw, from connect to close. */
interface RawView {
  /** Every byte the server sent. */
  readonly received: Buffer
  /** The server ended the stream (FIN) rather than resetting it. */
  readonly ended: boolean
  /** Code of the first socket error, e.g. ECONNRESET. */
  readonly error: string | undefined
}

/**
 * Connects, runs `attack` on the socket, and resolves once the server has closed the
 * connection; a server that keeps it open for `ms` fails the test.
 */
const raw = (attack: (s: Net.Socket) => unknown, ms = 10_000): Promise<RawView> => {
  const s = Net.connect({ host: "127.0.0.1", port, allowHalfOpen: true })
  s.setNoDelay(true)
  const chunks: Array<Buffer> = []
  let ended = false
  let error: string | undefined
  s.on("data", (c: Buffer) => chunks.push(c))
  s.on("end", () => {
    ended = true
    s.end()
  })
  s.on("error", (e: NodeJS.ErrnoException) => (error ??= e.code ?? e.message))
  const closed = new Promise<RawView>((resolve) =>
    s.once("close", () => resolve({ received: Buffer.concat(chunks), ended, error }))
  )
  s.once("connect", () => void attack(s))
  return within("the server to close the connection", ms, closed).finally(() => s.destroy())
}

/** Whether `bytes` are nothing but TLS alert records (what a server may say before it closes). */
const onlyAlerts = (bytes: Buffer): boolean => {
  let i = 0
  while (i < bytes.length) {
    if (i + 5 > bytes.length || bytes[i] !== 0x15 || bytes[i + 1] !== 0x03) return false
    i += 5 + bytes.readUInt16BE(i + 3)
  }
  return i === bytes.length
}

/** Captures the first flight a Node TLS client sends to the listener (its ClientHello). */
const captureClientHello = (): Promise<Buffer> =>
  new Promise((resolve, reject) => {
    const server = Net.createServer((s) => {
      s.once("data", (c: Buffer) => {
        resolve(c)
        s.destroy()
        server.close()
      })
    })
    server.listen(0, "127.0.0.1", () => {
      const { port: p } = server.address() as Net.AddressInfo
      const t = Tls.connect({ host: "127.0.0.1", port: p, ...clientTls(pki.ca, pki.client) })
      t.on("error", () => {})
    })
    server.on("error", reject)
  })

/**
 * A duplex over `socket` whose first write (the ClientHello) goes out one byte per TCP write
 * (each after the previous one was handed to the kernel, Nagle off), so the server reads it in
 * pieces; later writes pass unchanged.
 */
const dribbleFirstWrite = (socket: Net.Socket): Duplex => {
  let first = true
  const duplex = new Duplex({
    read() {
      socket.resume()
    },
    write(chunk: Buffer, _encoding, callback) {
      if (!first) return void socket.write(chunk, callback)
      first = false
      void (async () => {
        for (const byte of chunk) {
          await new Promise<void>((r) => socket.write(Buffer.of(byte), () => r()))
        }
        callback()
      })()
    },
    final(callback) {
      socket.end(callback)
    }
  })
  socket.on("data", (c: Buffer) => {
    if (!duplex.push(c)) socket.pause()
  })
  socket.on("end", () => duplex.push(null))
  socket.on("close", () => duplex.destroy())
  socket.on("error", (e) => duplex.destroy(e))
  return duplex
}

// ---------------------------------------------------------------------------------------------
// What every rejection must look like
// ---------------------------------------------------------------------------------------------

/** The counters and log of the listener, to compare before and after one attack. */
const snapshot = async () => ({
  handshakes: await handshakeCounts(proxy, "in", "server"),
  reasons: await failureReasons(proxy, "in", "server"),
  events: proxy.events().length,
  accepts: target.accepts()
})

/** A fresh authorized client is served: handshake, echo, clean close. */
const stillServes = async () => {
  const c = makeCleanup()
  try {
    const tls = await connectTls(c, { port, ...clientTls(pki.ca, pki.client) })
    const reader = makeReader(tls)
    tls.write("ping\n")
    await reader.until("ping\n")
    tls.end()
    await within("the echo to end", 5000, reader.ended)
  } finally {
    await c.run()
  }
}

/**
 * Runs `attack`, then checks: exactly one handshake counted with `result`, one failure with
 * `reason`, one `handshake_failed` event with that reason (and no other warning), the target
 * never dialled for it, and a good client served afterwards.
 */
const expectRejected = async (
  reason: Metrics.FailureReason,
  attack: () => Promise<void>,
  result: Metrics.HandshakeResult = reason === "timeout" ? "timeout" : "failed"
) => {
  const before = await snapshot()
  await attack()
  await proxy.counted(
    MetricName.handshakeFailuresTotal,
    { listener: "in", role: "server", reason },
    (before.reasons[reason] ?? 0) + 1
  )
  await proxy.counted(
    MetricName.handshakesTotal,
    { listener: "in", role: "server", result },
    before.handshakes[result] + 1
  )
  // Nothing else moved (a bad connection counted twice, or as two reasons, fails here).
  const after = await snapshot()
  assert.deepStrictEqual(after.handshakes, { ...before.handshakes, [result]: before.handshakes[result] + 1 })
  assert.deepStrictEqual(after.reasons, { ...before.reasons, [reason]: (before.reasons[reason] ?? 0) + 1 })
  // Logged once: one handshake_failed with the reason; no warning or error besides it.
  const logged = proxy.events().slice(before.events)
  const failures = logged.filter((e) => e.event === "handshake_failed")
  assert.strictEqual(failures.length, 1, JSON.stringify(logged))
  assert.strictEqual(failures[0]!.reason, reason)
  assert.deepStrictEqual(
    logged.filter((e) => e.level !== "info" && e.level !== "debug").map((e) => e.event),
    ["handshake_failed"]
  )
  // A peer that never completed a handshake never reaches the application.
  assert.strictEqual(after.accepts, before.accepts, "the target was dialled for a rejected peer")
  await stillServes()
}

/** `openssl s_client` with the authorized client's certificate and `extra` options; resolves with its output once it exits. */
const sClient = async (extra: ReadonlyArray<string>, stdin = "") => {
  const c = makeCleanup()
  try {
    const p = spawnOpenssl(c, [
      "s_client",
      "-connect",
      `127.0.0.1:${port}`,
      "-CAfile",
      pki.ca.certFile,
      "-cert",
      pki.client.certFile,
      "-key",
      pki.client.keyFile,
      "-servername",
      "localhost",
      ...extra
    ])
    p.child.stdin!.end(stdin)
    const code = await within("openssl s_client to exit", 15_000, p.exited)
    return { code, out: p.stdout() + p.stderr() }
  } finally {
    await c.run()
  }
}

// ---------------------------------------------------------------------------------------------

let held: Tls.TLSSocket
let heldReader: ReturnType<typeof makeReader>

beforeAll(async () => {
  pki = await makeDataPki()
  cleanup = makeCleanup()
  target = await startTarget(cleanup)
  const file = writeConfig(pki.path("hostile.json"), {
    tls: { In: terminateTls(pki) },
    listeners: [
      {
        name: "in",
        mode: "terminate",
        listen: "127.0.0.1:0",
        target: `127.0.0.1:${target.port}`,
        tls: "In",
        handshakeTimeout: "2s"
      }
    ]
  })
  proxy = await startProxy(cleanup, file)
  port = proxy.port("in")
  clientHello = await captureClientHello()
  // A connection opened before any attack, that must still work after all of them.
  held = await connectTls(cleanup, { port, ...clientTls(pki.ca, pki.client) })
  const reader = makeReader(held)
  held.write("before\n")
  await reader.until("before\n")
  heldReader = reader
}, 30_000)

afterAll(async () => {
  await cleanup?.run()
  await pki?.pki.cleanup()
})

describe("hostile handshakes at a terminate listener", { timeout: 30_000 }, () => {
  it("the captured ClientHello is one complete TLS handshake record", () => {
    assert.strictEqual(clientHello[0], 0x16)
    assert.strictEqual(clientHello[5], 0x01) // ClientHello
    assert.strictEqual(clientHello.length, 5 + clientHello.readUInt16BE(3))
  })

  it("garbage instead of a ClientHello: closed, protocol_version", async () => {
    let view: RawView | undefined
    await expectRejected("protocol_version", async () => {
      view = await raw((s) => s.write(Buffer.from("\x01\x02garbage garbage garbage\r\n\x00\xff", "latin1")))
    })
    assert.isTrue(onlyAlerts(view!.received), view!.received.toString("hex"))
  })

  it("an HTTP request on the TLS port: closed without an HTTP answer, protocol_version", async () => {
    let view: RawView | undefined
    await expectRejected("protocol_version", async () => {
      view = await raw((s) => s.write("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"))
    })
    assert.isTrue(onlyAlerts(view!.received), view!.received.toString("latin1"))
  })

  it("a truncated ClientHello, then silence: cut at the handshake timeout", async () => {
    let view: RawView | undefined
    const started = performance.now()
    await expectRejected("timeout", async () => {
      view = await raw((s) => s.write(clientHello.subarray(0, Math.floor(clientHello.length / 2))))
    })
    const ms = performance.now() - started
    assert.isAtLeast(ms, 1800)
    assert.strictEqual(view!.received.length, 0)
  })

  it("a truncated ClientHello, then FIN: closed at once, other", async () => {
    let view: RawView | undefined
    await expectRejected("other", async () => {
      view = await raw((s) => s.end(clientHello.subarray(0, 40)))
    })
    assert.isTrue(onlyAlerts(view!.received), view!.received.toString("hex"))
  })

  it("a ClientHello declaring a 16 MB body: refused at once (no buffering), other", async () => {
    // Record header, then a handshake header claiming 0xFFFFFF bytes of ClientHello, then the
    // start of that body; OpenSSL refuses by the declared length, not after reading it.
    const body = Buffer.alloc(16_000, 0x41)
    const header = Buffer.from([0x16, 0x03, 0x01, 0x00, 0x00, 0x01, 0xff, 0xff, 0xff])
    header.writeUInt16BE(4 + body.length, 3)
    let view: RawView | undefined
    const started = performance.now()
    await expectRejected("other", async () => {
      view = await raw((s) => s.write(Buffer.concat([header, body])))
    })
    assert.isBelow(performance.now() - started, 1800, "closed before the handshake timeout")
    assert.isTrue(onlyAlerts(view!.received), view!.received.toString("hex"))
  })

  it("a ClientHello split into 1-byte writes is a legitimate client: served", async () => {
    const before = await handshakeCounts(proxy, "in", "server")
    const socket = Net.connect({ host: "127.0.0.1", port })
    socket.setNoDelay(true)
    await new Promise<void>((r) => socket.once("connect", () => r()))
    const tls = Tls.connect({ socket: dribbleFirstWrite(socket), ...clientTls(pki.ca, pki.client) })
    cleanup.defer(() => tls.destroy())
    const reader = makeReader(tls)
    await within("the dribbled handshake", 20_000, new Promise((r) => tls.once("secureConnect", r)))
    tls.write("dribbled\n")
    await reader.until("dribbled\n")
    tls.end()
    await proxy.counted(MetricName.handshakesTotal, { listener: "in", role: "server", result: "ok" }, before.ok + 1)
    assert.deepStrictEqual(await handshakeCounts(proxy, "in", "server"), { ...before, ok: before.ok + 1 })
  })

  for (const version of ["-tls1", "-tls1_1"]) {
    it(`openssl s_client ${version} (TLS 1.0/1.1 only): refused, protocol_version`, async () => {
      let r: { code: number | string; out: string } | undefined
      await expectRejected("protocol_version", async () => {
        r = await sClient([version, "-cipher", "DEFAULT@SECLEVEL=0"])
      })
      assert.notStrictEqual(r!.code, 0)
      assert.match(r!.out, /alert protocol version|unsupported protocol|no protocols available/i)
    })
  }

  for (const [what, ciphers] of [
    ["NULL", "ECDHE-ECDSA-NULL-SHA:AECDH-NULL-SHA:NULL-SHA256:NULL-SHA:@SECLEVEL=0"],
    ["CBC", "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:AES128-SHA:AES256-SHA256"]
  ] as const) {
    it(`openssl s_client offering only ${what} ciphers (TLS 1.2): refused, no_shared_cipher`, async () => {
      let r: { code: number | string; out: string } | undefined
      await expectRejected("no_shared_cipher", async () => {
        r = await sClient(["-tls1_2", "-cipher", ciphers])
      })
      assert.notStrictEqual(r!.code, 0)
      assert.match(r!.out, /alert handshake failure|no cipher match/i)
      assert.notMatch(r!.out, /no cipher match/i, "this openssl cannot offer those ciphers: the test proves nothing")
    })
  }

  it("client-initiated renegotiation (s_client R, TLS 1.2): refused; one handshake; still serving", async () => {
    const before = await snapshot()
    const c = makeCleanup()
    let out = ""
    try {
      const client = spawnOpenssl(c, [
        "s_client",
        "-connect",
        `127.0.0.1:${port}`,
        "-CAfile",
        pki.ca.certFile,
        "-cert",
        pki.client.certFile,
        "-key",
        pki.client.keyFile,
        "-servername",
        "localhost",
        "-tls1_2"
      ])
      await client.until("Verify return code: 0 (ok)", 10_000)
      // Data first, echoed through the target; then `R` alone on a line asks s_client to
      // renegotiate.
      client.child.stdin!.write("one\n")
      await client.until("\none\n", 10_000)
      client.child.stdin!.write("R\n")
      await client.until("RENEGOTIATING", 10_000, "stderr")
      // The server refuses (SSL_OP_NO_RENEGOTIATION: a no_renegotiation alert), on which
      // OpenSSL's client gives up the connection.
      const exited = await within("s_client to give up", 10_000, client.exited)
      out = client.stdout() + client.stderr()
      assert.notStrictEqual(exited, 0, out)
      assert.match(out, /no renegotiation/i)
    } finally {
      await c.run()
    }
    await proxy.counted(
      MetricName.handshakesTotal,
      { listener: "in", role: "server", result: "ok" },
      before.handshakes.ok + 1
    )
    await sleep(200)
    const after = await snapshot()
    // One handshake, no second one, and no handshake failure for the refused renegotiation.
    assert.deepStrictEqual(after.handshakes, { ...before.handshakes, ok: before.handshakes.ok + 1 })
    assert.deepStrictEqual(after.reasons, before.reasons)
    await stillServes()
  })

  it("the connection opened before every attack still works", async () => {
    held.write("after\n")
    await heldReader.until("after\n")
  })

  it("a batch of every attack leaves no file descriptor behind", async () => {
    const fds = () => readdirSync("/proc/self/fd").length
    const idle = async () =>
      eventually(
        "no connection open but the held one",
        async () => (await proxy.value(MetricName.connectionsActive, { listener: "in" })) === 1,
        10_000
      )
    await idle()
    const baseline = fds()
    for (let round = 0; round < 10; round++) {
      await Promise.all([
        raw((s) => s.write("\x01\x02garbage\r\n")),
        raw((s) => s.write("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")),
        raw((s) => s.end(clientHello.subarray(0, 40))),
        raw((s) => s.write(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0xff, 0xff, 0xff]))),
        stillServes()
      ])
    }
    await idle()
    await eventually(
      "file descriptors back to the baseline",
      () => fds() <= baseline,
      10_000,
      () => `${fds()} > ${baseline}`
    )
    await stillServes()
  })
})
