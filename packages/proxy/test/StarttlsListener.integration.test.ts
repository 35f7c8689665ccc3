/**
 * `mode: starttls` listeners end to end, the way the sidecar runs them: one YAML file, activated
 * and started by `ProxyRuntime`, real sockets on loopback, certificates from `TestPki`.
 *
 * Server side, each protocol is driven by `openssl s_client -starttls <protocol>` (a real
 * third-party client that verifies the certificate chain and host name) in front of a small
 * plaintext server from `LegacyApps`, with application data both ways after the upgrade. Client
 * side, a legacy plaintext client reaches a STARTTLS-capable server (`StarttlsRemotes`). The
 * security properties are each proved through a listener: bytes pipelined after STARTTLS are
 * discarded and counted (SMTP and the PostgreSQL variant of the injection), `requireTls` answers
 * commands with SMTP 530 and keeps them from the app, the cleartext cap closes the connection,
 * and a failed upgrade never falls back to plaintext.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import * as Metrics from "@sleeve/metrics/Metrics"
import * as TestPki from "@sleeve/testing/TestPki"
import * as Tls from "node:tls"
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
  sClient,
  sClientArgs,
  secureClient
} from "./support/StarttlsHarness.ts"
import type { Pki } from "./support/StarttlsPki.ts"
import { startRemote } from "./support/StarttlsRemotes.ts"
import * as SmtpRecorder from "./support/SmtpRecorder.ts"

// ---------------------------------------------------------------------------------------------
// Fixture: one PKI, the plaintext apps, the remote servers and one Sleeve running them all
// ---------------------------------------------------------------------------------------------

let pki: TestPki.TestPki
let ca: TestPki.Identity
let otherCa: TestPki.Identity
let proxy: ProxyUnderTest.ProxyUnderTest | undefined
const closers: Array<() => Promise<void>> = []

const apps: Record<string, Served> = {}
const recorders: Record<string, SmtpRecorder.SmtpRecorder> = {}
const remotes: Record<string, Served> = {}

/** Server-side listeners: name → protocol and extra YAML lines. */
const serverListeners = {
  smtp: { protocol: "smtp", app: smtpSession },
  imap: { protocol: "imap", app: imapSession },
  pop3: { protocol: "pop3", app: pop3Session },
  ldap: { protocol: "ldap", app: ldapSession },
  postgres: { protocol: "postgres", app: pgSession },
  line: { protocol: "line", app: lineSession },
  "pg-inject": { protocol: "postgres", app: pgSession }
} as const

/** Server-side SMTP listeners in front of an `SmtpRecorder`, one per security property. */
const recorderListeners = {
  "smtp-inject": "",
  "smtp-require": "",
  "smtp-cap": "    maxCleartextBytes: 256\n",
  "smtp-garbage": "",
  "smtp-badca": ""
} as const

/** Client-side listeners in front of a STARTTLS-capable remote. */
const clientListeners = ["imap", "pop3", "ldap", "line", "postgres"] as const

