/**
 * `sleeve explain` judges a peer certificate offline as a listener would, against certificates
 * built in the test: allow (exit 0) and deny (exit 1) with every failed check listed — chain to
 * caFile (with and without the intermediates the peer sends), validity, verifyDepth, dual use /
 * role usage, authorizedPeers with the nearest authorized DN and an RDN-by-RDN difference, the
 * server name of a client configuration, a configuration used in both roles (`type: mirror`),
 * disabled and `verifyPeer: none` configurations — and
 * names the metric reason. The chain verdict is checked against `openssl verify` (same trust
 * file, same intermediates, the purpose OpenSSL applies during the handshake): the first
 * verification error must be the one openssl reports first.
 *
 * The command line (text and JSON output, exit codes, errors) is exercised through real
 * processes; the other cases call the command's `explainFiles` in process — the same code the
 * command runs — because each process costs about a second on this machine.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import * as TestPki from "@sleeve/testing/TestPki"
import { Effect } from "effect"
import { isAbsolute, join } from "node:path"
import * as Explain from "../../src/commands/Explain.ts"
import { lines, run, sleeve } from "../support/Sleeve.ts"

type Explanation = Explain.Explanation

let pki: TestPki.TestPki
let foreign: TestPki.TestPki
const DAY = 86_400_000
const goodDn = [{ CN: "node2" }, { OU: "Mirror" }, { O: "Example, Corp" }]

beforeAll(async () => {
  pki = await TestPki.make()
  foreign = await TestPki.make()
  const root = await pki.ca({ name: "root", subject: [{ CN: "Explain Root" }] })
  const inter = await pki.intermediate(root, { name: "inter", subject: [{ CN: "Explain Intermediate" }] })
  const now = Date.now()
  const oldInter = await pki.intermediate(root, {
    name: "old-inter",
    subject: [{ CN: "Old Intermediate" }],
    notBefore: new Date(now - 30 * DAY),
    notAfter: new Date(now - DAY)
  })
  await pki.leaf(root, { name: "node1", subject: [{ CN: "node1" }, { OU: "Mirror" }, { O: "Example, Corp" }] })
  await pki.leaf(root, { name: "good", subject: goodDn })
  await pki.leaf(root, { name: "dev", subject: [{ CN: "node2" }, { OU: "Dev" }, { O: "Example, Corp" }] })
  await pki.leaf(root, { name: "no-ou", subject: [{ CN: "node2" }, { O: "Example, Corp" }] })
  await pki.leaf(inter, { name: "via-inter", subject: goodDn })
  await pki.leaf(oldInter, { name: "via-old", subject: goodDn })
  await pki.leaf(root, {
    name: "future",
    subject: goodDn,
    notBefore: new Date(now + DAY),
    notAfter: new Date(now + 30 * DAY)
  })
  await pki.leaf(root, {
    name: "client-only",
    subject: goodDn,
    keyUsage: ["digitalSignature"],
    extendedKeyUsage: ["clientAuth"]
  })
  // From another CA, expired, usable only as a TLS server, and with a DN nobody authorized.
  const other = await foreign.ca({ name: "other", subject: [{ CN: "Other Root" }] })
  await foreign.leaf(other, {
    name: "bad",
    subject: [{ CN: "node3" }, { OU: "Mirror" }, { O: "Example, Corp" }],
    notBefore: new Date(now - 10 * DAY),
    notAfter: new Date(now - DAY),
    keyUsage: ["digitalSignature"],
    extendedKeyUsage: ["serverAuth"]
  })
  await foreign.ca({ name: "selfie", subject: goodDn })
  // The trust file holds the root only (TestPki's ca-bundle.pem would hold every root it made).
  await pki.write("trust.pem", root.certPem)
  await pki.write(
    "sleeve.yaml",
    `
tls:
  Mirror:
    type: server
    caFile: trust.pem
    certificateFile: node1.crt
    privateKeyFile: node1.key
    verifyPeer: require
    verifyDepth: 0
    requireDualUse: true
    authorizedPeers: ["CN=node2,OU=Mirror,O=Example\\\\, Corp", "CN=arbiter,OU=Mirror,O=Example\\\\, Corp"]
  Plain:
    type: server
    caFile: trust.pem
    certificateFile: node1.crt
    privateKeyFile: node1.key
    verifyPeer: require
  Client:
    type: client
    caFile: trust.pem
  Open:
    type: server
    certificateFile: node1.crt
    privateKeyFile: node1.key
  Both:
    type: mirror
    caFile: trust.pem
    certificateFile: node1.crt
    privateKeyFile: node1.key
    requireDualUse: false
  Off:
    type: server
    enabled: false
    caFile: trust.pem
    verifyPeer: require
    certificateFile: node1.crt
    privateKeyFile: node1.key
`
  )
})

afterAll(async () => {
  await pki?.cleanup()
  await foreign?.cleanup()
})

const explain = (tls: string, peer: string, ...extra: Array<string>) =>
  sleeve(["explain", "--config", "sleeve.yaml", "--tls-config", tls, "--peer-cert", peer, ...extra], {
    cwd: pki.dir,
    timeoutMs: 30_000
  })

const explainJson = async (tls: string, peer: string, ...extra: Array<string>) => {
  const r = await explain(tls, peer, "--json", ...extra)
  expect(r.stderr).toBe("")
  return { code: r.code, e: JSON.parse(r.stdout) as Explanation }
}

/** `explainFiles` in process, with paths relative to the PKI folder as the command would get them there. */
const explainHere = (tls: string, peer: string, options: { chain?: string; serverName?: string } = {}) => {
  const at = (f: string) => (isAbsolute(f) ? f : join(pki.dir, f))
  return Effect.runPromise(
    Explain.explainFiles({
      config: at("sleeve.yaml"),
      tlsConfig: tls,
      peerCert: at(peer),
      chain: options.chain === undefined ? undefined : at(options.chain),
      serverName: options.serverName
    }).pipe(Effect.provide(NodeFileSystem.layer))
  ).then((e) => ({ code: e.decision === "allow" ? 0 : 1, e }))
}

