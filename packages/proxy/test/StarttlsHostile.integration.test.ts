/**
 * Hostile STARTTLS clients not covered elsewhere (issue 12), through server-side `starttls`
 * listeners configured as the sidecar runs them (one YAML file, `ProxyRuntime`, real sockets on
 * loopback, `requireTls` at its default), each in front of a plaintext app from `LegacyApps`:
 *
 * - **a second STARTTLS before the upgrade completes**: pipelined right behind the first (SMTP,
 *   IMAP, POP3), it lies past the upgrade point: it is discarded and counted, the TLS session
 *   works, and the app never sees a STARTTLS; sent in plaintext after the go-ahead instead of a
 *   ClientHello, the upgrade fails and nothing falls back to plaintext;
 * - **binary junk before STARTTLS** (a TLS record header followed by bytes of every value,
 *   CR and LF among them) in SMTP, IMAP, POP3, LDAP, PostgreSQL and a line trigger: refused with
 *   the protocol's own error (SMTP 530, IMAP `* BAD`, POP3 `-ERR`, LDAP Notice of Disconnection,
 *   PostgreSQL ErrorResponse 08P01) or closed, never reflected back, counted with its reason,
 *   logged once, and never relayed to the app.
 *
 * After every attack a fresh client is served on the same listener.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import * as Metrics from "@sleeve/metrics/Metrics"
import * as TestPki from "@sleeve/testing/TestPki"
import type * as Net from "node:net"
import {
  imapSession,
  ldapSession,
  lineSession,
  listen,
  pgReady,
  pgSession,
  pop3Session,
  type Served,
  smtpSession
} from "./support/LegacyApps.ts"
import * as ProxyUnderTest from "./support/ProxyUnderTest.ts"
import {
  closed,
  connect,
  ldapBind,
  ldapUnbind,
  makeReader,
  pgSslRequest,
  pgStartup,
  pgTerminate,
  type Reader,
  secureClient
} from "./support/StarttlsHarness.ts"

let pki: TestPki.TestPki
let ca: TestPki.Identity
let proxy: ProxyUnderTest.ProxyUnderTest | undefined
const apps: Record<string, Served> = {}

const sessions = {
  smtp: smtpSession,
  imap: imapSession,
  pop3: pop3Session,
  ldap: ldapSession,
  postgres: pgSession,
  line: lineSession
} as const
type Protocol = keyof typeof sessions
/** Two listeners per protocol: one for the second-STARTTLS cases, one for junk. */
const listenerName = (p: Protocol, kind: "twice" | "junk") => `${p}-${kind}`

beforeAll(async () => {
  pki = await TestPki.make()
  ca = await pki.ca({ name: "ca", subject: [{ CN: "Sleeve STARTTLS Hostile CA" }] })
  const front = await pki.leaf(ca, { name: "front", subject: [{ CN: "localhost" }] })
  const entries: Array<string> = []
  for (const [p, session] of Object.entries(sessions) as Array<[Protocol, (typeof sessions)[Protocol]]>) {
    for (const kind of ["twice", "junk"] as const) {
      const name = listenerName(p, kind)
      apps[name] = await listen((socket, received) => session(socket, received))
      entries.push(
        `  - name: ${name}\n    mode: starttls\n    protocol: ${p}\n    listen: "127.0.0.1:0"\n` +
          `    target: "127.0.0.1:${apps[name]!.port}"\n    tls: Front\n    negotiationTimeout: 3s\n` +
          (p === "line" ? "    line: { command: STARTTLS, reply: OK STARTTLS }\n" : "")
      )
    }
  }
  const yaml = [
    "tls:",
    "  Front:",
    "    type: server",
    `    certificateFile: ${front.certFile}`,
    `    privateKeyFile: ${front.keyFile}`,
    "listeners:",
    ...entries,
    "drainTimeout: 1s",
    ""
  ].join("\n")
  proxy = await ProxyUnderTest.start(await pki.write("sleeve.yaml", yaml))
}, 30_000)

afterAll(async () => {
  await proxy?.running.drain(0)
  for (const app of Object.values(apps)) await app.close()
  await pki?.cleanup()
})

const port = (listener: string): number => proxy!.port(listener)
const upgrades = (listener: string, result: Metrics.StarttlsResult) =>
  proxy!.value(Metrics.MetricName.starttlsUpgradesTotal, { listener, result })
const eventsOf = (listener: string, event: string) =>
  proxy!.events().filter((e) => e.event === event && e.listener === listener)

/** A raw connection with everything it receives, and when it closed. */
interface Raw {
  readonly socket: Net.Socket
  readonly reader: Reader
  readonly closed: Promise<void>
}
const open = async (listener: string): Promise<Raw> => {
  const socket = await connect(port(listener))
  socket.on("error", () => {})
  return { socket, reader: makeReader(socket), closed: closed(socket) }
}