beforeAll(async () => {
  pki = await TestPki.make()
  ca = await pki.ca({ name: "ca", subject: [{ CN: "Sleeve STARTTLS Test CA" }, { O: "Sleeve Test" }] })
  otherCa = await pki.ca({ name: "other-ca", subject: [{ CN: "Somebody Else's CA" }] })
  const front = await pki.leaf(ca, { name: "front", subject: [{ CN: "localhost" }, { O: "Sleeve Test" }] })
  const remote = await pki.leaf(ca, { name: "remote", subject: [{ CN: "remote" }, { O: "Sleeve Test" }] })

  for (const [name, l] of Object.entries(serverListeners)) {
    apps[name] = await listen((socket, received) => l.app(socket, received))
    closers.push(apps[name]!.close)
  }
  for (const name of Object.keys(recorderListeners)) {
    recorders[name] = await SmtpRecorder.start()
    closers.push(recorders[name]!.close)
  }
  // StarttlsRemotes wants a server context and the CA; give it the TestPki ones.
  const remotePki: Pki = {
    dir: pki.dir,
    caFile: ca.certFile,
    caPem: ca.certPem,
    certPem: remote.certPem,
    keyPem: remote.keyPem,
    serverContext: Tls.createSecureContext({ cert: remote.certPem, key: remote.keyPem }),
    cleanup: async () => {}
  }
  for (const protocol of clientListeners) {
    remotes[protocol] = await startRemote(protocol, { pki: remotePki })
    closers.push(remotes[protocol]!.close)
  }

  const listener = (name: string, protocol: string, target: number, extra: string) =>
    `  - name: ${name}\n    mode: starttls\n    protocol: ${protocol}\n    listen: "127.0.0.1:0"\n` +
    `    target: "127.0.0.1:${target}"\n${extra}`
  const yaml = [
    "tls:",
    "  Front:",
    "    type: server",
    `    certificateFile: ${front.certFile}`,
    `    privateKeyFile: ${front.keyFile}`,
    "  Remote:",
    "    type: client",
    `    caFile: ${ca.certFile}`,
    "    authorizedPeers: ['CN=remote,O=Sleeve Test']",
    "listeners:",
    ...Object.entries(serverListeners).map(([name, l]) =>
      listener(
        name,
        l.protocol,
        apps[name]!.port,
        `    tls: Front\n${l.protocol === "line" ? "    line: { command: STARTTLS, reply: OK STARTTLS }\n" : ""}`
      )
    ),
    ...Object.entries(recorderListeners).map(([name, extra]) =>
      listener(name, "smtp", recorders[name]!.port, `    tls: Front\n${extra}`)
    ),
    ...clientListeners.map((protocol) =>
      listener(
        `${protocol}-out`,
        protocol,
        remotes[protocol]!.port,
        `    side: client\n    tls: Remote\n${protocol === "line" ? "    line: { command: STARTTLS, reply: OK STARTTLS }\n" : ""}`
      )
    ),
    "drainTimeout: 1s",
    ""
  ].join("\n")
  const file = await pki.write("sleeve.yaml", yaml)
  proxy = await ProxyUnderTest.start(file)
}, 30_000)

afterAll(async () => {
  await proxy?.running.drain(0)
  for (const close of closers.reverse()) await close()
  await pki?.cleanup()
})

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const port = (listener: string): number => proxy!.port(listener)

const upgrades = (listener: string, protocol: string, result: Metrics.StarttlsResult) =>
  proxy!.value(Metrics.MetricName.starttlsUpgradesTotal, { listener, protocol, result })

// ---------------------------------------------------------------------------------------------
// Server side: openssl s_client in front of each plaintext app
// ---------------------------------------------------------------------------------------------

