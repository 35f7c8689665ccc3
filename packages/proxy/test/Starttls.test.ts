import { assert, describe, it } from "@effect/vitest"
import * as fc from "fast-check"
import * as Starttls from "../src/Starttls.ts"

// ---------------------------------------------------------------------------------------------
// Harness: a transcript is a list of chunks from the peer or the app; the result is the list of
// actions, normalized so that chunking does not matter (adjacent byte actions to the same leg are
// merged; Upgrade's own `discarded` is replaced by the negotiator's total).
// ---------------------------------------------------------------------------------------------

type Leg = "peer" | "app"
type Event = readonly [Leg, string | Uint8Array]
type Step =
  | readonly ["to-peer" | "to-app" | "post-to-peer" | "post-to-app", string]
  | readonly ["upgrade"]
  | readonly ["refuse", Starttls.RefuseReason]

const bytes = (s: string | Uint8Array): Uint8Array => (typeof s === "string" ? Buffer.from(s, "latin1") : s)
const text = (b: Uint8Array): string => Buffer.from(b).toString("latin1")
const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ""), "hex"))

const normalize = (actions: ReadonlyArray<Starttls.Action>, post = false): Array<Step> => {
  const steps: Array<Step> = []
  for (const a of actions) {
    if (a._tag === "Upgrade") steps.push(["upgrade"])
    else if (a._tag === "Refuse") steps.push(["refuse", a.reason])
    else {
      const tag = `${post ? "post-" : ""}${a._tag === "ToPeer" ? "to-peer" : "to-app"}` as const
      const last = steps[steps.length - 1]
      if (last !== undefined && last[0] === tag) steps[steps.length - 1] = [tag, last[1] + text(a.bytes)]
      else steps.push([tag, text(a.bytes)])
    }
  }
  return steps
}

/** Expected steps, written one per protocol message; merged like `normalize` does. */
const merged = (steps: ReadonlyArray<Step>): Array<Step> => {
  const out: Array<Step> = []
  for (const step of steps) {
    const last = out[out.length - 1]
    if (step.length === 2 && step[0] !== "refuse" && last !== undefined && last[0] === step[0]) {
      out[out.length - 1] = [step[0], (last[1] as string) + step[1]]
    } else out.push(step)
  }
  return out
}

interface Run {
  readonly steps: Array<Step>
  readonly stats: Starttls.Stats
  readonly negotiator: Starttls.Negotiator
  readonly upgrade: Starttls.Upgrade | undefined
}

/** Feed a transcript, each event cut at `cuts` (offsets), and finish the upgrade if one started. */
const play = (
  options: Starttls.NegotiatorOptions,
  events: ReadonlyArray<Event>,
  cuts?: ReadonlyArray<ReadonlyArray<number>>
): Run => {
  const negotiator = Starttls.makeNegotiator(options)
  const actions: Array<Starttls.Action> = [...negotiator.start()]
  events.forEach(([leg, data], i) => {
    const b = bytes(data)
    const points = [...new Set(cuts?.[i] ?? [])].filter((p) => p > 0 && p < b.length).sort((x, y) => x - y)
    let from = 0
    for (const p of [...points, b.length]) {
      const chunk = b.subarray(from, p)
      from = p
      actions.push(...(leg === "peer" ? negotiator.onPeer(chunk) : negotiator.onApp(chunk)))
    }
  })
  const upgrade = actions.find((a): a is Starttls.Upgrade => a._tag === "Upgrade")
  const steps = normalize(actions)
  if (negotiator.phase === "upgrading") steps.push(...normalize(negotiator.onUpgraded().actions, true))
  return { steps, stats: negotiator.stats, negotiator, upgrade }
}

/** The same transcript cut at random points gives the same normalized result. */
const chunkingInvariant = (options: Starttls.NegotiatorOptions, events: ReadonlyArray<Event>) => {
  const whole = play(options, events)
  fc.assert(
    fc.property(
      fc.tuple(...events.map(([, d]) => fc.array(fc.nat({ max: bytes(d).length }), { maxLength: 8 }))),
      (cuts) => {
        const split = play(options, events, cuts)
        assert.deepStrictEqual(split.steps, whole.steps)
        assert.deepStrictEqual(split.stats, whole.stats)
      }
    ),
    { numRuns: 150 }
  )
  // Byte by byte, the worst case for framing.
  const dribble = play(
    options,
    events,
    events.map(([, d]) => Array.from({ length: bytes(d).length }, (_, i) => i))
  )
  assert.deepStrictEqual(dribble.steps, whole.steps)
  return whole
}

const smtpServer: Starttls.NegotiatorOptions = { protocol: "smtp", side: "server" }
const smtpClient: Starttls.NegotiatorOptions = { protocol: "smtp", side: "client", clientName: "sleeve.test" }
const imapServer: Starttls.NegotiatorOptions = { protocol: "imap", side: "server" }
const imapClient: Starttls.NegotiatorOptions = { protocol: "imap", side: "client" }
const pop3Server: Starttls.NegotiatorOptions = { protocol: "pop3", side: "server" }
const pop3Client: Starttls.NegotiatorOptions = { protocol: "pop3", side: "client" }
const ldapServer: Starttls.NegotiatorOptions = { protocol: "ldap", side: "server" }
const ldapClient: Starttls.NegotiatorOptions = { protocol: "ldap", side: "client" }
const pgServer: Starttls.NegotiatorOptions = { protocol: "postgres", side: "server" }
const pgClient: Starttls.NegotiatorOptions = { protocol: "postgres", side: "client" }
const line = { command: "STARTTLS", reply: "OK STARTTLS" }
const lineServer: Starttls.NegotiatorOptions = { protocol: "line", side: "server", line }
const lineClient: Starttls.NegotiatorOptions = { protocol: "line", side: "client", line }

