/**
 * SMTP STARTTLS through `mode: starttls` listeners, with curl as the real mail client and
 * `SmtpRecorder` as the mail server that records what it received.
 *
 * Server side: `curl --ssl-reqd` sends a mail through Sleeve to a legacy plaintext server; the
 * message arrives intact and the server never sees STARTTLS. A curl that does not ask for TLS is
 * refused with 530 and its mail never reaches the server. Client side: a legacy curl without TLS
 * sends a mail through Sleeve to a server that requires STARTTLS; the server receives it over
 * TLS. A server whose certificate does not verify, or that does not offer STARTTLS, gets no
 * plaintext after the negotiation: the legacy client is told 421 and nothing is sent in the clear.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import * as Metrics from "@sleeve/metrics/Metrics"
import * as Process from "@sleeve/testing/Process"
import * as TestPki from "@sleeve/testing/TestPki"
import * as ProxyUnderTest from "./support/ProxyUnderTest.ts"
import * as SmtpRecorder from "./support/SmtpRecorder.ts"

let pki: TestPki.TestPki
let ca: TestPki.Identity
let proxy: ProxyUnderTest.ProxyUnderTest | undefined
let messageFile: string
const closers: Array<() => Promise<void>> = []
const servers: Record<string, SmtpRecorder.SmtpRecorder> = {}

/** The message curl uploads: CRLF lines, one starting with a dot (SMTP dot-stuffing). */
const message = [
  "From: Alice <alice@example.test>",
  "To: Bob <bob@example.test>",
  "Subject: through Sleeve",
  "",
  "Hello Bob,",
  ".a line that starts with a dot",
  ...Array.from({ length: 64 }, (_, i) => `line ${i}: ${"lorem ipsum ".repeat(5)}`),
  "Bye."
].join("\r\n")
/** curl announces the file's size (ESMTP SIZE, which the servers advertise). */
const messageSize = Buffer.byteLength(`${message}\r\n`)

beforeAll(async () => {
  pki = await TestPki.make()
  ca = await pki.ca({ name: "ca", subject: [{ CN: "Sleeve SMTP Test CA" }] })
  const rogueCa = await pki.ca({ name: "rogue-ca", subject: [{ CN: "Rogue CA" }] })
  const [front, remote, rogue] = await Promise.all([
    pki.leaf(ca, { name: "front", subject: [{ CN: "localhost" }] }),
    pki.leaf(ca, { name: "remote", subject: [{ CN: "mail.remote.test" }] }),
    pki.leaf(rogueCa, { name: "rogue", subject: [{ CN: "mail.remote.test" }] })
  ])
  messageFile = await pki.write("message.eml", `${message}\r\n`)

  const start = async (name: string, options: SmtpRecorder.Options) => {
    servers[name] = await SmtpRecorder.start(options)
    closers.push(servers[name]!.close)
  }
  await start("legacy", { name: "legacy.test" })
  await start("legacy-refusing", { name: "legacy.test" })
  await start("remote", { name: "remote.test", tls: remote })
  await start("rogue", { name: "rogue.test", tls: rogue })
  await start("no-starttls", { name: "old.test" })

  const listener = (name: string, target: string, lines: ReadonlyArray<string>) =>
    [
      `  - name: ${name}`,
      "    mode: starttls",
      "    protocol: smtp",
      '    listen: "127.0.0.1:0"',
      `    target: "127.0.0.1:${servers[target]!.port}"`,
      ...lines.map((l) => `    ${l}`)
    ].join("\n")
  const client = ["side: client", "tls: Remote", "clientName: sleeve.test"]
  const file = await pki.write(
    "sleeve.yaml",
    [
      "tls:",
      "  MailFront:",
      "    type: server",
      `    certificateFile: ${front.certFile}`,
      `    privateKeyFile: ${front.keyFile}`,
      "  Remote:",
      "    type: client",
      `    caFile: ${ca.certFile}`,
      "listeners:",
      listener("smtp-in", "legacy", ["side: server", "requireTls: true", "tls: MailFront"]),
      listener("smtp-in-refusing", "legacy-refusing", ["tls: MailFront"]),
      listener("smtp-out", "remote", client),
      listener("smtp-out-rogue", "rogue", client),
      listener("smtp-out-no-starttls", "no-starttls", client),
      ""
    ].join("\n")
  )
  proxy = await ProxyUnderTest.start(file)
}, 30_000)