/**
 * Binary junk: a TLS record header (a client that thinks the port is TLS from the first byte),
 * then every byte value once, NUL, CR and LF among them, then CRLF.
 */
const junk = Buffer.concat([
  Buffer.from("160301020001", "hex"),
  Buffer.from(Array.from({ length: 256 }, (_, i) => (i * 167 + 13) & 0xff)),
  Buffer.from("\r\n")
])
/** How many lines a line-based reader finds in the junk (its LFs). */
const junkLines = junk.filter((b) => b === 0x0a).length

/** Only printable ASCII, CR and LF: nothing of the junk was reflected. */
const isCleanText = (b: Buffer) => b.every((c) => c === 0x0d || c === 0x0a || (c >= 0x20 && c < 0x7f))

// ---------------------------------------------------------------------------------------------
// A good session after each attack, per protocol
// ---------------------------------------------------------------------------------------------

/** A complete legitimate session over TLS on `listener`; resolves with what the app recorded for it. */
const goodSession: Record<Protocol, (listener: string) => Promise<void>> = {
  smtp: async (l) => {
    const r = await open(l)
    await r.reader.until(/^220 .*\r\n$/)
    r.socket.write("EHLO good.test\r\n")
    await r.reader.until(/^250 .*\r\n/m)
    r.socket.write("STARTTLS\r\n")
    await r.reader.until(/^220 .*\r\n$/)
    r.reader.detach()
    const s = await secureClient(ca.certPem)(r.socket)
    const rs = makeReader(s)
    s.write("EHLO good.test\r\nQUIT\r\n")
    await rs.until(/^221 .*\r\n/m)
    await closed(s)
  },
  imap: async (l) => {
    const r = await open(l)
    await r.reader.until(/^\* OK .*\r\n$/)
    r.socket.write("g1 STARTTLS\r\n")
    await r.reader.until(/^g1 OK .*\r\n$/)
    r.reader.detach()
    const s = await secureClient(ca.certPem)(r.socket)
    const rs = makeReader(s)
    s.write("g2 LOGOUT\r\n")
    await rs.until(/^g2 OK .*\r\n/m)
    await closed(s)
  },
  pop3: async (l) => {
    const r = await open(l)
    await r.reader.until(/^\+OK .*\r\n$/)
    r.socket.write("STLS\r\n")
    await r.reader.until(/^\+OK .*\r\n$/)
    r.reader.detach()
    const s = await secureClient(ca.certPem)(r.socket)
    const rs = makeReader(s)
    s.write("QUIT\r\n")
    await rs.until(/^\+OK .*\r\n/m)
    await closed(s)
  },
  ldap: async (l) => {
    const r = await open(l)
    r.socket.write(ldapStartTls(1))
    await r.reader.until((b) => b.length >= 2 && b.length >= 2 + b[1]!)
    r.reader.detach()
    const s = await secureClient(ca.certPem)(r.socket)
    const rs = makeReader(s)
    s.write(ldapBind(2))
    await rs.until((b) => b.length > 0)
    s.write(ldapUnbind(3))
    await closed(s)
  },
  postgres: async (l) => {
    const r = await open(l)
    r.socket.write(pgSslRequest)
    assert.strictEqual((await r.reader.until((b) => b.length >= 1)).toString(), "S")
    r.reader.detach()
    const s = await secureClient(ca.certPem)(r.socket)
    const rs = makeReader(s)
    s.write(pgStartup("good"))
    assert.deepStrictEqual(await rs.until((b) => b.length >= pgReady.length), pgReady)
    s.write(pgTerminate)
    await closed(s)
  },
  line: async (l) => {
    const r = await open(l)
    r.socket.write("STARTTLS\r\n")
    await r.reader.until(/^OK STARTTLS\r\n$/)
    r.reader.detach()
    const s = await secureClient(ca.certPem)(r.socket)
    const rs = makeReader(s)
    s.write("hello\r\n")
    assert.strictEqual((await rs.until(/\r\n$/)).toString(), "echo: hello\r\n")
    s.write("QUIT\r\n")
    await closed(s)
  }
}

/** The LDAP StartTLS ExtendedRequest with a one-byte messageID. */
const ldapStartTls = (id: number): Buffer => {
  const oid = Buffer.from("1.3.6.1.4.1.1466.20037")
  const ext = Buffer.concat([Buffer.from([0x80, oid.length]), oid])
  const op = Buffer.concat([Buffer.from([0x77, ext.length]), ext])
  const body = Buffer.concat([Buffer.from([0x02, 0x01, id]), op])
  return Buffer.concat([Buffer.from([0x30, body.length]), body])
}