// ---------------------------------------------------------------------------------------------
// SMTP
// ---------------------------------------------------------------------------------------------

describe("SMTP server side", () => {
  const ehloReply = "250-app.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"

  it("relays the app, adds STARTTLS to the EHLO reply, answers STARTTLS itself", () => {
    const run = chunkingInvariant(smtpServer, [
      ["app", "220 app.test ESMTP legacy\r\n"],
      ["peer", "EHLO client.test\r\n"],
      ["app", ehloReply],
      ["peer", "STARTTLS\r\n"]
    ])
    assert.deepStrictEqual(
      run.steps,
      merged([
        ["to-peer", "220 app.test ESMTP legacy\r\n"],
        ["to-app", "EHLO client.test\r\n"],
        ["to-peer", "250-app.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 STARTTLS\r\n"],
        ["to-peer", "220 2.0.0 Ready to start TLS\r\n"],
        ["upgrade"]
      ])
    )
    assert.strictEqual(run.upgrade?.discarded, 0)
  })

  it("keeps one STARTTLS when the app advertises it, and handles a one-line EHLO reply and bare LF", () => {
    const run = play(smtpServer, [
      ["app", "220 app\n"],
      ["peer", "EHLO a\n"],
      ["app", "250-app\n250-STARTTLS\n250 SIZE 10\n"],
      ["peer", "EHLO b\n"],
      ["app", "250 app\n"]
    ])
    assert.deepStrictEqual(
      run.steps,
      merged([
        ["to-peer", "220 app\n"],
        ["to-app", "EHLO a\n"],
        ["to-peer", "250-app\r\n250-SIZE 10\r\n250 STARTTLS\r\n"],
        ["to-app", "EHLO b\n"],
        ["to-peer", "250-app\r\n250 STARTTLS\r\n"]
      ])
    )
  })

  it("discards and counts commands pipelined after STARTTLS (command injection)", () => {
    const run = chunkingInvariant(smtpServer, [
      ["app", "220 app.test ESMTP\r\n"],
      ["peer", "EHLO x\r\n"],
      ["app", ehloReply],
      ["peer", "STARTTLS\r\nRSET\r\nMAIL FROM:<evil@example.com>\r\n"],
      ["peer", "more injected bytes"]
    ])
    assert.strictEqual(run.upgrade?.discarded, "RSET\r\nMAIL FROM:<evil@example.com>\r\n".length)
    assert.strictEqual(run.stats.discardedBytes, "RSET\r\nMAIL FROM:<evil@example.com>\r\n".length + 19)
    assert.isFalse(run.steps.some(([tag, t]) => tag === "to-app" && /RSET|MAIL|more/.test(t ?? "")))
  })

  it("refuses application commands before TLS with 530 and never relays them (requireTls default)", () => {
    const run = chunkingInvariant(smtpServer, [
      ["app", "220 app\r\n"],
      ["peer", "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nAUTH PLAIN AGJvYgBzZWNyZXQ=\r\nNOOP\r\n"],
      ["app", ehloReply],
      ["app", "250 2.0.0 OK\r\n"]
    ])
    assert.deepStrictEqual(
      run.steps,
      merged([
        ["to-peer", "220 app\r\n"],
        ["to-app", "EHLO x\r\n"],
        [
          "to-peer",
          "250-app.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 STARTTLS\r\n" +
            "530 5.7.0 Must issue a STARTTLS command first\r\n".repeat(3)
        ],
        ["to-app", "NOOP\r\n"],
        ["to-peer", "250 2.0.0 OK\r\n"]
      ])
    )
    assert.strictEqual(run.stats.refusedCommands, 3)
  })

  it("answers in order: a pipelined STARTTLS waits for the app's pending reply", () => {
    const run = play(smtpServer, [
      ["app", "220 app\r\n"],
      ["peer", "NOOP\r\nSTARTTLS\r\n"],
      ["app", "250 OK\r\n"]
    ])
    assert.deepStrictEqual(
      run.steps,
      merged([
        ["to-peer", "220 app\r\n"],
        ["to-app", "NOOP\r\n"],
        ["to-peer", "250 OK\r\n220 2.0.0 Ready to start TLS\r\n"],
        ["upgrade"]
      ])
    )
  })

  it("with requireTls false relays a whole plaintext transaction including DATA, then upgrades", () => {
    const run = chunkingInvariant({ ...smtpServer, requireTls: false }, [
      ["app", "220 app\r\n"],
      ["peer", "MAIL FROM:<a@b>\r\n"],
      ["app", "250 OK\r\n"],
      ["peer", "DATA\r\n"],
      ["app", "354 go\r\n"],
      ["peer", "Subject: x\r\n\r\nSTARTTLS\r\n.\r\n"],
      ["app", "250 queued\r\n"],
      ["peer", "STARTTLS\r\n"]
    ])
    assert.deepStrictEqual(
      run.steps,
      merged([
        ["to-peer", "220 app\r\n"],
        ["to-app", "MAIL FROM:<a@b>\r\n"],
        ["to-peer", "250 OK\r\n"],
        ["to-app", "DATA\r\n"],
        ["to-peer", "354 go\r\n"],
        ["to-app", "Subject: x\r\n\r\nSTARTTLS\r\n.\r\n"],
        ["to-peer", "250 queued\r\n220 2.0.0 Ready to start TLS\r\n"],
        ["upgrade"]
      ])
    )
  })

  it("rejects STARTTLS with parameters", () => {
    const run = play(smtpServer, [
      ["app", "220 app\r\n"],
      ["peer", "STARTTLS now\r\n"]
    ])
    assert.deepStrictEqual(run.steps, [["to-peer", "220 app\r\n501 5.5.4 Syntax error (no parameters allowed)\r\n"]])
    assert.strictEqual(run.negotiator.phase, "negotiating")
  })

  it("closes with 421 and cleartext_limit past maxCleartextBytes", () => {
    const run = play({ ...smtpServer, maxCleartextBytes: 200 }, [
      ["app", "220 app\r\n"],
      ["peer", `EHLO ${"x".repeat(250)}`]
    ])
    assert.deepStrictEqual(run.steps, [
      ["to-peer", "220 app\r\n421 4.7.0 Too much cleartext before TLS, closing connection\r\n"],
      ["refuse", "cleartext_limit"]
    ])
    assert.deepStrictEqual(run.negotiator.onPeer(bytes("STARTTLS\r\n")), [])
  })

  it("the cap also bounds Sleeve's own refusals (no amplification)", () => {
    const run = play({ ...smtpServer, maxCleartextBytes: 1000 }, [
      ["app", "220 app\r\n"],
      ["peer", "X\r\n".repeat(200)]
    ])
    assert.deepStrictEqual(run.steps[run.steps.length - 1], ["refuse", "cleartext_limit"])
    assert.isBelow(run.stats.refusedCommands, 30)
  })

  it("after TLS, the app→peer filter strips STARTTLS from EHLO replies and nothing else", () => {
    const n = Starttls.makeNegotiator(smtpServer)
    n.onApp(bytes("220 app\r\n"))
    const actions = n.onPeer(bytes("STARTTLS\r\n"))
    assert.strictEqual(actions[actions.length - 1]?._tag, "Upgrade")
    const { appToPeer } = n.onUpgraded()
    assert.isDefined(appToPeer)
    const f = appToPeer!
    assert.strictEqual(text(f.push(bytes("250-app\r\n250-STARTTLS\r\n250 SIZE 10\r\n"))), "250-app\r\n250 SIZE 10\r\n")
    assert.strictEqual(
      text(f.push(bytes("250-app\r\n250-PIPELINING\r\n250 starttls\r\n"))),
      "250-app\r\n250 PIPELINING\r\n"
    )
    assert.strictEqual(text(f.push(bytes("250-app\r\n250 8BITMIME\r\n"))), "250-app\r\n250 8BITMIME\r\n")
    assert.strictEqual(text(f.push(bytes("250 STARTTLS\r\n"))), "250 STARTTLS\r\n") // not an EHLO reply
    assert.strictEqual(text(f.push(bytes("354 Start mail\r\n250-par"))), "354 Start mail\r\n")
    assert.strictEqual(text(f.push(bytes("tial\r\n250 STARTTLS\r\n"))), "250 partial\r\n")
    assert.strictEqual(text(f.push(bytes("221 bye"))), "")
    assert.strictEqual(text(f.flush()), "221 bye")
  })
})