describe("server side: openssl s_client -starttls through a configured listener", { timeout: 15_000 }, () => {
  it("smtp: STARTTLS answered by Sleeve, a mail transaction reaches the app over TLS", async () => {
    const result = await sClient(
      sClientArgs(ca.certFile, "smtp", port("smtp"), ["-crlf"]),
      "EHLO after.tls\nMAIL FROM:<alice@example.test>\nRCPT TO:<bob@example.test>\nDATA\nSubject: hi\n\nbody\n.\nQUIT\n"
    )
    const stdout = result.stdout.toString("latin1")
    assert.include(stdout, "Verify return code: 0 (ok)")
    assert.include(stdout, "250-app.test")
    assert.include(stdout, "250 2.0.0 Queued")
    assert.include(stdout, "221 2.0.0 Bye")
    assert.notMatch(stdout.slice(stdout.indexOf("250-app.test")), /STARTTLS/, "no STARTTLS offered once under TLS")
    const received = apps.smtp!.received
    assert.match(received[0] ?? "", /^EHLO /, "s_client's own EHLO before TLS reached the app")
    assert.deepStrictEqual(received.slice(1), [
      "EHLO after.tls",
      "MAIL FROM:<alice@example.test>",
      "RCPT TO:<bob@example.test>",
      "DATA",
      "Subject: hi",
      "",
      "body",
      ".",
      "QUIT"
    ])
    assert.isFalse(
      received.some((l) => /STARTTLS/i.test(l)),
      "the app never sees STARTTLS"
    )
    assert.strictEqual(await upgrades("smtp", "smtp", "ok"), 1)
    assert.strictEqual(
      await proxy!.value(Metrics.MetricName.handshakesTotal, { listener: "smtp", role: "server", result: "ok" }),
      1
    )
  })

  it("imap: STARTTLS answered by Sleeve, then tagged commands reach the app over TLS", async () => {
    const result = await sClient(
      sClientArgs(ca.certFile, "imap", port("imap"), ["-crlf"]),
      "a1 NOOP\na2 LOGIN bob secret\na3 LOGOUT\n"
    )
    const stdout = result.stdout.toString("latin1")
    assert.include(stdout, "Verify return code: 0 (ok)")
    assert.include(stdout, "a1 OK NOOP completed")
    assert.include(stdout, "a2 OK LOGIN completed")
    assert.include(stdout, "a3 OK LOGOUT completed")
    const received = apps.imap!.received
    assert.deepStrictEqual(received.slice(-3), ["a1 NOOP", "a2 LOGIN bob secret", "a3 LOGOUT"])
    assert.isFalse(received.some((l) => /STARTTLS/i.test(l)))
    assert.strictEqual(await upgrades("imap", "imap", "ok"), 1)
  })

  it("pop3: STLS answered by Sleeve, then commands reach the app over TLS", async () => {
    const result = await sClient(sClientArgs(ca.certFile, "pop3", port("pop3"), ["-crlf"]), "USER bob\nSTAT\nQUIT\n")
    const stdout = result.stdout.toString("latin1")
    assert.include(stdout, "Verify return code: 0 (ok)")
    assert.include(stdout, "+OK 0 0")
    assert.include(stdout, "+OK legacy POP3 bye")
    assert.deepStrictEqual(apps.pop3!.received, ["USER bob", "STAT", "QUIT"])
    assert.strictEqual(await upgrades("pop3", "pop3", "ok"), 1)
  })

  it("ldap: the StartTLS extended operation answered by Sleeve, then bind and unbind over TLS", async () => {
    const result = await sClient(
      sClientArgs(ca.certFile, "ldap", port("ldap")),
      Buffer.concat([ldapBind(2), ldapUnbind(3)])
    )
    assert.include(result.stdout.toString("latin1"), "Verify return code: 0 (ok)")
    assert.isTrue(result.stdout.includes(ldapResponse(2, 0x61, 0)), "the app's BindResponse came back over TLS")
    assert.deepStrictEqual(apps.ldap!.received, ["bind #2", "unbind #3"])
    assert.strictEqual(await upgrades("ldap", "ldap", "ok"), 1)
  })

  it("postgres: SSLRequest answered S by Sleeve, then the StartupMessage reaches the app over TLS", async () => {
    const result = await sClient(
      sClientArgs(ca.certFile, "postgres", port("postgres")),
      Buffer.concat([pgStartup("bob"), pgTerminate])
    )
    assert.include(result.stdout.toString("latin1"), "Verify return code: 0 (ok)")
    assert.isTrue(result.stdout.includes(pgReady), "AuthenticationOk + ReadyForQuery came back over TLS")
    assert.deepStrictEqual(apps.postgres!.received, ["startup 3.0 user bob database db", "message X"])
    assert.strictEqual(await upgrades("postgres", "postgres", "ok"), 1)
  })

  it("line: the configured command upgrades, then lines are echoed over TLS", async () => {
    const raw = await connect(port("line"))
    const plain = makeReader(raw)
    raw.write("STARTTLS\r\n")
    assert.strictEqual((await plain.until(/\r\n$/)).toString(), "OK STARTTLS\r\n")
    plain.detach()
    const secure = await secureClient(ca.certPem)(raw)
    const reader = makeReader(secure)
    secure.write("hello over tls\r\n")
    assert.strictEqual((await reader.until(/\r\n$/)).toString(), "echo: hello over tls\r\n")
    secure.write("QUIT\r\n")
    await reader.until(/bye/)
    await closed(secure)
    assert.deepStrictEqual(apps.line!.received, ["hello over tls", "QUIT"])
    assert.strictEqual(await upgrades("line", "line", "ok"), 1)
  })
})

// ---------------------------------------------------------------------------------------------
// Client side: a legacy plaintext client, a STARTTLS-capable remote
// ---------------------------------------------------------------------------------------------