const failed = (e: Explanation) => e.checks.filter((c) => c.status === "fail").map((c) => c.check)
const check = (e: Explanation, name: string) => e.checks.find((c) => c.check === name)

/** Every explain run, started once (in parallel) and shared by both tests. */
const runAll = () => {
  const badPeer = `${foreign.dir}/bad.crt`
  const selfie = `${foreign.dir}/selfie.crt`
  return Promise.all([
    explain("Mirror", "good.crt"),
    explain("Mirror", "dev.crt"),
    explainHere("Mirror", "no-ou.crt"),
    explainJson("Mirror", badPeer),
    explainHere("Plain", "via-inter.crt"),
    explainHere("Mirror", "via-inter.crt", { chain: "inter.crt" }),
    explainHere("Plain", "via-inter.crt", { chain: "inter.crt" }),
    explainHere("Plain", "via-inter.chain.pem"),
    explainHere("Plain", "future.crt"),
    explainHere("Plain", selfie),
    explainHere("Plain", "via-old.crt", { chain: "old-inter.crt" }),
    explainHere("Client", "good.crt", { serverName: "localhost" }),
    explainHere("Client", "good.crt", { serverName: "node9.example.com" }),
    explainHere("Client", "client-only.crt"),
    explainHere("Open", badPeer),
    explain("Off", "good.crt"),
    explain("Nope", "good.crt"),
    explain("Mirror", "missing.crt"),
    explainHere("Both", "client-only.crt"),
    explainHere("Both", "good.crt", { serverName: "localhost" })
  ] as const)
}
let all: ReturnType<typeof runAll>

