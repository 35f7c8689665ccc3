import { afterAll, afterEach, assert, beforeAll, describe, it } from "@effect/vitest"
import { listen as listenOn } from "@sleeve/testing/Net"
import { sleep } from "@sleeve/testing/Wait"
import * as net from "node:net"
import * as Starttls from "../src/Starttls.ts"
import * as StarttlsSession from "../src/StarttlsSession.ts"
import {
  imapSession,
  ldapResponse,
  ldapSession,
  lineSession,
  listen,
  pgReady,
  pgSession,
  pop3Session,
  type Served,
  smtpSession
} from "./support/LegacyApps.ts"
import {
  closed,
  connect,
  ldapBind,
  ldapUnbind,
  makeReader,
  type Outcome,
  pgSslRequest,
  pgStartup,
  pgTerminate,
  type Sleeve,
  sClient,
  sClientArgs,
  secureClient,
  serverUpgrade,
  startSleeve
} from "./support/StarttlsHarness.ts"
import { makePki, type Pki } from "./support/StarttlsPki.ts"
import { startRemote } from "./support/StarttlsRemotes.ts"

let pki: Pki
const cleanups: Array<() => Promise<void>> = []

beforeAll(async () => {
  pki = await makePki()
})
afterAll(() => pki.cleanup())
afterEach(async () => {
  await Promise.all(cleanups.splice(0).map((c) => c()))
})

const app = async (session: (s: net.Socket, r: Array<string>) => void): Promise<Served> => {
  const served = await listen(session)
  cleanups.push(served.close)
  return served
}

const sleeve = async (
  side: Starttls.Side,
  target: number,
  negotiator: Omit<Starttls.NegotiatorOptions, "side">
): Promise<Sleeve> => {
  const s = await startSleeve({ side, target, pki, negotiator })
  cleanups.push(s.close)
  return s
}

const outcome = async (s: Sleeve, index = 0): Promise<Outcome> => {
  for (let i = 0; i < 50 && s.sessions[index] === undefined; i++) await sleep(10)
  const session = s.sessions[index]
  assert.isDefined(session, "no session was accepted")
  return session!
}

const failure = async (s: Sleeve) => {
  const o = await outcome(s)
  if (o.ok) return assert.fail("expected the negotiation to fail")
  return o.error
}