describe("client side: a plaintext client reaches a STARTTLS server through a configured listener", () => {
  it("imap: Sleeve sends STARTTLS, verifies the server, replays the greeting; the app talks over TLS", async () => {
    const legacy = await connect(port("imap-out"))
    const reader = makeReader(legacy)
    assert.strictEqual((await reader.until(/\r\n$/)).toString(), "* OK remote IMAP ready\r\n")
    legacy.write("a1 LOGIN bob secret\r\n")
    assert.strictEqual((await reader.until(/^a1 /m)).toString(), "a1 OK LOGIN completed\r\n")
    legacy.write("a2 LOGOUT\r\n")
    await closed(legacy)
    assert.deepStrictEqual(remotes.imap!.received, ["plain: A0 STARTTLS", "tls: a1 LOGIN bob secret", "tls: a2 LOGOUT"])
    assert.strictEqual(await upgrades("imap-out", "imap", "ok"), 1)
    assert.strictEqual(
      await proxy!.value(Metrics.MetricName.handshakesTotal, { listener: "imap-out", role: "client", result: "ok" }),
      1
    )
  })

  it("pop3: Sleeve sends STLS; the legacy client's commands go over TLS", async () => {
    const legacy = await connect(port("pop3-out"))
    const reader = makeReader(legacy)
    assert.strictEqual((await reader.until(/\r\n$/)).toString(), "+OK remote POP3 ready <4711.1@remote.test>\r\n")
    legacy.write("STAT\r\nQUIT\r\n")
    assert.strictEqual((await reader.until(/bye\r\n$/)).toString(), "+OK 0 0\r\n+OK legacy POP3 bye\r\n")
    await closed(legacy)
    assert.deepStrictEqual(remotes.pop3!.received, ["plain: STLS", "tls: STAT", "tls: QUIT"])
    assert.strictEqual(await upgrades("pop3-out", "pop3", "ok"), 1)
  })

  it("ldap: Sleeve sends the StartTLS extended operation; the app's bind goes over TLS", async () => {
    const legacy = await connect(port("ldap-out"))
    const reader = makeReader(legacy)
    legacy.write(ldapBind(1))
    assert.deepStrictEqual(await reader.until((b) => b.length >= 14), ldapResponse(1, 0x61, 0))
    legacy.write(ldapUnbind(2))
    await closed(legacy)
    assert.deepStrictEqual(remotes.ldap!.received, ["plain: op 0x77 #1", "tls: bind #1", "tls: unbind #2"])
    assert.strictEqual(await upgrades("ldap-out", "ldap", "ok"), 1)
  })

  it("postgres: Sleeve sends SSLRequest; the app's StartupMessage goes over TLS", async () => {
    const legacy = await connect(port("postgres-out"))
    const reader = makeReader(legacy)
    legacy.write(pgStartup("bob"))
    assert.deepStrictEqual(await reader.until((b) => b.length >= pgReady.length), pgReady)
    legacy.write(pgTerminate)
    await closed(legacy)
    assert.deepStrictEqual(remotes.postgres!.received, [
      "plain: SSLRequest",
      "tls: startup 3.0 user bob database db",
      "tls: message X"
    ])
    assert.strictEqual(await upgrades("postgres-out", "postgres", "ok"), 1)
  })

  it("line: Sleeve sends the command, upgrades on the reply; the app's lines go over TLS", async () => {
    const legacy = await connect(port("line-out"))
    const reader = makeReader(legacy)
    legacy.write("ping\r\n")
    assert.strictEqual((await reader.until(/\r\n$/)).toString(), "echo: ping\r\n")
    legacy.write("QUIT\r\n")
    await closed(legacy)
    assert.deepStrictEqual(remotes.line!.received, ["plain: STARTTLS", "tls: ping", "tls: QUIT"])
    assert.strictEqual(await upgrades("line-out", "line", "ok"), 1)
  })
})

// ---------------------------------------------------------------------------------------------
// Security properties, each through a listener
// ---------------------------------------------------------------------------------------------