// ---------------------------------------------------------------------------------------------
// A second STARTTLS before the upgrade completes
// ---------------------------------------------------------------------------------------------

/** Per protocol: the greeting to wait for, the command, the go-ahead, and a check once upgraded. */
const twice = {
  smtp: {
    greeting: /^220 .*\r\n$/,
    before: "EHLO twice.test\r\n",
    beforeReply: /^250 .*\r\n/m,
    command: "STARTTLS\r\n",
    second: "STARTTLS\r\n",
    goAhead: "220 2.0.0 Ready to start TLS\r\n",
    after: "EHLO twice.test\r\nQUIT\r\n",
    afterReply: /^221 .*\r\n/m
  },
  imap: {
    greeting: /^\* OK .*\r\n$/,
    before: undefined,
    beforeReply: undefined,
    command: "a1 STARTTLS\r\n",
    second: "a2 STARTTLS\r\n",
    goAhead: "a1 OK Begin TLS negotiation now\r\n",
    after: "a3 CAPABILITY\r\na4 LOGOUT\r\n",
    afterReply: /^a4 OK .*\r\n/m
  },
  pop3: {
    greeting: /^\+OK .*\r\n$/,
    before: undefined,
    beforeReply: undefined,
    command: "STLS\r\n",
    second: "STLS\r\n",
    goAhead: "+OK Begin TLS negotiation\r\n",
    after: "STAT\r\nQUIT\r\n",
    afterReply: /^\+OK legacy POP3 bye\r\n/m
  }
} as const

describe("a second STARTTLS before the upgrade completes", { timeout: 20_000 }, () => {
  for (const p of ["smtp", "imap", "pop3"] as const) {
    const t = twice[p]
    it(`${p}: pipelined right after the first, it is discarded and counted; TLS works; the app never sees it`, async () => {
      const l = listenerName(p, "twice")
      const app = apps[l]!
      const from = app.received.length
      const discardedBefore = await proxy!.value(Metrics.MetricName.starttlsDiscardedBytesTotal, { listener: l })
      const okBefore = await upgrades(l, "ok")
      const r = await open(l)
      await r.reader.until(t.greeting)
      if (t.before !== undefined) {
        r.socket.write(t.before)
        await r.reader.until(t.beforeReply!)
      }
      r.socket.write(t.command + t.second)
      assert.strictEqual((await r.reader.until(/\r\n$/)).toString(), t.goAhead)
      assert.strictEqual(r.reader.detach().length, 0, "nothing after the go-ahead in plaintext")
      const s = await secureClient(ca.certPem)(r.socket)
      const rs = makeReader(s)
      s.write(t.after)
      const reply = (await rs.until(t.afterReply, 5000)).toString()
      // Had the second STARTTLS been relayed or answered, a reply to it would come first.
      assert.notMatch(reply, /STARTTLS|STLS|Begin TLS|Ready to start/i)
      await closed(s)
      await app.closed(1)
      const seen = app.received.slice(from)
      assert.isFalse(
        seen.some((x) => /STARTTLS|STLS/i.test(x)),
        `the app saw ${JSON.stringify(seen)}`
      )
      await proxy!.counted(
        Metrics.MetricName.starttlsDiscardedBytesTotal,
        { listener: l },
        discardedBefore + t.second.length
      )
      assert.strictEqual(await upgrades(l, "ok"), okBefore + 1)
      const discardedLogs = eventsOf(l, "starttls_discarded")
      assert.strictEqual(discardedLogs.at(-1)?.bytes, t.second.length)
    })

    it(`${p}: sent again in plaintext after the go-ahead instead of a ClientHello, the upgrade fails; no plaintext answer`, async () => {
      const l = listenerName(p, "twice")
      const app = apps[l]!
      const from = app.received.length
      const failedBefore = await upgrades(l, "failed")
      const eventsBefore = proxy!.events().length
      const r = await open(l)
      await r.reader.until(t.greeting)
      r.socket.write(t.command)
      await r.reader.until(/\r\n$/)
      r.socket.write(t.second)
      await r.closed
      const after = r.reader.detach()
      // Whatever came after the go-ahead is TLS (an alert record), never a plaintext reply.
      assert.isTrue(after.length === 0 || after[0] === 0x15, `got ${JSON.stringify(after.toString("latin1"))}`)
      await proxy!.counted(
        Metrics.MetricName.starttlsUpgradesTotal,
        { listener: l, result: "failed" },
        failedBefore + 1
      )
      const mine = proxy!
        .events()
        .slice(eventsBefore)
        .filter((e) => e.listener === l)
      const conn = mine.find((e) => e.event === "accepted")?.conn
      assert.isDefined(conn)
      assert.strictEqual(mine.filter((e) => e.event === "closed" && e.conn === conn).length, 1)
      assert.isAtMost(mine.filter((e) => e.level === "warn" && e.conn === conn).length, 1, "logged once")
      assert.isFalse(
        app.received.slice(from).some((x) => /STARTTLS|STLS/i.test(x)),
        JSON.stringify(app.received.slice(from))
      )
      await goodSession[p](l)
    })
  }
})