describe("server side (Sleeve in front of a plaintext server)", () => {
  it("SMTP: openssl s_client -starttls smtp verifies the certificate and talks to the app over TLS", async () => {
    const a = await app((s, r) => smtpSession(s, r))
    const s = await sleeve("server", a.port, { protocol: "smtp" })
    const result = await sClient(sClientArgs(pki.caFile, "smtp", s.port, ["-crlf"]), "EHLO after.tls\nQUIT\n")
    const stdout = result.stdout.toString("latin1")
    assert.include(stdout, "Verify return code: 0 (ok)")
    assert.include(stdout, "250-app.test")
    assert.include(stdout, "221 2.0.0 Bye")
    assert.notInclude(result.stderr + stdout, "Didn't find STARTTLS")
    assert.deepStrictEqual(a.received.slice(1), ["EHLO after.tls", "QUIT"])
    assert.match(a.received[0] ?? "", /^EHLO /)
    assert.isFalse(
      a.received.some((l) => /STARTTLS/i.test(l)),
      "the app must never see STARTTLS"
    )
    assert.isTrue((await outcome(s)).ok)
  })

  it("SMTP: commands pipelined after STARTTLS never reach the app; STARTTLS is stripped from post-TLS EHLO", async () => {
    const a = await app((sock, r) => smtpSession(sock, r, { advertiseStarttls: true }))
    const s = await sleeve("server", a.port, { protocol: "smtp" })
    const raw = await connect(s.port)
    const plain = makeReader(raw)
    await plain.until(/^220 .*\r\n$/)
    raw.write("EHLO client.test\r\n")
    const ehlo = (await plain.until(/^250 .*\r\n/m)).toString("latin1")
    assert.strictEqual(ehlo.match(/STARTTLS/g)?.length, 1, "exactly one STARTTLS before TLS")
    raw.write("STARTTLS\r\nRSET\r\n")
    assert.strictEqual((await plain.until(/\r\n$/)).toString("latin1"), "220 2.0.0 Ready to start TLS\r\n")
    assert.strictEqual(plain.detach().length, 0)
    const secure = await secureClient(pki.caPem)(raw)
    const reader = makeReader(secure)
    secure.write("EHLO client.test\r\n")
    const again = (await reader.until(/^250 .*\r\n/m)).toString("latin1")
    assert.strictEqual(again, "250-app.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
    secure.write("QUIT\r\n")
    await reader.until(/^221 /m)
    await a.closed()
    assert.deepStrictEqual(a.received, ["EHLO client.test", "EHLO client.test", "QUIT"])
    const o = await outcome(s)
    assert.isTrue(o.ok && o.discarded === "RSET\r\n".length)
    secure.destroy()
  })

  it("SMTP: requireTls answers MAIL FROM before STARTTLS with 530 and never relays it", async () => {
    const a = await app((sock, r) => smtpSession(sock, r))
    const s = await sleeve("server", a.port, { protocol: "smtp" })
    const raw = await connect(s.port)
    const plain = makeReader(raw)
    await plain.until(/^220 /)
    raw.write("MAIL FROM:<alice@example.com>\r\n")
    assert.strictEqual((await plain.until(/\r\n$/)).toString(), "530 5.7.0 Must issue a STARTTLS command first\r\n")
    raw.write("QUIT\r\n")
    assert.match((await plain.until(/\r\n$/)).toString(), /^221 /)
    await closed(raw)
    assert.deepStrictEqual(a.received, ["QUIT"])
    const error = await failure(s)
    assert.strictEqual(error.reason, "closed")
  })

  it("SMTP: a failed handshake closes both legs and never falls back to plaintext", async () => {
    const a = await app((sock, r) => smtpSession(sock, r))
    const s = await sleeve("server", a.port, { protocol: "smtp" })
    const raw = await connect(s.port)
    const plain = makeReader(raw)
    await plain.until(/^220 /)
    raw.write("STARTTLS\r\n")
    await plain.until(/^220 2\.0\.0/)
    raw.write("NOOP this is not a TLS ClientHello\r\n")
    const error = await failure(s)
    assert.strictEqual(error.reason, "handshake_failed")
    await closed(raw)
    await a.closed()
    assert.deepStrictEqual(a.received, [])
  })

  it("SMTP: more cleartext than maxCleartextBytes is answered 421 and closed", async () => {
    const a = await app((sock, r) => smtpSession(sock, r))
    const s = await sleeve("server", a.port, { protocol: "smtp", maxCleartextBytes: 1024 })
    const raw = await connect(s.port)
    const plain = makeReader(raw)
    await plain.until(/^220 /)
    raw.write(`EHLO ${"x".repeat(2000)}`)
    assert.match((await plain.until(/\r\n$/)).toString(), /^421 4\.7\.0 Too much cleartext/)
    await closed(raw)
    assert.strictEqual((await failure(s)).reason, "cleartext_limit")
    assert.deepStrictEqual(a.received, [])
  })

  it("IMAP: openssl s_client -starttls imap, then commands reach the app over TLS", async () => {
    const a = await app((sock, r) => imapSession(sock, r))
    const s = await sleeve("server", a.port, { protocol: "imap" })
    const result = await sClient(
      sClientArgs(pki.caFile, "imap", s.port, ["-crlf"]),
      "a1 NOOP\na2 LOGIN bob secret\na3 LOGOUT\n"
    )
    const stdout = result.stdout.toString("latin1")
    assert.include(stdout, "Verify return code: 0 (ok)")
    assert.include(stdout, "a1 OK NOOP completed")
    assert.include(stdout, "a2 OK LOGIN completed")
    assert.include(stdout, "a3 OK LOGOUT completed")
    assert.notInclude(result.stderr + stdout, "Didn't find STARTTLS")
    assert.deepStrictEqual(a.received.slice(-3), ["a1 NOOP", "a2 LOGIN bob secret", "a3 LOGOUT"])
    assert.isFalse(a.received.some((l) => /STARTTLS/i.test(l)))
  })

  it("IMAP: LOGIN before STARTTLS gets NO [PRIVACYREQUIRED] and never reaches the app", async () => {
    const a = await app((sock, r) => imapSession(sock, r))
    const s = await sleeve("server", a.port, { protocol: "imap" })
    const raw = await connect(s.port)
    const plain = makeReader(raw)
    const greeting = (await plain.until(/\r\n$/)).toString()
    assert.strictEqual(greeting, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN STARTTLS LOGINDISABLED] legacy IMAP ready\r\n")
    raw.write("a1 LOGIN bob secret\r\n")
    assert.strictEqual(
      (await plain.until(/\r\n$/)).toString(),
      "a1 NO [PRIVACYREQUIRED] LOGIN is not permitted before STARTTLS\r\n"
    )
    raw.destroy()
    assert.deepStrictEqual(a.received, [])
  })

  it("POP3: openssl s_client -starttls pop3, then commands reach the app over TLS", async () => {
    const a = await app((sock, r) => pop3Session(sock, r))
    const s = await sleeve("server", a.port, { protocol: "pop3" })
    const result = await sClient(sClientArgs(pki.caFile, "pop3", s.port, ["-crlf"]), "STAT\nQUIT\n")
    const stdout = result.stdout.toString("latin1")
    assert.include(stdout, "Verify return code: 0 (ok)")
    assert.include(stdout, "+OK 0 0")
    assert.include(stdout, "+OK legacy POP3 bye")
    assert.deepStrictEqual(a.received, ["STAT", "QUIT"])
  })

  it("LDAP: openssl s_client -starttls ldap, then a bind reaches the app over TLS", async () => {
    const a = await app((sock, r) => ldapSession(sock, r))
    const s = await sleeve("server", a.port, { protocol: "ldap" })
    const result = await sClient(sClientArgs(pki.caFile, "ldap", s.port), Buffer.concat([ldapBind(2), ldapUnbind(3)]))
    assert.include(result.stdout.toString("latin1"), "Verify return code: 0 (ok)")
    assert.isTrue(result.stdout.includes(ldapResponse(2, 0x61, 0)), "the app's BindResponse came back")
    assert.deepStrictEqual(a.received, ["bind #2", "unbind #3"])
  })

  it("PostgreSQL: openssl s_client -starttls postgres, then the StartupMessage reaches the app over TLS", async () => {
    const a = await app((sock, r) => pgSession(sock, r))
    const s = await sleeve("server", a.port, { protocol: "postgres" })
    const result = await sClient(
      sClientArgs(pki.caFile, "postgres", s.port),
      Buffer.concat([pgStartup("bob"), pgTerminate])
    )
    assert.include(result.stdout.toString("latin1"), "Verify return code: 0 (ok)")
    assert.isTrue(result.stdout.includes(pgReady), "the app's AuthenticationOk/ReadyForQuery came back")
    assert.deepStrictEqual(a.received, ["startup 3.0 user bob database db", "message X"])
  })

  it("PostgreSQL: a StartupMessage without SSLRequest gets FATAL 28000 and is closed", async () => {
    const a = await app((sock, r) => pgSession(sock, r))
    const s = await sleeve("server", a.port, { protocol: "postgres" })
    const raw = await connect(s.port)
    const reader = makeReader(raw)
    raw.write(pgStartup("bob"))
    const error = await reader.until((b) => b.length >= 5 && b.length >= b.readUInt32BE(1) + 1)
    assert.strictEqual(error[0], 0x45)
    assert.include(error.toString("latin1"), "C28000\0")
    assert.include(error.toString("latin1"), "SFATAL\0")
    await closed(raw)
    assert.strictEqual((await failure(s)).reason, "starttls_required")
    assert.deepStrictEqual(a.received, [])
  })

  it("line: the configured command line upgrades; what follows it in cleartext is discarded", async () => {
    const a = await app((sock, r) => lineSession(sock, r))
    const s = await sleeve("server", a.port, { protocol: "line", line: { command: "STARTTLS", reply: "OK STARTTLS" } })
    const raw = await connect(s.port)
    const plain = makeReader(raw)
    raw.write("STARTTLS\r\nsmuggled\r\n")
    assert.strictEqual((await plain.until(/\r\n$/)).toString(), "OK STARTTLS\r\n")
    plain.detach()
    const secure = await secureClient(pki.caPem)(raw)
    const reader = makeReader(secure)
    secure.write("hello\r\n")
    assert.strictEqual((await reader.until(/\r\n$/)).toString(), "echo: hello\r\n")
    secure.write("QUIT\r\n")
    await reader.until(/bye/)
    assert.deepStrictEqual(a.received, ["hello", "QUIT"])
    const o = await outcome(s)
    assert.isTrue(o.ok && o.discarded === "smuggled\r\n".length)
    secure.destroy()
  })
})

describe("client side (Sleeve beside a plaintext client)", () => {
  it("SMTP: negotiates STARTTLS with the server, replays its greeting, relays the app over TLS", async () => {
    const remote = await startRemote("smtp", { pki })
    cleanups.push(remote.close)
    const s = await sleeve("client", remote.port, { protocol: "smtp", clientName: "sleeve.test" })
    const legacy = await connect(s.port)
    const reader = makeReader(legacy)
    assert.strictEqual((await reader.until(/\r\n$/)).toString(), "220 remote.test ESMTP\r\n")
    legacy.write("EHLO legacy.app\r\n")
    assert.strictEqual(
      (await reader.until(/^250 /m)).toString(),
      "250-remote.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
    )
    legacy.write("QUIT\r\n")
    await reader.until(/^221 /m)
    await closed(legacy)
    assert.deepStrictEqual(remote.received, [
      "plain: EHLO sleeve.test",
      "plain: STARTTLS",
      "tls: EHLO legacy.app",
      "tls: QUIT"
    ])
  })

  it("SMTP: fails closed when the server does not offer STARTTLS; the app gets 421", async () => {
    const remote = await startRemote("smtp", { pki, offer: false })
    cleanups.push(remote.close)
    const s = await sleeve("client", remote.port, { protocol: "smtp" })
    const legacy = await connect(s.port)
    const reader = makeReader(legacy)
    assert.match((await reader.until(/\r\n$/)).toString(), /^421 4\.7\.0 The server does not offer STARTTLS/)
    await closed(legacy)
    assert.strictEqual((await failure(s)).reason, "not_offered")
    assert.deepStrictEqual(remote.received, ["plain: EHLO localhost", "plain: QUIT"])
  })

  it("SMTP: plaintext the server injects after its go-ahead is discarded, never shown to the app", async () => {
    const remote = await startRemote("smtp", { pki, inject: "250-INJECTED\r\n" })
    cleanups.push(remote.close)
    const s = await sleeve("client", remote.port, { protocol: "smtp" })
    const legacy = await connect(s.port)
    const reader = makeReader(legacy)
    assert.strictEqual((await reader.until(/\r\n$/)).toString(), "220 remote.test ESMTP\r\n")
    legacy.write("NOOP\r\n")
    assert.strictEqual((await reader.until(/\r\n$/)).toString(), "250 2.0.0 OK\r\n")
    const o = await outcome(s)
    assert.isTrue(o.ok && o.discarded === "250-INJECTED\r\n".length)
    legacy.destroy()
  })

  it("IMAP: STARTTLS with the server, greeting replayed without the stale capabilities", async () => {
    const remote = await startRemote("imap", { pki })
    cleanups.push(remote.close)
    const s = await sleeve("client", remote.port, { protocol: "imap" })
    const legacy = await connect(s.port)
    const reader = makeReader(legacy)
    assert.strictEqual((await reader.until(/\r\n$/)).toString(), "* OK remote IMAP ready\r\n")
    legacy.write("a1 CAPABILITY\r\n")
    assert.strictEqual(
      (await reader.until(/^a1 /m)).toString(),
      "* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\na1 OK CAPABILITY completed\r\n"
    )
    legacy.destroy()
    assert.deepStrictEqual(remote.received, ["plain: A0 STARTTLS", "tls: a1 CAPABILITY"])
  })

  it("POP3: STLS with the server, greeting replayed byte for byte", async () => {
    const remote = await startRemote("pop3", { pki })
    cleanups.push(remote.close)
    const s = await sleeve("client", remote.port, { protocol: "pop3" })
    const legacy = await connect(s.port)
    const reader = makeReader(legacy)
    assert.strictEqual((await reader.until(/\r\n$/)).toString(), "+OK remote POP3 ready <4711.1@remote.test>\r\n")
    legacy.write("STAT\r\n")
    assert.strictEqual((await reader.until(/\r\n$/)).toString(), "+OK 0 0\r\n")
    legacy.destroy()
    assert.deepStrictEqual(remote.received, ["plain: STLS", "tls: STAT"])
  })

  it("LDAP: StartTLS extended operation with the server, then the app's bind goes over TLS", async () => {
    const remote = await startRemote("ldap", { pki })
    cleanups.push(remote.close)
    const s = await sleeve("client", remote.port, { protocol: "ldap" })
    const legacy = await connect(s.port)
    const reader = makeReader(legacy)
    legacy.write(ldapBind(1))
    const response = await reader.until((b) => b.length >= 14)
    assert.deepStrictEqual(response, ldapResponse(1, 0x61, 0))
    legacy.write(ldapUnbind(2))
    await closed(legacy)
    assert.deepStrictEqual(remote.received, ["plain: op 0x77 #1", "tls: bind #1", "tls: unbind #2"])
  })

  it("PostgreSQL: the app's own SSLRequest is answered N locally; its StartupMessage goes over TLS", async () => {
    const remote = await startRemote("postgres", { pki })
    cleanups.push(remote.close)
    const s = await sleeve("client", remote.port, { protocol: "postgres" })
    const legacy = await connect(s.port)
    const reader = makeReader(legacy)
    legacy.write(pgSslRequest)
    assert.strictEqual((await reader.until((b) => b.length >= 1)).toString(), "N")
    legacy.write(pgStartup("bob"))
    assert.deepStrictEqual(await reader.until((b) => b.length >= pgReady.length), pgReady)
    legacy.write(pgTerminate)
    await closed(legacy)
    assert.deepStrictEqual(remote.received, [
      "plain: SSLRequest",
      "tls: startup 3.0 user bob database db",
      "tls: message X"
    ])
  })

  it("PostgreSQL: a server answering N fails closed; the app gets FATAL 08001", async () => {
    const remote = await startRemote("postgres", { pki, offer: false })
    cleanups.push(remote.close)
    const s = await sleeve("client", remote.port, { protocol: "postgres" })
    const legacy = await connect(s.port)
    const reader = makeReader(legacy)
    legacy.write(pgStartup("bob"))
    const error = await reader.until((b) => b.length >= 5 && b.length >= b.readUInt32BE(1) + 1)
    assert.include(error.toString("latin1"), "C08001\0")
    await closed(legacy)
    assert.strictEqual((await failure(s)).reason, "not_offered")
  })

  it("line: sends the command, upgrades on the reply, relays the app over TLS", async () => {
    const remote = await startRemote("line", { pki })
    cleanups.push(remote.close)
    const s = await sleeve("client", remote.port, {
      protocol: "line",
      line: { command: "STARTTLS", reply: "OK STARTTLS" }
    })
    const legacy = await connect(s.port)
    const reader = makeReader(legacy)
    legacy.write("hello\r\n")
    assert.strictEqual((await reader.until(/\r\n$/)).toString(), "echo: hello\r\n")
    legacy.destroy()
    assert.deepStrictEqual(remote.received, ["plain: STARTTLS", "tls: hello"])
  })
})

describe("runner", () => {
  /** A connected pair: `inbound` is the accepted side, not yet read by anyone. */
  const pair = async (): Promise<{ readonly client: net.Socket; readonly inbound: net.Socket }> => {
    const server = net.createServer()
    const port = await listenOn(server)
    const accepted = new Promise<net.Socket>((resolve) => server.once("connection", resolve))
    const client = await connect(port)
    const inbound = await accepted
    server.close()
    cleanups.push(async () => {
      client.destroy()
      inbound.destroy()
    })
    return { client, inbound }
  }

  const buffered = async (socket: net.Socket, length: number) => {
    for (let i = 0; i < 100 && socket.readableLength < length; i++) await sleep(5)
    assert.strictEqual(socket.readableLength, length)
  }

  it("drains what the socket already buffered past the command, instead of feeding it to TLS", async () => {
    const a = await app((sock, r) => lineSession(sock, r))
    const appSocket = await connect(a.port)
    const { client, inbound } = await pair()
    // Two separate reads sit in the inbound socket's buffer before the runner starts.
    client.write("STARTTLS\r\n")
    await buffered(inbound, 10)
    client.write("RSET\r\n")
    await buffered(inbound, 16)
    let reported = 0
    const running = StarttlsSession.runServerSide({
      peer: inbound,
      app: appSocket,
      negotiator: Starttls.makeNegotiator({
        protocol: "line",
        side: "server",
        line: { command: "STARTTLS", reply: "OK" }
      }),
      upgrade: serverUpgrade(pki),
      onDiscarded: (n) => {
        reported = n
      }
    })
    const plain = makeReader(client)
    assert.strictEqual((await plain.until(/\r\n$/)).toString(), "OK\r\n")
    plain.detach()
    const secure = await secureClient(pki.caPem)(client)
    const upgraded = await running
    assert.strictEqual(upgraded.discarded, 6)
    assert.strictEqual(reported, 6)
    upgraded.peer.pipe(upgraded.app)
    upgraded.app.pipe(upgraded.peer)
    const reader = makeReader(secure)
    secure.write("hello\r\n")
    assert.strictEqual((await reader.until(/\r\n$/)).toString(), "echo: hello\r\n")
    assert.deepStrictEqual(a.received, ["hello"])
    secure.destroy()
  })

  it("an aborted negotiation rejects with reason aborted and closes both sockets", async () => {
    const a = await app((sock, r) => smtpSession(sock, r))
    const appSocket = await connect(a.port)
    const { inbound } = await pair()
    const controller = new AbortController()
    const running = StarttlsSession.runServerSide({
      peer: inbound,
      app: appSocket,
      negotiator: Starttls.makeNegotiator({ protocol: "smtp", side: "server" }),
      upgrade: serverUpgrade(pki),
      signal: controller.signal
    })
    controller.abort(new Error("negotiation timeout"))
    const error = await running.then(
      () => assert.fail("expected a rejection"),
      (e: unknown) => e
    )
    assert.instanceOf(error, StarttlsSession.StarttlsSessionError)
    assert.strictEqual((error as StarttlsSession.StarttlsSessionError).reason, "aborted")
    assert.match((error as Error).message, /^STARTTLS aborted: /)
    await Promise.all([closed(inbound), closed(appSocket)])
  })

  it("rejects a negotiator of the wrong side", async () => {
    const { client, inbound } = await pair()
    const error = await StarttlsSession.runClientSide({
      peer: client,
      app: inbound,
      negotiator: Starttls.makeNegotiator({ protocol: "smtp", side: "server" }),
      upgrade: serverUpgrade(pki)
    }).then(
      () => undefined,
      (e: unknown) => e
    )
    assert.instanceOf(error, TypeError)
  })
})