describe("SMTP client side", () => {
  const greeting = "220-mx.remote.test ESMTP\r\n220 welcome\r\n"

  it("greeting, EHLO, STARTTLS, upgrade, then replays the greeting to the app byte for byte", () => {
    const run = chunkingInvariant(smtpClient, [
      ["peer", greeting],
      ["peer", "250-mx.remote.test\r\n250-SIZE 1000\r\n250 STARTTLS\r\n"],
      ["app", "EHLO legacy\r\n"],
      ["peer", "220 2.0.0 Ready\r\n"]
    ])
    assert.deepStrictEqual(
      run.steps,
      merged([
        ["to-peer", "EHLO sleeve.test\r\n"],
        ["to-peer", "STARTTLS\r\n"],
        ["upgrade"],
        ["post-to-app", greeting],
        ["post-to-peer", "EHLO legacy\r\n"]
      ])
    )
  })

  it("fails closed when STARTTLS is not advertised", () => {
    const run = chunkingInvariant(smtpClient, [
      ["peer", "220 mx ESMTP\r\n"],
      ["peer", "250-mx\r\n250-STARTTLSX\r\n250 SIZE\r\n"]
    ])
    assert.deepStrictEqual(
      run.steps,
      merged([
        ["to-peer", "EHLO sleeve.test\r\n"],
        ["to-peer", "QUIT\r\n"],
        ["to-app", "421 4.7.0 The server does not offer STARTTLS, closing connection\r\n"],
        ["refuse", "not_offered"]
      ])
    )
  })

  it("fails closed when the server refuses STARTTLS, and on a non-220 greeting", () => {
    const refused = play(smtpClient, [
      ["peer", "220 mx\r\n"],
      ["peer", "250-mx\r\n250 STARTTLS\r\n"],
      ["peer", "454 4.7.0 TLS not available\r\n"]
    ])
    assert.deepStrictEqual(refused.steps[refused.steps.length - 1], ["refuse", "not_offered"])
    const busy = play(smtpClient, [["peer", "554 go away\r\n"]])
    assert.deepStrictEqual(busy.steps[busy.steps.length - 1], ["refuse", "protocol_error"])
  })

  it("discards what the server sends after its 220 go-ahead", () => {
    const run = play(smtpClient, [
      ["peer", "220 mx\r\n"],
      ["peer", "250-mx\r\n250 STARTTLS\r\n"],
      ["peer", "220 Ready\r\n250-INJECTED\r\n"]
    ])
    assert.strictEqual(run.upgrade?.discarded, 14)
    assert.deepStrictEqual(run.steps.slice(-2), [["upgrade"], ["post-to-app", "220 mx\r\n"]])
  })
})