describe("sleeve explain", { timeout: 40_000 }, () => {
  beforeAll(() => {
    all = runAll()
    // Settled here so that a failure shows up in the test that awaits it, not as unhandled.
    all.catch(() => {})
  })

  it("allows and denies with every reason, the nearest DN and the metric reason", async () => {
    const [
      allow,
      ouDiffers,
      noOu,
      bad,
      interNoChain,
      interChainDepth,
      interChainPlain,
      interChainFile,
      future,
      self,
      oldInter,
      clientOk,
      clientWrongName,
      clientOnly,
      open,
      off,
      unknownConfig,
      missingPeer,
      bothClientOnly,
      bothGood
    ] = await all

    // allow: every check, in order, exit 0
    expect(allow.stderr).toBe("")
    const allowLines = lines(allow.stdout)
    expect(allowLines[0]).toBe(
      'allow: peer "CN=node2,OU=Mirror,O=Example\\, Corp" as a TLS client of TLS configuration "Mirror" (sleeve.yaml)'
    )
    expect(allowLines.slice(1, -1).map((l) => l.slice(0, 24))).toEqual([
      "  ok    enabled         ",
      "  ok    verifyPeer      ",
      "  ok    caFile          ",
      "  ok    validity        ",
      "  ok    verifyDepth     ",
      "  ok    usage           ",
      "  ok    authorizedPeers "
    ])
    expect(allowLines).toContain(
      "  ok    caFile           verifies to caFile: CN=node2,OU=Mirror,O=Example\\, Corp <- CN=Explain Root"
    )
    expect(allowLines.at(-1)).toBe("allow: every check passed")
    expect(allow.code).toBe(0)

    // a DN that differs in one RDN: the nearest authorized DN and that RDN, exit 1
    expect(ouDiffers.stderr).toBe("")
    const ouLines = lines(ouDiffers.stdout)
    expect(ouLines[0]).toMatch(/^deny: peer "CN=node2,OU=Dev,O=Example\\, Corp"/)
    expect(ouLines.slice(-4)).toEqual([
      '  FAIL  authorizedPeers  peer DN "CN=node2,OU=Dev,O=Example\\, Corp" is not in authorizedPeers (2 DNs)',
      "                         nearest authorized DN: CN=node2,OU=Mirror,O=Example\\, Corp",
      "                         RDN 2: expected OU=Mirror, got OU=Dev",
      'deny: authorizedPeers failed; Sleeve drops this peer and counts reason "dn_rejected"'
    ])
    expect(ouDiffers.code).toBe(1)

    // a missing RDN is one difference, not a shift of every RDN after it
    expect(noOu.code).toBe(1)
    expect(noOu.e.nearest).toEqual({
      dn: "CN=node2,OU=Mirror,O=Example\\, Corp",
      differences: [{ position: 2, expected: "OU=Mirror" }]
    })

    // everything wrong at once: every failure is listed, the metric reason is OpenSSL's first
    expect(bad.code).toBe(1)
    expect(bad.e.decision).toBe("deny")
    expect(failed(bad.e)).toEqual(["caFile", "validity", "usage", "authorizedPeers"])
    expect(check(bad.e, "caFile")?.code).toBe("UNABLE_TO_GET_ISSUER_CERT_LOCALLY")
    expect(check(bad.e, "caFile")?.detail).toMatch(
      /^no certificate in caFile issued "CN=node3,.*" \(its issuer is "CN=Other Root"\)/
    )
    expect(check(bad.e, "validity")?.code).toBe("CERT_HAS_EXPIRED")
    expect(check(bad.e, "validity")?.detail).toMatch(/^expired at /)
    expect(check(bad.e, "usage")?.code).toBe("INVALID_PURPOSE")
    expect(check(bad.e, "usage")?.detail).toMatch(
      /^requireDualUse: cannot serve as both TLS client and server \(required for mirroring\): its Key Usage lacks keyEncipherment and its Extended Key Usage lacks clientAuth\./
    )
    expect(check(bad.e, "usage")?.detail).toContain("sslv3 alert unsupported certificate")
    expect(bad.e.nearest?.differences).toEqual([{ position: 1, expected: "CN=node2", actual: "CN=node3" }])
    expect(bad.e.verifyError).toBe("UNABLE_TO_GET_ISSUER_CERT_LOCALLY")
    expect(bad.e.metricReason).toBe("unknown_ca")

    // intermediates: missing, then sent (depth over the limit), then accepted
    expect(failed(interNoChain.e)).toEqual(["caFile"])
    expect(check(interNoChain.e, "caFile")?.code).toBe("UNABLE_TO_GET_ISSUER_CERT_LOCALLY")
    expect(failed(interChainDepth.e)).toEqual(["verifyDepth"])
    expect(check(interChainDepth.e, "verifyDepth")?.detail).toBe("1 intermediate CA certificate, at most 0 allowed")
    expect(interChainDepth.e.metricReason).toBe("bad_certificate")
    expect(interChainPlain.code).toBe(0)
    expect(interChainPlain.e.chain).toEqual([
      "CN=node2,OU=Mirror,O=Example\\, Corp",
      "CN=Explain Intermediate",
      "CN=Explain Root"
    ])
    expect(interChainFile.e.decision).toBe("allow")
    expect(interChainFile.e.chain).toEqual(interChainPlain.e.chain)

    // validity and trust anchors
    expect(failed(future.e)).toEqual(["validity"])
    expect(check(future.e, "validity")?.code).toBe("CERT_NOT_YET_VALID")
    expect(future.e.metricReason).toBe("not_yet_valid")
    // (a CA certificate: its Key Usage, keyCertSign and cRLSign, does not allow a TLS client either)
    expect(failed(self.e)).toEqual(["caFile", "usage"])
    expect(check(self.e, "caFile")?.code).toBe("DEPTH_ZERO_SELF_SIGNED_CERT")
    expect(self.e.metricReason).toBe("unknown_ca")
    expect(failed(oldInter.e)).toEqual(["caFile"])
    expect(check(oldInter.e, "caFile")?.code).toBe("CERT_HAS_EXPIRED")
    expect(check(oldInter.e, "caFile")?.detail).toMatch(/^issuer "CN=Old Intermediate" expired at .*\(depth 1; /)
    expect(oldInter.e.metricReason).toBe("expired")

    // a client configuration: the peer is a server; the hostname check on request
    expect(clientOk.e.peerRole).toBe("server")
    expect(clientOk.code).toBe(0)
    expect(check(clientOk.e, "serverName")).toEqual({
      check: "serverName",
      status: "pass",
      detail: 'the certificate names "localhost"'
    })
    expect(failed(clientWrongName.e)).toEqual(["serverName"])
    expect(check(clientWrongName.e, "serverName")?.code).toBe("ERR_TLS_CERT_ALTNAME_INVALID")
    expect(clientWrongName.e.metricReason).toBe("bad_certificate")
    expect(failed(clientOnly.e)).toEqual(["usage"])
    expect(check(clientOnly.e, "usage")?.detail).toMatch(
      /^cannot be used as a TLS server: its Extended Key Usage lacks serverAuth\. Peers reject/
    )
    expect(check(clientOnly.e, "serverName")?.status).toBe("skip")

    // a configuration used in both roles (type: mirror): the peer must be usable as client and server
    expect(bothClientOnly.e.peerRole).toBe("either")
    expect(failed(bothClientOnly.e)).toEqual(["usage"])
    expect(check(bothClientOnly.e, "usage")?.detail).toMatch(/^cannot be used as a TLS server: /)
    expect(check(bothClientOnly.e, "serverName")?.status).toBe("skip")
    expect(bothGood.e.decision).toBe("allow")
    expect(check(bothGood.e, "usage")?.detail).toMatch(/^usable as a TLS client and server: /)
    expect(check(bothGood.e, "serverName")?.status).toBe("pass")

    // verifyPeer none: nothing is checked, so anything is allowed; a disabled configuration denies
    expect(open.code).toBe(0)
    expect(open.e.decision).toBe("allow")
    expect(open.e.checks.map((c) => c.status)).toEqual(["pass", "pass", "skip", "skip", "skip", "skip", "skip"])
    expect(lines(off.stdout).at(-1)).toBe("deny: enabled failed; no listener can use this configuration")
    expect(off.code).toBe(1)

    // explain could not run: one line on stderr, exit 1
    expect(unknownConfig.stdout).toBe("")
    expect(unknownConfig.stderr).toBe(
      'sleeve: sleeve.yaml: no TLS configuration named "Nope" (known: Mirror, Plain, Client, Open, Both, Off)\n'
    )
    expect(unknownConfig.code).toBe(1)
    expect(missingPeer.stderr).toBe("sleeve: peer certificate missing.crt: file not found\n")
    expect(missingPeer.code).toBe(1)
  })

  it("reports the verification error openssl verify reports first", async () => {
    const names: Record<string, string> = {
      "2": "UNABLE_TO_GET_ISSUER_CERT",
      "7": "CERT_SIGNATURE_FAILURE",
      "9": "CERT_NOT_YET_VALID",
      "10": "CERT_HAS_EXPIRED",
      "18": "DEPTH_ZERO_SELF_SIGNED_CERT",
      "19": "SELF_SIGNED_CERT_IN_CHAIN",
      "20": "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
      "24": "INVALID_CA",
      "26": "INVALID_PURPOSE"
    }
    const r = await all
    // [explain's result, peer file, intermediates, the purpose OpenSSL applies in that role]
    const cases = [
      [r[3], `${foreign.dir}/bad.crt`, undefined, "sslclient"],
      [r[4], "via-inter.crt", undefined, "sslclient"],
      [r[6], "via-inter.crt", "inter.crt", "sslclient"],
      [r[8], "future.crt", undefined, "sslclient"],
      [r[9], `${foreign.dir}/selfie.crt`, undefined, "sslclient"],
      [r[10], "via-old.crt", "old-inter.crt", "sslclient"],
      [r[11], "good.crt", undefined, "sslserver"],
      [r[13], "client-only.crt", undefined, "sslserver"]
    ] as const
    const results = await Promise.all(
      cases.map(async ([ours, peer, chain, purpose]) => {
        const untrusted = chain === undefined ? [] : ["-untrusted", chain]
        const openssl = await run(
          "openssl",
          ["verify", "-CAfile", "trust.pem", "-purpose", purpose, ...untrusted, peer],
          {
            cwd: pki.dir
          }
        )
        const first = /error (\d+) at \d+ depth lookup/.exec(openssl.stdout + openssl.stderr)?.[1]
        const expected = openssl.code === 0 ? undefined : (names[first ?? ""] ?? `openssl error ${first}`)
        return { case: `${peer} ${chain ?? ""} ${purpose}`, ours: ours.e.verifyError, openssl: expected }
      })
    )
    for (const x of results) expect(x.ours, x.case).toBe(x.openssl)
    // the cases cover success and five different codes
    expect(new Set(results.map((x) => x.openssl)).size).toBe(6)
  })
})