describe("security", { timeout: 15_000 }, () => {
  it("commands pipelined after STARTTLS are discarded, counted and never reach the app (CVE-2011-0411)", async () => {
    const recorder = recorders["smtp-inject"]!
    const raw = await connect(port("smtp-inject"))
    const plain = makeReader(raw)
    await plain.until(/^220 .*\r\n$/)
    raw.write("EHLO client.test\r\n")
    assert.match((await plain.until(/^250 .*\r\n/m)).toString(), /^250[ -]STARTTLS\r$/m, "Sleeve offers STARTTLS")
    const injected = "MAIL FROM:<mallory@evil.test>\r\nRCPT TO:<victim@example.test>\r\n"
    raw.write(`STARTTLS\r\n${injected}`)
    assert.strictEqual((await plain.until(/\r\n$/)).toString(), "220 2.0.0 Ready to start TLS\r\n")
    assert.strictEqual(plain.detach().length, 0)

    const secure = await secureClient(ca.certPem)(raw)
    const reader = makeReader(secure)
    const say = async (line: string, reply: RegExp) => {
      secure.write(`${line}\r\n`)
      return (await reader.until(reply)).toString()
    }
    assert.notInclude(await say("EHLO client.test", /^250 .*\r\n/m), "STARTTLS")
    // Had the injected lines been relayed, this MAIL would be answered 503 (nested transaction)
    // by a strict server, and the recorder would hold mallory's envelope.
    await say("MAIL FROM:<alice@example.test>", /^250 .*\r\n/m)
    await say("RCPT TO:<bob@example.test>", /^250 .*\r\n/m)
    await say("DATA", /^354 .*\r\n/m)
    await say("Subject: pipelining\r\n\r\n..a dot-stuffed line\r\nbody\r\n.", /^250 .*\r\n/m)
    await say("QUIT", /^221 .*\r\n/m)
    await recorder.closed()

    assert.deepStrictEqual(
      recorder.mails.map((m) => ({ from: m.from, to: m.to, data: m.data })),
      [
        {
          from: "alice@example.test",
          to: ["bob@example.test"],
          data: "Subject: pipelining\r\n\r\n.a dot-stuffed line\r\nbody"
        }
      ]
    )
    const lines = recorder.commands.map((c) => c.line)
    assert.isFalse(
      lines.some((l) => /mallory|victim|STARTTLS/.test(l)),
      `the app saw ${JSON.stringify(lines)}`
    )
    assert.deepStrictEqual(lines, [
      "EHLO client.test",
      "EHLO client.test",
      "MAIL FROM:<alice@example.test>",
      "RCPT TO:<bob@example.test>",
      "DATA",
      "QUIT"
    ])
    await proxy!.counted(
      Metrics.MetricName.starttlsDiscardedBytesTotal,
      { listener: "smtp-inject", protocol: "smtp" },
      injected.length
    )
    assert.strictEqual(await upgrades("smtp-inject", "smtp", "ok"), 1)
    const logged = proxy!.events().find((e) => e.event === "starttls_discarded" && e.listener === "smtp-inject")
    assert.strictEqual(logged?.bytes, injected.length)
  })

  it("a StartupMessage pipelined after SSLRequest is discarded, never reaches the app (CVE-2021-23214)", async () => {
    const app = apps["pg-inject"]!
    const raw = await connect(port("pg-inject"))
    const plain = makeReader(raw)
    const injected = pgStartup("mallory")
    raw.write(Buffer.concat([pgSslRequest, injected]))
    assert.strictEqual((await plain.until((b) => b.length >= 1)).toString(), "S")
    assert.strictEqual(plain.detach().length, 0)
    const secure = await secureClient(ca.certPem)(raw)
    const reader = makeReader(secure)
    secure.write(pgStartup("bob"))
    assert.deepStrictEqual(await reader.until((b) => b.length >= pgReady.length), pgReady)
    secure.write(pgTerminate)
    await closed(secure)
    assert.deepStrictEqual(app.received, ["startup 3.0 user bob database db", "message X"])
    await proxy!.counted(
      Metrics.MetricName.starttlsDiscardedBytesTotal,
      { listener: "pg-inject", protocol: "postgres" },
      injected.length
    )
  })

  it("requireTls: MAIL, RCPT and DATA before STARTTLS get 530 and never reach the app", async () => {
    const recorder = recorders["smtp-require"]!
    const raw = await connect(port("smtp-require"))
    const plain = makeReader(raw)
    await plain.until(/^220 .*\r\n$/)
    const line = async (text: string) => {
      raw.write(`${text}\r\n`)
      return (await plain.until(/^\d{3} .*\r\n/m)).toString()
    }
    assert.match(await line("EHLO client.test"), /^250 /m)
    for (const command of ["MAIL FROM:<alice@example.test>", "RCPT TO:<bob@example.test>", "DATA"]) {
      assert.strictEqual(await line(command), "530 5.7.0 Must issue a STARTTLS command first\r\n", command)
    }
    assert.match(await line("QUIT"), /^221 /)
    await closed(raw)
    await recorder.closed()
    assert.deepStrictEqual(
      recorder.commands.map((c) => c.line),
      ["EHLO client.test", "QUIT"]
    )
    assert.deepStrictEqual(recorder.mails, [])
    await proxy!.counted(
      Metrics.MetricName.connectionsRefusedTotal,
      { listener: "smtp-require", reason: "starttls_required" },
      1
    )
    assert.strictEqual(await upgrades("smtp-require", "smtp", "refused"), 1)
    assert.strictEqual(await upgrades("smtp-require", "smtp", "ok"), 0)
  })

  it("the cleartext cap closes the connection with 421 and counts a cleartext_limit refusal", async () => {
    const recorder = recorders["smtp-cap"]!
    // A trickle of commands the app answers: both directions count towards the 256 bytes.
    const raw = await connect(port("smtp-cap"))
    const plain = makeReader(raw)
    const greeting = await plain.until(/^220 .*\r\n$/)
    let rounds = 0
    let last = ""
    for (; rounds < 100; rounds++) {
      raw.write("NOOP\r\n")
      last = (await plain.until(/\r\n$/)).toString()
      if (!last.startsWith("250 ")) break
    }
    assert.strictEqual(last, "421 4.7.0 Too much cleartext before TLS, closing connection\r\n")
    // Each round is "NOOP\r\n" (6 bytes) and "250 2.0.0 OK\r\n" (14): the last NOOP still fits
    // under the cap and reaches the app, the app's answer to it does not and is never relayed.
    const round = "NOOP\r\n".length + "250 2.0.0 OK\r\n".length
    assert.strictEqual(rounds, Math.floor((256 - greeting.length) / round))
    await closed(raw)
    await recorder.closed()
    assert.strictEqual(recorder.commands.length, rounds + 1)

    // One long line: refused before a byte of it reaches the app.
    const raw2 = await connect(port("smtp-cap"))
    const plain2 = makeReader(raw2)
    await plain2.until(/^220 .*\r\n$/)
    raw2.write(`EHLO ${"x".repeat(300)}\r\n`)
    assert.strictEqual(
      (await plain2.until(/\r\n$/)).toString(),
      "421 4.7.0 Too much cleartext before TLS, closing connection\r\n"
    )
    await closed(raw2)
    await recorder.closed(2)
    assert.strictEqual(recorder.commands.length, rounds + 1, "nothing of the long line reached the app")

    await proxy!.counted(
      Metrics.MetricName.connectionsRefusedTotal,
      { listener: "smtp-cap", reason: "cleartext_limit" },
      2
    )
    assert.strictEqual(await upgrades("smtp-cap", "smtp", "refused"), 2)
  })

  it("garbage instead of a ClientHello fails the upgrade and never falls back to plaintext", async () => {
    const recorder = recorders["smtp-garbage"]!
    const raw = await connect(port("smtp-garbage"))
    const plain = makeReader(raw)
    await plain.until(/^220 .*\r\n$/)
    raw.write("EHLO client.test\r\n")
    await plain.until(/^250 .*\r\n/m)
    raw.write("STARTTLS\r\n")
    assert.strictEqual((await plain.until(/\r\n$/)).toString(), "220 2.0.0 Ready to start TLS\r\n")
    raw.write("MAIL FROM:<mallory@evil.test>\r\nRCPT TO:<victim@example.test>\r\n")
    await closed(raw)
    const after = plain.detach()
    // Whatever Sleeve sent after the go-ahead is TLS (an alert record), never a plaintext reply.
    assert.isTrue(after.length === 0 || after[0] === 0x15, `got ${JSON.stringify(after.toString("latin1"))}`)
    await recorder.closed()
    assert.deepStrictEqual(
      recorder.commands.map((c) => c.line),
      ["EHLO client.test"]
    )
    await proxy!.counted(Metrics.MetricName.starttlsUpgradesTotal, { listener: "smtp-garbage", result: "failed" }, 1)
    assert.strictEqual(await upgrades("smtp-garbage", "smtp", "ok"), 0)
    assert.isAtLeast(
      await proxy!.value(Metrics.MetricName.handshakesTotal, {
        listener: "smtp-garbage",
        role: "server",
        result: "failed"
      }),
      1
    )
  })

  it("a client that rejects the certificate: the handshake fails and its commands never reach the app", async () => {
    const recorder = recorders["smtp-badca"]!
    const args = sClientArgs(ca.certFile, "smtp", port("smtp-badca"), ["-crlf"]).map((a) =>
      a === ca.certFile ? otherCa.certFile : a
    )
    const result = await sClient(args, "MAIL FROM:<alice@example.test>\nQUIT\n")
    assert.notStrictEqual(result.code, 0)
    assert.include(result.stdout.toString("latin1") + result.stderr, "unable to get local issuer certificate")
    await recorder.closed()
    assert.isFalse(
      recorder.commands.some((c) => /MAIL|QUIT|STARTTLS/.test(c.line)),
      JSON.stringify(recorder.commands)
    )
    await proxy!.counted(Metrics.MetricName.starttlsUpgradesTotal, { listener: "smtp-badca", result: "failed" }, 1)
  })
})