// ---------------------------------------------------------------------------------------------
// IMAP
// ---------------------------------------------------------------------------------------------

describe("IMAP server side", () => {
  it("advertises STARTTLS (and LOGINDISABLED) in the greeting and CAPABILITY, answers STARTTLS", () => {
    const run = chunkingInvariant(imapServer, [
      ["app", "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] legacy ready\r\n"],
      ["peer", "a1 CAPABILITY\r\n"],
      ["app", "* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\na1 OK done\r\n"],
      ["peer", "a2 STARTTLS\r\n"]
    ])
    assert.deepStrictEqual(
      run.steps,
      merged([
        ["to-peer", "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN STARTTLS LOGINDISABLED] legacy ready\r\n"],
        ["to-app", "a1 CAPABILITY\r\n"],
        ["to-peer", "* CAPABILITY IMAP4rev1 AUTH=PLAIN STARTTLS LOGINDISABLED\r\na1 OK done\r\n"],
        ["to-peer", "a2 OK Begin TLS negotiation now\r\n"],
        ["upgrade"]
      ])
    )
  })

  it("refuses LOGIN with NO [PRIVACYREQUIRED] and other commands with BAD; discards injected commands", () => {
    const run = chunkingInvariant(imapServer, [
      ["app", "* OK legacy ready\r\n"],
      ["peer", "a1 LOGIN bob secret\r\na2 SELECT INBOX\r\na3 NOOP\r\n"],
      ["app", "a3 OK\r\n"],
      ["peer", "a4 STARTTLS\r\na5 LOGIN bob secret\r\n"]
    ])
    assert.deepStrictEqual(
      run.steps,
      merged([
        ["to-peer", "* OK legacy ready\r\n"],
        [
          "to-peer",
          "a1 NO [PRIVACYREQUIRED] LOGIN is not permitted before STARTTLS\r\na2 BAD Must issue a STARTTLS command first\r\n"
        ],
        ["to-app", "a3 NOOP\r\n"],
        ["to-peer", "a3 OK\r\na4 OK Begin TLS negotiation now\r\n"],
        ["upgrade"]
      ])
    )
    assert.strictEqual(run.stats.discardedBytes, "a5 LOGIN bob secret\r\n".length)
    assert.strictEqual(run.stats.refusedCommands, 2)
  })

  it("a refused command with a synchronizing literal is answered at once; a LITERAL+ one is consumed first", () => {
    const run = chunkingInvariant(imapServer, [
      ["app", "* OK ready\r\n"],
      ["peer", "a1 LOGIN {3}\r\n"],
      ["peer", "a2 LOGIN {3+}\r\nbob {6+}\r\nsecret\r\na3 STARTTLS\r\n"]
    ])
    assert.deepStrictEqual(
      run.steps,
      merged([
        ["to-peer", "* OK ready\r\n"],
        [
          "to-peer",
          "a1 NO [PRIVACYREQUIRED] LOGIN is not permitted before STARTTLS\r\n" +
            "a2 NO [PRIVACYREQUIRED] LOGIN is not permitted before STARTTLS\r\n" +
            "a3 OK Begin TLS negotiation now\r\n"
        ],
        ["upgrade"]
      ])
    )
  })

  it("with requireTls false relays literals and continuations; STARTTLS after LOGIN is BAD", () => {
    const run = chunkingInvariant({ ...imapServer, requireTls: false }, [
      ["app", "* OK ready\r\n"],
      ["peer", "a1 LOGIN {3}\r\n"],
      ["app", "+ go\r\n"],
      ["peer", "bob {6}\r\n"],
      ["app", "+ go\r\n"],
      ["peer", "secret\r\n"],
      ["app", "a1 OK logged in\r\n"],
      ["peer", "a2 STARTTLS\r\n"]
    ])
    assert.deepStrictEqual(
      run.steps,
      merged([
        ["to-peer", "* OK ready\r\n"],
        ["to-app", "a1 LOGIN {3}\r\n"],
        ["to-peer", "+ go\r\n"],
        ["to-app", "bob {6}\r\n"],
        ["to-peer", "+ go\r\n"],
        ["to-app", "secret\r\n"],
        ["to-peer", "a1 OK logged in\r\na2 BAD STARTTLS is only valid before authentication\r\n"]
      ])
    )
  })

  it("a SASL continuation lets exactly one raw line through to the app", () => {
    const run = chunkingInvariant({ ...imapServer, requireTls: false }, [
      ["app", "* OK ready\r\n"],
      ["peer", "a1 AUTHENTICATE PLAIN\r\n"],
      ["app", "+ \r\n"],
      ["peer", "AGJvYgBzZWNyZXQ=\r\na2 NOOP\r\n"],
      ["app", "a1 NO bad\r\n"],
      ["app", "a2 OK\r\n"]
    ])
    assert.deepStrictEqual(
      run.steps,
      merged([
        ["to-peer", "* OK ready\r\n"],
        ["to-app", "a1 AUTHENTICATE PLAIN\r\n"],
        ["to-peer", "+ \r\n"],
        ["to-app", "AGJvYgBzZWNyZXQ=\r\n"],
        ["to-peer", "a1 NO bad\r\n"],
        ["to-app", "a2 NOOP\r\n"],
        ["to-peer", "a2 OK\r\n"]
      ])
    )
  })
})