afterAll(async () => {
  await proxy?.running.drain(0)
  for (const close of closers.reverse()) await close()
  await pki?.cleanup()
})

const port = (listener: string): number => proxy!.port(listener)

/** `sleeve_bytes_total` of a listener, both directions. */
const bytes = async (listener: string) => {
  const of = (direction: string) => proxy!.value(Metrics.MetricName.bytesTotal, { listener, direction })
  return { clientToTarget: await of("client_to_target"), targetToClient: await of("target_to_client") }
}

interface CurlResult {
  readonly code: number | null
  /** curl's `-v` trace: `> ` lines sent, `< ` lines received, `* ` notes. */
  readonly trace: string
}

/** Sends `messageFile` with curl: from alice to bob, EHLO `client.example`, verbose trace. */
const sendMail = async (port: number, tls: ReadonlyArray<string>): Promise<CurlResult> => {
  const r = await Process.run(
    "curl",
    [
      "-sS",
      "-v",
      "--max-time",
      "10",
      "--url",
      `smtp://127.0.0.1:${port}/client.example`,
      "--mail-from",
      "alice@example.test",
      "--mail-rcpt",
      "bob@example.test",
      "--upload-file",
      messageFile,
      ...tls
    ],
    { encoding: "latin1" }
  )
  return { code: r.code, trace: r.stderr }
}

describe("server side: Sleeve answers STARTTLS for a plaintext SMTP server", { timeout: 15_000 }, () => {
  it("curl --ssl-reqd sends a mail over TLS; it arrives intact and the server never sees STARTTLS", async () => {
    const server = servers.legacy!
    const result = await sendMail(port("smtp-in"), ["--ssl-reqd", "--cacert", ca.certFile])
    assert.strictEqual(result.code, 0, result.trace)
    assert.include(result.trace, "> STARTTLS")
    assert.include(result.trace, "< 220 2.0.0 Ready to start TLS")
    assert.match(result.trace, /SSL connection using TLSv1\.3/)
    assert.match(result.trace, /subject: CN=localhost/)
    await server.closed()

    assert.strictEqual(server.mails.length, 1)
    const mail = server.mails[0]!
    assert.strictEqual(mail.from, "alice@example.test")
    assert.deepStrictEqual(mail.to, ["bob@example.test"])
    assert.strictEqual(mail.data, message, "the message arrives byte for byte, dot-stuffing undone")
    assert.strictEqual(mail.helo, "client.example")
    assert.isFalse(mail.secure, "the server itself speaks plaintext: Sleeve carries the TLS")
    const lines = server.commands.map((c) => c.line)
    assert.deepStrictEqual(lines, [
      "EHLO client.example",
      "EHLO client.example",
      `MAIL FROM:<alice@example.test> SIZE=${messageSize}`,
      "RCPT TO:<bob@example.test>",
      "DATA",
      "QUIT"
    ])
    await proxy!.counted(
      Metrics.MetricName.starttlsUpgradesTotal,
      { listener: "smtp-in", protocol: "smtp", result: "ok" },
      1
    )
    // The client uploaded the message: most bytes went client → target (the server only answers).
    await proxy!.counted(Metrics.MetricName.connectionsActive, { listener: "smtp-in" }, 0)
    const moved = await bytes("smtp-in")
    assert.isAbove(moved.clientToTarget, messageSize)
    assert.isBelow(moved.targetToClient, 1000)
  })

  it("curl without TLS is answered 530; its mail never reaches the server", async () => {
    const server = servers["legacy-refusing"]!
    const result = await sendMail(port("smtp-in-refusing"), [])
    assert.notStrictEqual(result.code, 0)
    assert.include(result.trace, "< 530 5.7.0 Must issue a STARTTLS command first")
    await server.closed()
    assert.deepStrictEqual(server.mails, [])
    assert.isFalse(
      server.commands.some((c) => /^(MAIL|RCPT|DATA)/.test(c.line)),
      JSON.stringify(server.commands)
    )
    await proxy!.counted(
      Metrics.MetricName.connectionsRefusedTotal,
      { listener: "smtp-in-refusing", reason: "starttls_required" },
      1
    )
    await proxy!.counted(
      Metrics.MetricName.starttlsUpgradesTotal,
      { listener: "smtp-in-refusing", result: "refused" },
      1
    )
  })
})