// ---------------------------------------------------------------------------------------------
// Binary junk before STARTTLS
// ---------------------------------------------------------------------------------------------

/** What each protocol answers to junk, and whether it then closes the connection. */
const junkAnswer: Record<
  Protocol,
  {
    readonly greeting?: RegExp
    readonly answer: (got: Buffer) => void
    readonly closes: boolean
    readonly reason: string
  }
> = {
  smtp: {
    greeting: /^220 .*\r\n$/,
    answer: (got) =>
      assert.strictEqual(got.toString("latin1"), "530 5.7.0 Must issue a STARTTLS command first\r\n".repeat(junkLines)),
    closes: false,
    reason: "starttls_required"
  },
  imap: {
    greeting: /^\* OK .*\r\n$/,
    // The junk has no valid tag: the answer is untagged, so none of its bytes are sent back.
    answer: (got) => assert.strictEqual(got.toString("latin1"), "* BAD Invalid command\r\n".repeat(junkLines)),
    closes: false,
    reason: "starttls_required"
  },
  pop3: {
    greeting: /^\+OK .*\r\n$/,
    answer: (got) =>
      assert.strictEqual(got.toString("latin1"), "-ERR Must issue a STLS command first\r\n".repeat(junkLines)),
    closes: false,
    reason: "starttls_required"
  },
  ldap: {
    // A Notice of Disconnection (messageID 0, ExtendedResponse, resultCode protocolError).
    answer: (got) => {
      assert.strictEqual(got[0], 0x30)
      assert.include(got.toString("latin1"), "1.3.6.1.4.1.1466.20036")
      assert.include(got.toString("latin1"), "Protocol error before TLS")
      assert.strictEqual(got.subarray(2, 5).toString("hex"), "020100")
    },
    closes: true,
    reason: "protocol_error"
  },
  postgres: {
    answer: (got) => {
      assert.strictEqual(String.fromCharCode(got[0]!), "E")
      assert.include(got.toString("latin1"), "C08P01\0")
    },
    closes: true,
    reason: "protocol_error"
  },
  line: {
    answer: (got) => assert.strictEqual(got.length, 0),
    closes: true,
    reason: "starttls_required"
  }
}

describe("binary junk before STARTTLS", { timeout: 20_000 }, () => {
  for (const p of Object.keys(sessions) as Array<Protocol>) {
    const a = junkAnswer[p]
    it(`${p}: refused with the protocol's error${a.closes ? " and closed" : ""}, counted (${a.reason}), logged once, never relayed; the next client is served`, async () => {
      const l = listenerName(p, "junk")
      const app = apps[l]!
      const from = app.received.length
      const eventsBefore = proxy!.events().length
      const refusedBefore = await upgrades(l, "refused")
      const r = await open(l)
      if (a.greeting !== undefined) await r.reader.until(a.greeting)
      r.socket.write(junk)
      let got: Buffer
      if (a.closes) {
        await r.closed
        got = r.reader.detach()
      } else {
        // Line protocols answer each junk line and keep the connection for a real command; the
        // client leaves then (the 530/BAD/-ERR refusal is what is counted).
        got = await r.reader.until((b) => b.toString("latin1").split("\r\n").length > junkLines, 5000)
        r.socket.end()
        await r.closed
      }
      a.answer(got)
      if (p !== "ldap" && p !== "postgres") assert.isTrue(isCleanText(got), JSON.stringify(got.toString("latin1")))

      await proxy!.counted(
        Metrics.MetricName.starttlsUpgradesTotal,
        { listener: l, result: "refused" },
        refusedBefore + 1
      )
      await proxy!.counted(Metrics.MetricName.connectionsRefusedTotal, { listener: l, reason: a.reason }, 1)
      assert.strictEqual(await proxy!.value(Metrics.MetricName.connectionsRefusedTotal, { listener: l }), 1)
      const mine = proxy!
        .events()
        .slice(eventsBefore)
        .filter((e) => e.listener === l)
      const failed = mine.filter((e) => e.event === "starttls_failed")
      assert.strictEqual(failed.length, 1, JSON.stringify(mine))
      assert.strictEqual(failed[0]!.reason, a.closes ? a.reason : "closed")
      assert.strictEqual(mine.filter((e) => e.event === "closed").length, 1)
      // Never relayed: the app saw nothing of this connection (not even a line of it).
      assert.deepStrictEqual(app.received.slice(from), [])

      // The listener keeps serving.
      await goodSession[p](l)
    })
  }
})