describe("IMAP client side", () => {
  it("greeting, STARTTLS, upgrade; replays the greeting without its stale capabilities", () => {
    const run = chunkingInvariant(imapClient, [
      ["peer", "* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] remote ready\r\n"],
      ["peer", "* CAPABILITY IMAP4rev1\r\nA0 OK Begin TLS now\r\n"]
    ])
    assert.deepStrictEqual(
      run.steps,
      merged([["to-peer", "A0 STARTTLS\r\n"], ["upgrade"], ["post-to-app", "* OK remote ready\r\n"]])
    )
  })

  it("fails closed when STARTTLS is missing from the capabilities or refused", () => {
    const missing = play(imapClient, [["peer", "* OK [CAPABILITY IMAP4rev1] hi\r\n"]])
    assert.deepStrictEqual(
      missing.steps,
      merged([
        ["to-peer", "A0 LOGOUT\r\n"],
        ["to-app", "* BYE The server does not offer STARTTLS\r\n"],
        ["refuse", "not_offered"]
      ])
    )
    const refused = play(imapClient, [
      ["peer", "* OK hi\r\n"],
      ["peer", "A0 BAD unknown command\r\n"]
    ])
    assert.deepStrictEqual(refused.steps[refused.steps.length - 1], ["refuse", "not_offered"])
    const preauth = play(imapClient, [["peer", "* PREAUTH welcome\r\n"]])
    assert.deepStrictEqual(preauth.steps[preauth.steps.length - 1], ["refuse", "not_offered"])
  })
})

// ---------------------------------------------------------------------------------------------
// POP3
// ---------------------------------------------------------------------------------------------

describe("POP3 server side", () => {
  it("adds STLS to the CAPA list, refuses USER with -ERR, answers STLS", () => {
    const run = chunkingInvariant(pop3Server, [
      ["app", "+OK legacy POP3 <1.2@app>\r\n"],
      ["peer", "CAPA\r\n"],
      ["app", "+OK capabilities\r\nUSER\r\nUIDL\r\n.\r\n"],
      ["peer", "USER bob\r\nSTLS\r\nPASS secret\r\n"]
    ])
    assert.deepStrictEqual(
      run.steps,
      merged([
        ["to-peer", "+OK legacy POP3 <1.2@app>\r\n"],
        ["to-app", "CAPA\r\n"],
        ["to-peer", "+OK capabilities\r\nUSER\r\nUIDL\r\nSTLS\r\n.\r\n"],
        ["to-peer", "-ERR Must issue a STLS command first\r\n+OK Begin TLS negotiation\r\n"],
        ["upgrade"]
      ])
    )
    assert.strictEqual(run.stats.discardedBytes, "PASS secret\r\n".length)
  })

  it("with requireTls false relays multi-line answers (dot-stuffed) and refuses STLS after login", () => {
    const run = chunkingInvariant({ ...pop3Server, requireTls: false }, [
      ["app", "+OK hi\r\n"],
      ["peer", "USER bob\r\nPASS secret\r\n"],
      ["app", "+OK\r\n"],
      ["app", "+OK maildrop ready\r\n"],
      ["peer", "RETR 1\r\n"],
      ["app", "+OK 9 octets\r\n..STLS\r\n.\r\n"],
      ["peer", "STLS\r\n"]
    ])
    assert.deepStrictEqual(
      run.steps,
      merged([
        ["to-peer", "+OK hi\r\n"],
        ["to-app", "USER bob\r\n"],
        ["to-peer", "+OK\r\n"],
        ["to-app", "PASS secret\r\n"],
        ["to-peer", "+OK maildrop ready\r\n"],
        ["to-app", "RETR 1\r\n"],
        ["to-peer", "+OK 9 octets\r\n..STLS\r\n.\r\n-ERR STLS is only valid in the AUTHORIZATION state\r\n"]
      ])
    )
  })
})