describe("client side: Sleeve negotiates STARTTLS for a plaintext SMTP client", { timeout: 15_000 }, () => {
  it("a legacy curl without TLS sends a mail; the server receives it over TLS", async () => {
    const server = servers.remote!
    // The server really requires TLS: the same curl sent to it directly is refused.
    const direct = await sendMail(server.port, [])
    assert.notStrictEqual(direct.code, 0)
    assert.include(direct.trace, "< 530 5.7.0 Must issue a STARTTLS command first")
    assert.strictEqual(server.mails.length, 0)
    const before = server.commands.length

    const result = await sendMail(port("smtp-out"), [])
    assert.strictEqual(result.code, 0, result.trace)
    assert.include(result.trace, "< 220 remote.test ESMTP SmtpRecorder", "the greeting is replayed to the client")
    assert.notInclude(result.trace, "STARTTLS", "the legacy client sees no STARTTLS at all")
    await server.closed(2)

    assert.strictEqual(server.mails.length, 1)
    const mail = server.mails[0]!
    assert.isTrue(mail.secure, "the mail arrived over TLS")
    assert.strictEqual(mail.tlsVersion, "TLSv1.3")
    assert.strictEqual(mail.data, message)
    assert.deepStrictEqual(mail.to, ["bob@example.test"])
    assert.deepStrictEqual(
      server.commands.slice(before).map((c) => `${c.secure ? "tls" : "plain"}: ${c.line}`),
      [
        "plain: EHLO sleeve.test",
        "plain: STARTTLS",
        "tls: EHLO client.example",
        `tls: MAIL FROM:<alice@example.test> SIZE=${messageSize}`,
        "tls: RCPT TO:<bob@example.test>",
        "tls: DATA",
        "tls: QUIT"
      ]
    )
    assert.deepStrictEqual(server.injected, [])
    await proxy!.counted(
      Metrics.MetricName.starttlsUpgradesTotal,
      { listener: "smtp-out", protocol: "smtp", result: "ok" },
      1
    )
    await proxy!.counted(Metrics.MetricName.handshakesTotal, { listener: "smtp-out", role: "client", result: "ok" }, 1)
    // The legacy client is the one connecting: its upload is client → target here too.
    await proxy!.counted(Metrics.MetricName.connectionsActive, { listener: "smtp-out" }, 0)
    const moved = await bytes("smtp-out")
    assert.isAbove(moved.clientToTarget, messageSize)
    assert.isBelow(moved.targetToClient, 1000)
  })

  it("a server whose certificate does not verify gets nothing after STARTTLS; the client gets 421", async () => {
    const server = servers.rogue!
    const result = await sendMail(port("smtp-out-rogue"), [])
    assert.notStrictEqual(result.code, 0)
    assert.include(result.trace, "< 421 4.7.0 The TLS handshake with the server failed, closing connection")
    await server.closed()
    assert.deepStrictEqual(server.mails, [])
    assert.deepStrictEqual(
      server.commands.map((c) => `${c.secure ? "tls" : "plain"}: ${c.line}`),
      ["plain: EHLO sleeve.test", "plain: STARTTLS"]
    )
    assert.deepStrictEqual(server.injected, [], "no plaintext followed STARTTLS")
    await proxy!.counted(Metrics.MetricName.starttlsUpgradesTotal, { listener: "smtp-out-rogue", result: "failed" }, 1)
    await proxy!.counted(
      Metrics.MetricName.handshakeFailuresTotal,
      { listener: "smtp-out-rogue", role: "client", reason: "unknown_ca" },
      1
    )
  })

  it("a server that does not offer STARTTLS gets QUIT, never the client's mail; the client gets 421", async () => {
    const server = servers["no-starttls"]!
    const result = await sendMail(port("smtp-out-no-starttls"), [])
    assert.notStrictEqual(result.code, 0)
    assert.include(result.trace, "< 421 4.7.0 The server does not offer STARTTLS, closing connection")
    await server.closed()
    assert.deepStrictEqual(server.mails, [])
    assert.deepStrictEqual(
      server.commands.map((c) => c.line),
      ["EHLO sleeve.test", "QUIT"]
    )
    await proxy!.counted(
      Metrics.MetricName.starttlsUpgradesTotal,
      { listener: "smtp-out-no-starttls", result: "refused" },
      1
    )
  })
})