describe("POP3 client side", () => {
  it("greeting, STLS, upgrade; replays the greeting byte for byte (APOP timestamp intact)", () => {
    const run = chunkingInvariant(pop3Client, [
      ["peer", "+OK remote ready <1896.697170952@dbc.mtview.ca.us>\r\n"],
      ["peer", "+OK begin TLS\r\n"]
    ])
    assert.deepStrictEqual(
      run.steps,
      merged([
        ["to-peer", "STLS\r\n"],
        ["upgrade"],
        ["post-to-app", "+OK remote ready <1896.697170952@dbc.mtview.ca.us>\r\n"]
      ])
    )
  })

  it("fails closed on -ERR", () => {
    const run = play(pop3Client, [
      ["peer", "+OK hi\r\n"],
      ["peer", "-ERR unknown command\r\n"]
    ])
    assert.deepStrictEqual(
      run.steps,
      merged([
        ["to-peer", "STLS\r\n"],
        ["to-peer", "QUIT\r\n"],
        ["to-app", "-ERR The server does not offer STARTTLS\r\n"],
        ["refuse", "not_offered"]
      ])
    )
  })
})

// ---------------------------------------------------------------------------------------------
// LDAP
// ---------------------------------------------------------------------------------------------

const oid = Buffer.from(Starttls.ldapStartTlsOid).toString("hex")
/** StartTLS ExtendedRequest, messageID `id` (one byte). */
const startTlsRequest = (id: number) => hex(`301d 0201${id.toString(16).padStart(2, "0")} 7718 8016 ${oid}`)
/** StartTLS ExtendedResponse, messageID `id`, resultCode `code`, empty diagnostic. */
const startTlsResponse = (id: number, code: number) =>
  hex(
    `3024 0201${id.toString(16).padStart(2, "0")} 781f 0a01${code.toString(16).padStart(2, "0")} 0400 0400 8a16 ${oid}`
  )
/** Simple BindRequest v3 "cn=x" / "pw". */
const bindRequest = (id: number) =>
  hex(`3012 0201${id.toString(16).padStart(2, "0")} 600d 020103 0404636e3d78 80027077`)
const bindResponse = (id: number, code: number) =>
  hex(`300c 0201${id.toString(16).padStart(2, "0")} 6107 0a01${code.toString(16).padStart(2, "0")} 0400 0400`)

describe("LDAP server side", () => {
  it("answers the StartTLS extended request with success, echoing the messageID", () => {
    const run = chunkingInvariant(ldapServer, [["peer", startTlsRequest(7)]])
    assert.deepStrictEqual(run.steps, merged([["to-peer", text(startTlsResponse(7, 0))], ["upgrade"]]))
  })

  it("answers any other operation before TLS with confidentialityRequired (13), never relaying it", () => {
    const run = chunkingInvariant(ldapServer, [["peer", bindRequest(1)]])
    assert.deepStrictEqual(
      run.steps,
      merged([
        [
          "to-peer",
          text(
            hex(
              `3036 020101 6131 0a010d 0400 042a ${Buffer.from("StartTLS is required before this operation").toString("hex")}`
            )
          )
        ]
      ])
    )
  })

  it("reads long-form BER lengths (a search request over 127 bytes) and answers with SearchResultDone", () => {
    const filter = Buffer.from("x".repeat(200)).toString("hex")
    // SearchRequest [APPLICATION 3]: baseObject "" and an equality-less present filter padded with a long attribute.
    const op = `04 00 0a0100 0a0100 020100 020100 010100 87 81c8 ${filter} 3000`
    const opLen = hex(op).length
    const msg = hex(`30 81${(opLen + 6).toString(16)} 020102 63 81${opLen.toString(16)} ${op}`)
    assert.isAbove(msg.length, 128)
    const run = chunkingInvariant(ldapServer, [["peer", msg]])
    const out = bytes(run.steps[0]?.[1] as string)
    assert.deepStrictEqual([...out.subarray(0, 7)], [0x30, 0x36, 0x02, 0x01, 0x02, 0x65, 0x31])
  })

  it("discards bytes pipelined after StartTLS", () => {
    const run = chunkingInvariant(ldapServer, [["peer", Buffer.concat([startTlsRequest(1), bindRequest(2)])]])
    assert.strictEqual(run.stats.discardedBytes, bindRequest(2).length)
  })

  it("with requireTls false relays operations, and refuses StartTLS while one is outstanding", () => {
    const run = chunkingInvariant({ ...ldapServer, requireTls: false }, [
      ["peer", bindRequest(1)],
      ["peer", startTlsRequest(2)],
      ["app", bindResponse(1, 0)],
      ["peer", startTlsRequest(3)]
    ])
    const opsError = hex(
      `303e 020102 7839 0a0101 0400 041a ${Buffer.from("operations are outstanding").toString("hex")} 8a16 ${oid}`
    )
    assert.deepStrictEqual(
      run.steps,
      merged([
        ["to-app", text(bindRequest(1))],
        ["to-peer", text(opsError) + text(bindResponse(1, 0)) + text(startTlsResponse(3, 0))],
        ["upgrade"]
      ])
    )
  })

  it("refuses indefinite lengths and garbage with a Notice of Disconnection", () => {
    const run = play(ldapServer, [["peer", hex("3080 020101 4200 0000")]])
    const last = run.steps[run.steps.length - 1]
    assert.deepStrictEqual(last, ["refuse", "protocol_error"])
    const notice = bytes(run.steps[0]?.[1] as string)
    assert.isTrue(text(notice).includes(Starttls.ldapNoticeOfDisconnectionOid))
  })

  it("a declared length over the cap is cleartext_limit before the bytes even arrive", () => {
    const run = play({ ...ldapServer, maxCleartextBytes: 1000 }, [["peer", hex("30 83 100000 020101")]])
    assert.deepStrictEqual(run.steps[run.steps.length - 1], ["refuse", "cleartext_limit"])
  })
})

describe("LDAP client side", () => {
  it("sends StartTLS, upgrades on success, then forwards the app's held request", () => {
    const run = chunkingInvariant(ldapClient, [
      ["app", bindRequest(1)],
      ["peer", startTlsResponse(1, 0)]
    ])
    assert.deepStrictEqual(
      run.steps,
      merged([["to-peer", text(startTlsRequest(1))], ["upgrade"], ["post-to-peer", text(bindRequest(1))]])
    )
  })

  it("fails closed when the server refuses StartTLS, telling the app with a Notice of Disconnection", () => {
    const run = play(ldapClient, [["peer", startTlsResponse(1, 2)]])
    assert.strictEqual(run.steps[1]?.[0], "to-app")
    assert.isTrue(String(run.steps[1]?.[1]).includes(Starttls.ldapNoticeOfDisconnectionOid))
    assert.deepStrictEqual(run.steps[2], ["refuse", "not_offered"])
  })
})

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

const sslRequest = hex("00000008 04d2162f")
const gssEncRequest = hex("00000008 04d21630")
const startupMessage = (() => {
  const body = Buffer.concat([Buffer.from("00030000", "hex"), Buffer.from("user\0bob\0database\0db\0\0")])
  const len = Buffer.alloc(4)
  len.writeUInt32BE(body.length + 4)
  return Uint8Array.from(Buffer.concat([len, body]))
})()

describe("PostgreSQL server side", () => {
  it("answers S to SSLRequest, and N to GSSENCRequest before it", () => {
    const run = chunkingInvariant(pgServer, [
      ["peer", gssEncRequest],
      ["peer", sslRequest]
    ])
    assert.deepStrictEqual(run.steps, merged([["to-peer", "NS"], ["upgrade"]]))
  })

  it("discards a StartupMessage pipelined in cleartext after the SSLRequest (CVE-2021-23214 class)", () => {
    const run = chunkingInvariant(pgServer, [["peer", Buffer.concat([sslRequest, startupMessage])]])
    assert.deepStrictEqual(run.steps, merged([["to-peer", "S"], ["upgrade"]]))
    assert.strictEqual(run.stats.discardedBytes, startupMessage.length)
  })

  it("answers a StartupMessage without SSL with FATAL 28000 and closes", () => {
    const run = chunkingInvariant(pgServer, [["peer", startupMessage]])
    assert.strictEqual(run.steps.length, 2)
    const error = Buffer.from(bytes(run.steps[0]?.[1] as string))
    assert.strictEqual(error[0], 0x45)
    assert.strictEqual(error.readUInt32BE(1), error.length - 1)
    const fields = error.subarray(5).toString("latin1").split("\0")
    assert.includeMembers(fields, ["SFATAL", "VFATAL", "C28000"])
    assert.match(fields.find((f) => f.startsWith("M")) ?? "", /SSL required/)
    assert.deepStrictEqual(run.steps[1], ["refuse", "starttls_required"])
  })

  it("with requireTls false relays a plaintext session", () => {
    const run = chunkingInvariant({ ...pgServer, requireTls: false }, [
      ["peer", startupMessage],
      ["app", "R\0\0\0\x08\0\0\0\0"],
      ["peer", "Q\0\0\0\x0dselect 1\0"]
    ])
    assert.deepStrictEqual(
      run.steps,
      merged([
        ["to-app", text(startupMessage)],
        ["to-peer", "R\0\0\0\x08\0\0\0\0"],
        ["to-app", "Q\0\0\0\x0dselect 1\0"]
      ])
    )
  })

  it("rejects invalid startup lengths and direct TLS", () => {
    const bad = play(pgServer, [["peer", hex("00000004 00000000")]])
    assert.deepStrictEqual(bad.steps[bad.steps.length - 1], ["refuse", "protocol_error"])
    const direct = play(pgServer, [["peer", hex("16030100c4010000c00303")]])
    assert.deepStrictEqual(direct.steps[direct.steps.length - 1], ["refuse", "protocol_error"])
  })
})

describe("PostgreSQL client side", () => {
  it("sends SSLRequest, answers the app's own SSLRequest N locally, holds its StartupMessage", () => {
    const run = chunkingInvariant(pgClient, [
      ["app", sslRequest],
      ["app", startupMessage],
      ["peer", "S"]
    ])
    assert.deepStrictEqual(
      run.steps,
      merged([["to-peer", text(sslRequest)], ["to-app", "N"], ["upgrade"], ["post-to-peer", text(startupMessage)]])
    )
  })

  it("fails closed on N, telling the app with FATAL 08001", () => {
    const run = play(pgClient, [
      ["app", startupMessage],
      ["peer", "N"]
    ])
    assert.strictEqual(run.steps[1]?.[0], "to-app")
    assert.match(run.steps[1]?.[1] as string, /C08001/)
    assert.deepStrictEqual(run.steps[2], ["refuse", "not_offered"])
  })

  it("discards bytes the server sends after S (CVE-2021-23222 class)", () => {
    const run = play(pgClient, [["peer", "SE\0\0\0\x05X"]])
    assert.strictEqual(run.upgrade?.discarded, 6)
  })
})

// ---------------------------------------------------------------------------------------------
// Line trigger
// ---------------------------------------------------------------------------------------------

describe("line trigger", () => {
  it("server side: relays the app's banner, answers the command line with the reply, discards what follows", () => {
    const run = chunkingInvariant(lineServer, [
      ["app", "HELLO from app\r\n"],
      ["peer", "STARTTLS\r\nGET secret\r\n"]
    ])
    assert.deepStrictEqual(
      run.steps,
      merged([["to-peer", "HELLO from app\r\n"], ["to-peer", "OK STARTTLS\r\n"], ["upgrade"]])
    )
    assert.strictEqual(run.stats.discardedBytes, 12)
  })

  it("server side: mirrors a bare-LF command; requireTls closes on any other line", () => {
    const lf = play(lineServer, [["peer", "STARTTLS\n"]])
    assert.deepStrictEqual(lf.steps, merged([["to-peer", "OK STARTTLS\n"], ["upgrade"]]))
    const other = play(lineServer, [["peer", "GET secret\r\n"]])
    assert.deepStrictEqual(other.steps, merged([["refuse", "starttls_required"]]))
    const relaxed = play({ ...lineServer, requireTls: false }, [["peer", "GET x\r\nSTARTTLS\r\n"]])
    assert.deepStrictEqual(
      relaxed.steps,
      merged([["to-app", "GET x\r\n"], ["to-peer", "OK STARTTLS\r\n"], ["upgrade"]])
    )
  })

  it("client side: sends the command, upgrades on the exact reply, fails closed otherwise", () => {
    const ok = chunkingInvariant(lineClient, [["peer", "OK STARTTLS\r\n"]])
    assert.deepStrictEqual(ok.steps, merged([["to-peer", "STARTTLS\r\n"], ["upgrade"]]))
    const no = play(lineClient, [["peer", "ERR unknown\r\n"]])
    assert.deepStrictEqual(
      no.steps,
      merged([
        ["to-peer", "STARTTLS\r\n"],
        ["refuse", "not_offered"]
      ])
    )
  })
})

// ---------------------------------------------------------------------------------------------
// Lifecycle and options
// ---------------------------------------------------------------------------------------------

describe("negotiator lifecycle", () => {
  it("counts peer bytes during the handshake as discarded and holds app bytes for after it", () => {
    const n = Starttls.makeNegotiator(lineServer)
    n.onPeer(bytes("STARTTLS\r\n"))
    assert.strictEqual(n.phase, "upgrading")
    assert.deepStrictEqual(n.onPeer(bytes("injected")), [])
    assert.deepStrictEqual(n.onApp(bytes("late banner")), [])
    assert.strictEqual(n.stats.discardedBytes, 8)
    assert.deepStrictEqual(normalize(n.onUpgraded().actions), [["to-peer", "late banner"]])
    assert.strictEqual(n.phase, "upgraded")
    assert.throws(() => n.onPeer(bytes("x")))
  })

  it("a failed handshake ends the negotiation; the client side tells the app", () => {
    const n = Starttls.makeNegotiator(smtpClient)
    n.onPeer(bytes("220 mx\r\n250-mx\r\n250 STARTTLS\r\n220 go\r\n"))
    assert.strictEqual(n.phase, "upgrading")
    assert.deepStrictEqual(normalize(n.onUpgradeFailed()), [
      ["to-app", "421 4.7.0 The TLS handshake with the server failed, closing connection\r\n"]
    ])
    assert.strictEqual(n.phase, "refused")
    assert.throws(() => n.onUpgraded())
  })

  it("rejects invalid options with a clear error", () => {
    const err = (o: Starttls.NegotiatorOptions) => {
      try {
        Starttls.makeNegotiator(o)
      } catch (e) {
        assert.instanceOf(e, Starttls.NegotiatorOptionsError)
        return (e as Starttls.NegotiatorOptionsError).message
      }
      assert.fail("expected NegotiatorOptionsError")
    }
    assert.match(err({ protocol: "line", side: "server" }), /line\.command/)
    assert.match(err({ protocol: "line", side: "server", line: { command: "A\r\nB", reply: "x" } }), /without CR/)
    assert.match(err({ protocol: "smtp", side: "client", clientName: "bad name" }), /clientName/)
    assert.match(err({ protocol: "smtp", side: "server", maxCleartextBytes: 0 }), /maxCleartextBytes/)
    assert.match(err({ protocol: "ftp" as Starttls.Protocol, side: "server" }), /unknown STARTTLS protocol/)
  })
})
