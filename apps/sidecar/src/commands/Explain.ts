/**
 * `sleeve explain`: the full peer authorization of one TLS configuration, run offline on a
 * certificate file — "would Sleeve accept this peer, and if not, why?" — without a handshake.
 *
 * Every check runs and every failure is listed (a handshake stops at the first one):
 * - `enabled`: a disabled configuration cannot be used at all;
 * - `verifyPeer`: `none` means the certificate is neither asked for nor checked (allow);
 * - `caFile`: the chain from the peer certificate (plus the intermediates it would send:
 *   `--chain`, or the rest of the `--peer-cert` file) to a self-signed CA in `caFile`, built the
 *   way OpenSSL builds it (trusted issuers first, then the presented ones), with each link
 *   checked by OpenSSL through Node's `crypto.X509Certificate` (`checkIssued`: names, key
 *   identifiers, keyCertSign; `verify`: the signature), issuers that are CAs, and the validity
 *   of every issuer. A failure carries the OpenSSL verify code a handshake would report
 *   (`UNABLE_TO_GET_ISSUER_CERT_LOCALLY`, `CERT_SIGNATURE_FAILURE`, …);
 * - `validity`: the peer certificate at the current time (`CERT_HAS_EXPIRED`, `CERT_NOT_YET_VALID`);
 * - `verifyDepth`: intermediate CAs between the peer and the trust anchor;
 * - `usage`: with `requireDualUse` the seed's mirror rule (Key Usage digitalSignature +
 *   keyEncipherment, Extended Key Usage serverAuth + clientAuth), otherwise the peer's role as
 *   OpenSSL's purpose check sees it (`INVALID_PURPOSE`; both roles for a `mirror` configuration);
 * - `authorizedPeers`: structured DN equality (`PeerPolicy.authorize`, given the verdict of the
 *   checks above); on a miss, the nearest authorized DN and an RDN-by-RDN difference;
 * - `serverName` (configurations that connect out — `client`, `mirror` — with `--server-name`):
 *   the hostname check Node makes.
 *
 * The verdict agrees with `PeerPolicy.authorize` (the function the listeners call) and names the
 * metric reason Sleeve would count. Exit code 0 on allow, 1 on deny; `--json` for machines.
 *
 * What it deliberately does not do: revocation (`crlFile` is noted, not applied), name
 * constraints and certificate policies (OpenSSL applies them during a real handshake), or any
 * network access.
 */
import { Console, Data, Effect, FileSystem, Option, Result, Runtime } from "effect"
import * as Certificate from "@sleeve/core/Certificate"
import * as ConfigFile from "@sleeve/core/ConfigFile"
import * as DistinguishedName from "@sleeve/core/DistinguishedName"
import * as PeerPolicy from "@sleeve/core/PeerPolicy"
import { X509Certificate } from "node:crypto"
import * as Tls from "node:tls"
import { parseCertificates, readError } from "./Dn.ts"

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

/** Outcome of one check: `skip` when the configuration does not ask for it. */
export type CheckStatus = "pass" | "fail" | "skip"

/** The checks, in the order they are printed (named after the configuration field they implement). */
export type CheckName =
  | "enabled"
  | "verifyPeer"
  | "caFile"
  | "validity"
  | "verifyDepth"
  | "usage"
  | "authorizedPeers"
  | "serverName"

/** One line of the explanation. */
export interface CheckResult {
  readonly check: CheckName
  readonly status: CheckStatus
  /** One sentence. */
  readonly detail: string
  /** The OpenSSL verify code a handshake would report for this failure, when there is one. */
  readonly code?: string | undefined
}

/** One RDN-level difference from the nearest authorized DN, printable. */
export interface DnDifference {
  /** 1-based position in the authorized DN (RFC 4514 order, most specific first). */
  readonly position: number
  /** The authorized RDN there (`undefined`: the peer has an extra RDN). */
  readonly expected: string | undefined
  /** The peer's RDN there (`undefined`: the peer lacks it). */
  readonly actual: string | undefined
}

/** Everything `sleeve explain` found; `--json` prints exactly this. */
export interface Explanation {
  readonly file: string
  readonly tlsConfig: string
  /**
   * The TLS role of the peer: the opposite of the configuration's `type`; `either` for a
   * configuration used in both roles (a mirror configuration), whose peer is checked for both.
   */
  readonly peerRole: "client" | "server" | "either"
  readonly decision: "allow" | "deny"
  readonly peer: {
    readonly subject: string
    readonly issuer: string
    readonly notBefore: string
    readonly notAfter: string
    readonly fingerprint256: string
  }
  /** The chain as built, leaf first, ending with the trust anchor when one was reached. */
  readonly chain: ReadonlyArray<string>
  readonly checks: ReadonlyArray<CheckResult>
  /** For a DN miss: the nearest authorized DN and how the peer's differs. */
  readonly nearest: { readonly dn: string; readonly differences: ReadonlyArray<DnDifference> } | undefined
  /** The OpenSSL verify code a handshake would fail with first; `undefined` when the chain verifies. */
  readonly verifyError: string | undefined
  /**
   * The `reason` label Sleeve would count in `sleeve_tls_handshake_failures_total`; `undefined`
   * on allow, and for a disabled configuration (it judges no handshake).
   */
  readonly metricReason: string | undefined
  /** Things explain does not decide (e.g. revocation). */
  readonly notes: ReadonlyArray<string>
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/** Explain could not run: unreadable files, an invalid configuration, an unknown TLS configuration. */
export class ExplainError extends Data.TaggedError("ExplainError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/** The verdict was deny; the explanation has been printed already. */
export class DeniedError extends Data.TaggedError("DeniedError")<{ readonly tlsConfig: string }> {
  /** The explanation is the message: the runner must not print anything else. */
  override readonly [Runtime.errorReported] = false
  override get message(): string {
    return `peer denied by TLS configuration "${this.tlsConfig}"`
  }
}

// ---------------------------------------------------------------------------------------------
// Chain building (OpenSSL through Node's X509Certificate)
// ---------------------------------------------------------------------------------------------

/** A chain as OpenSSL would build it for verification. */
export interface BuiltChain {
  /** Leaf first; ends with the trust anchor when `anchored`. */
  readonly chain: ReadonlyArray<Certificate.Certificate>
  readonly anchored: boolean
  /**
   * The first error found, with the depth it applies to (0 = leaf) and the OpenSSL phase it
   * belongs to: `build` (no path to a trusted root), `ca` (an issuer that is not a CA), `time`
   * (an issuer outside its validity). OpenSSL checks the leaf's purpose between `build` and
   * `ca`, and the leaf's own validity after `time`.
   */
  readonly error:
    | {
        readonly code: string
        readonly depth: number
        readonly message: string
        readonly phase: "build" | "ca" | "time"
      }
    | undefined
}

interface Node509 {
  readonly cert: Certificate.Certificate
  readonly x509: X509Certificate
}

const toNode = (cert: Certificate.Certificate): Node509 => ({ cert, x509: new X509Certificate(cert.der) })

const sameDer = (a: Certificate.Certificate, b: Certificate.Certificate): boolean => Buffer.compare(a.der, b.der) === 0

/** OpenSSL's `X509_check_issued` (names, key identifiers, keyCertSign) — no signature. */
const namesIssuer = (child: Node509, candidate: Node509): boolean => {
  try {
    return child.x509.checkIssued(candidate.x509)
  } catch {
    return false
  }
}

/** The signature of `child` verifies with the key of `candidate` (OpenSSL). */
const signedBy = (child: Node509, candidate: Node509): boolean => {
  try {
    return child.x509.verify(candidate.x509.publicKey)
  } catch {
    return false
  }
}

const selfSigned = (n: Node509): boolean => namesIssuer(n, n) && signedBy(n, n)

/**
 * Builds the verification chain from `leaf` through `presented` (untrusted) and `trusted` (the
 * CA file) as OpenSSL does with its default flags: trusted issuers are preferred; the chain must
 * end in a self-signed certificate that is in `trusted` (a trusted intermediate alone is not
 * enough, as without `X509_V_FLAG_PARTIAL_CHAIN`). Then issuers must be CAs and every issuer
 * must be within its validity at `now` (the leaf's own validity is a separate check).
 */
export const buildChain = (
  leaf: Certificate.Certificate,
  presented: ReadonlyArray<Certificate.Certificate>,
  trusted: ReadonlyArray<Certificate.Certificate>,
  now: Date
): BuiltChain => {
  const trustedNodes = trusted.map(toNode)
  const presentedNodes = presented.filter((p) => !sameDer(p, leaf)).map(toNode)
  const chain: Array<Node509> = [toNode(leaf)]
  const isTrusted = (n: Node509) => trustedNodes.some((t) => sameDer(t.cert, n.cert))
  const fail = (code: string, depth: number, message: string): BuiltChain => ({
    chain: chain.map((n) => n.cert),
    anchored: false,
    error: { code, depth, message, phase: "build" }
  })
  // 32 links is far beyond any real chain; it only bounds a malicious loop of cross-signatures.
  for (let guard = 0; guard < 32; guard++) {
    const current = chain[chain.length - 1] as Node509
    const depth = chain.length - 1
    if (selfSigned(current)) {
      if (isTrusted(current)) break
      return depth === 0
        ? fail("DEPTH_ZERO_SELF_SIGNED_CERT", 0, "the peer certificate is self-signed and is not in caFile")
        : fail(
            "SELF_SIGNED_CERT_IN_CHAIN",
            depth,
            `the chain ends in the self-signed "${current.cert.subjectString}", which is not in caFile`
          )
    }
    const unused = (n: Node509) => !chain.some((c) => sameDer(c.cert, n.cert))
    const named = [...trustedNodes, ...presentedNodes].filter((n) => unused(n) && namesIssuer(current, n))
    const issuer = named.find((n) => signedBy(current, n))
    if (issuer === undefined) {
      if (named.length > 0) {
        return fail(
          "CERT_SIGNATURE_FAILURE",
          depth,
          `the signature of "${current.cert.subjectString}" does not verify with the key of "${named[0]?.cert.subjectString}"`
        )
      }
      const anyTrusted = chain.some(isTrusted)
      return fail(
        anyTrusted ? "UNABLE_TO_GET_ISSUER_CERT" : "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
        depth,
        `no certificate in caFile${presentedNodes.length > 0 ? " or in the presented chain" : ""} issued ` +
          `"${current.cert.subjectString}" (its issuer is "${current.cert.issuerString}")`
      )
    }
    chain.push(issuer)
    if (guard === 31) return fail("CERT_CHAIN_TOO_LONG", depth + 1, "the chain does not end within 32 certificates")
  }
  const certs = chain.map((n) => n.cert)
  // Issuers must be CAs: every intermediate needs basicConstraints CA:TRUE; a root without the
  // extension (an X.509 v1 root) is accepted, as OpenSSL does outside strict mode.
  for (let i = 1; i < certs.length; i++) {
    const c = certs[i] as Certificate.Certificate
    const isAnchor = i === certs.length - 1
    if (c.basicConstraints?.ca !== true && !(isAnchor && c.basicConstraints === undefined)) {
      return {
        chain: certs,
        anchored: true,
        error: {
          code: "INVALID_CA",
          depth: i,
          message: `"${c.subjectString}" issued a certificate but is not a CA`,
          phase: "ca"
        }
      }
    }
  }
  // Issuers' validity, from the trust anchor down, as OpenSSL's internal_verify walks it.
  for (let i = certs.length - 1; i >= 1; i--) {
    const c = certs[i] as Certificate.Certificate
    const v = Certificate.checkValidity(c, now, 0)
    if (Result.isFailure(v)) {
      return {
        chain: certs,
        anchored: true,
        error: {
          code: v.failure.reason === "Expired" ? "CERT_HAS_EXPIRED" : "CERT_NOT_YET_VALID",
          depth: i,
          message: `issuer ${v.failure.message.replace(/^.*?certificate /, "")}`,
          phase: "time"
        }
      }
    }
  }
  return { chain: certs, anchored: true, error: undefined }
}

// ---------------------------------------------------------------------------------------------
// The explanation
// ---------------------------------------------------------------------------------------------

/** Inputs of {@link makeExplanation}; every file already read. */
export interface ExplainInput {
  /** The configuration file as the operator named it. */
  readonly file: string
  readonly tlsConfig: ConfigFile.TlsConfig
  /** The peer certificate, then whatever else its file held (its intermediates). */
  readonly peer: ReadonlyArray<Certificate.Certificate>
  /** Extra intermediates (`--chain`). */
  readonly chain: ReadonlyArray<Certificate.Certificate>
  /** The CA file's certificates; `undefined` when the configuration has no `caFile`. */
  readonly ca: ReadonlyArray<Certificate.Certificate> | undefined
  readonly now: Date
  /** Client configurations: the name the server certificate must match (`--server-name`). */
  readonly serverName: string | undefined
  /** Maps an OpenSSL verify code to the metric reason (`Metrics.classifyTlsErrorCode`). */
  readonly classify: (code: string) => string
}

const listOf = (items: ReadonlyArray<string>): string => (items.length === 0 ? "none" : items.join(", "))

const usageText = (cert: Certificate.Certificate): string =>
  `Key Usage ${cert.keyUsage === undefined ? "(absent: any)" : listOf(cert.keyUsage)}; ` +
  `Extended Key Usage ${cert.extendedKeyUsage === undefined ? "(absent: any)" : listOf(Certificate.extendedKeyUsageNames(cert) ?? [])}`

/** Drops the `source: certificate "…" ` prefix of a core message: explain names the peer once. */
const bare = (message: string): string => message.replace(/^(?:.*?: )?certificate "(?:[^"\\]|\\.)*" /, "")

/** Runs every check; pure apart from OpenSSL's signature checks. */
export const makeExplanation = (input: ExplainInput): Explanation => {
  const { tlsConfig: cfg } = input
  const leaf = input.peer[0] as Certificate.Certificate
  const presented = [...input.peer.slice(1), ...input.chain]
  // Compared as a string: besides "server" and "client", the core may define a configuration
  // used in both roles ("mirror"), whose peer connects to us and is connected to by us.
  const type: string = cfg.type
  const peerRole = type === "server" ? "client" : type === "client" ? "server" : "either"
  const peerRoles: ReadonlyArray<"client" | "server"> = peerRole === "either" ? ["client", "server"] : [peerRole]
  const checks: Array<CheckResult> = []
  const notes: Array<string> = []
  const add = (check: CheckName, status: CheckStatus, detail: string, code?: string) =>
    checks.push(code === undefined ? { check, status, detail } : { check, status, detail, code })

  add(
    "enabled",
    cfg.enabled ? "pass" : "fail",
    cfg.enabled
      ? "the configuration is enabled"
      : "the configuration is disabled (enabled: false): no listener can use it"
  )

  const built = buildChain(leaf, presented, input.ca ?? [], input.now)
  let decision: PeerPolicy.Decision | undefined
  let nearest: Explanation["nearest"]
  let hostnameFailed = false
  let verifyError: string | undefined

  if (cfg.verifyPeer === "none") {
    add("verifyPeer", "pass", "none: the peer certificate is neither asked for nor checked")
    for (const c of ["caFile", "validity", "verifyDepth", "usage", "authorizedPeers"] as const) {
      add(c, "skip", "not checked (verifyPeer: none)")
    }
  } else {
    add(
      "verifyPeer",
      "pass",
      `${cfg.verifyPeer}: a certificate ${cfg.verifyPeer === "require" ? "must be presented" : "is asked for"} and must verify; one is presented`
    )

    // caFile: the chain, as OpenSSL verifies it during the handshake
    const chainText = built.chain.map((c) => c.subjectString).join(" <- ")
    if (input.ca === undefined) add("caFile", "fail", "no caFile is configured: nothing to verify the peer against")
    else if (built.error === undefined) add("caFile", "pass", `verifies to caFile: ${chainText}`)
    else
      add(
        "caFile",
        "fail",
        `${built.error.message} (depth ${built.error.depth}; built: ${chainText})`,
        built.error.code
      )

    // validity of the peer certificate itself
    const validity = Certificate.checkValidity(leaf, input.now, 0)
    if (Result.isFailure(validity)) {
      add(
        "validity",
        "fail",
        bare(validity.failure.message),
        validity.failure.reason === "Expired" ? "CERT_HAS_EXPIRED" : "CERT_NOT_YET_VALID"
      )
    } else {
      add(
        "validity",
        "pass",
        `valid from ${leaf.notBefore.toISOString()} to ${leaf.notAfter.toISOString()} (now ${input.now.toISOString()})`
      )
    }

    // verifyDepth, counted as PeerPolicy (and OpenSSL) count it: neither the leaf nor the anchor
    const intermediates = built.chain.length - 1 - (built.anchored ? 1 : 0)
    add(
      "verifyDepth",
      intermediates > cfg.verifyDepth ? "fail" : "pass",
      `${intermediates} intermediate CA certificate${intermediates === 1 ? "" : "s"}${built.anchored ? "" : " so far"}, ` +
        `at most ${cfg.verifyDepth} allowed`
    )

    // usage: OpenSSL's purpose check for the peer's role(s); the mirror rule on top with requireDualUse
    const role =
      peerRoles.map((r) => Certificate.checkRoleUsage(leaf, r)).find(Result.isFailure) ?? Result.succeed(leaf)
    const dual = cfg.requireDualUse ? Certificate.checkDualUse(leaf) : undefined
    if (dual !== undefined && Result.isFailure(dual)) {
      add(
        "usage",
        "fail",
        `requireDualUse: ${bare(dual.failure.message)}`,
        Result.isFailure(role) ? "INVALID_PURPOSE" : undefined
      )
    } else if (Result.isFailure(role)) {
      add("usage", "fail", bare(role.failure.message), "INVALID_PURPOSE")
    } else {
      add(
        "usage",
        "pass",
        `${cfg.requireDualUse ? "dual use (requireDualUse)" : `usable as a TLS ${peerRoles.join(" and ")}`}: ${usageText(leaf)}`
      )
    }

    // What OpenSSL would report first, in its order: building the chain, the leaf's purpose, the
    // issuers' CA flags, the issuers' validity (top down), the leaf's validity.
    const leafTime = checks.find((c) => c.check === "validity")?.code
    verifyError =
      input.ca === undefined
        ? "UNABLE_TO_GET_ISSUER_CERT_LOCALLY"
        : built.error?.phase === "build"
          ? built.error.code
          : Result.isFailure(role)
            ? "INVALID_PURPOSE"
            : (built.error?.code ?? leafTime)
    decision = PeerPolicy.authorize(cfg, {
      chain: built.chain,
      verified: verifyError === undefined,
      verifyError
    })

    // authorizedPeers: evaluated whatever the verdict above, so every failure is listed
    if (cfg.authorizedPeers.length === 0) {
      add("authorizedPeers", "skip", "authorizedPeers is empty: any verified peer is accepted")
    } else if (cfg.authorizedPeers.some((dn) => DistinguishedName.equals(dn, leaf.subject))) {
      add("authorizedPeers", "pass", `"${leaf.subjectString}" is in authorizedPeers`)
    } else {
      const n = Option.getOrUndefined(DistinguishedName.nearest(leaf.subject, cfg.authorizedPeers))
      add(
        "authorizedPeers",
        "fail",
        `peer DN "${leaf.subjectString}" is not in authorizedPeers (${cfg.authorizedPeers.length} DN${cfg.authorizedPeers.length === 1 ? "" : "s"})`
      )
      if (n !== undefined) {
        nearest = {
          dn: DistinguishedName.format(n.candidate),
          differences: n.differences.map((d) => ({
            position: d.index + 1,
            expected: d.expected === undefined ? undefined : DistinguishedName.formatRdn(d.expected),
            actual: d.actual === undefined ? undefined : DistinguishedName.formatRdn(d.actual)
          }))
        }
      }
    }
    if (cfg.crlFile !== undefined)
      notes.push(`crlFile is configured: revocation is checked during a handshake, not here`)
  }

  // serverName: Node's hostname check on a server certificate (configurations that connect out)
  if (peerRoles.includes("server")) {
    if (input.serverName === undefined) {
      add("serverName", "skip", "pass --server-name NAME to check the name a listener would verify")
    } else {
      const error = Tls.checkServerIdentity(input.serverName, new X509Certificate(leaf.der).toLegacyObject())
      hostnameFailed = error !== undefined
      add(
        "serverName",
        hostnameFailed ? "fail" : "pass",
        hostnameFailed
          ? `${error?.message} (unless the listener sets insecureSkipHostnameVerification)`
          : `the certificate names "${input.serverName}"`,
        hostnameFailed ? "ERR_TLS_CERT_ALTNAME_INVALID" : undefined
      )
    }
  }

  const failed = checks.filter((c) => c.status === "fail")
  const deny = failed.length > 0 || decision?._tag === "Deny"
  let metricReason: string | undefined
  // A disabled configuration judges no handshake at all: nothing would be counted.
  if (deny && cfg.enabled) {
    if (decision?._tag === "Deny") {
      metricReason =
        decision.reason === "unverified"
          ? input.classify(decision.verifyError ?? "UNABLE_TO_GET_ISSUER_CERT_LOCALLY")
          : decision.reason === "depth"
            ? "bad_certificate"
            : decision.reason === "dn_not_authorized"
              ? "dn_rejected"
              : decision.reason
    } else if (hostnameFailed) metricReason = "bad_certificate"
    else metricReason = "other"
  }
  return {
    file: input.file,
    tlsConfig: cfg.name,
    peerRole,
    decision: deny ? "deny" : "allow",
    peer: {
      subject: leaf.subjectString,
      issuer: leaf.issuerString,
      notBefore: leaf.notBefore.toISOString(),
      notAfter: leaf.notAfter.toISOString(),
      fingerprint256: leaf.fingerprint256
    },
    chain: built.chain.map((c) => c.subjectString),
    checks,
    verifyError,
    nearest,
    metricReason,
    notes
  }
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

const statusWord: Record<CheckStatus, string> = { pass: "ok  ", fail: "FAIL", skip: "skip" }

/** The text output: the verdict, one line per check (failures with their code), the nearest DN. */
export const formatText = (e: Explanation): ReadonlyArray<string> => {
  const width = Math.max(...e.checks.map((c) => c.check.length))
  const out = [
    `${e.decision}: peer "${e.peer.subject}" as a TLS ${e.peerRole === "either" ? "client or server" : e.peerRole} ` +
      `of TLS configuration "${e.tlsConfig}" (${e.file})`
  ]
  for (const c of e.checks) {
    out.push(
      `  ${statusWord[c.status]}  ${c.check.padEnd(width)}  ${c.detail}${c.code === undefined ? "" : ` [${c.code}]`}`
    )
    if (c.check === "authorizedPeers" && c.status === "fail" && e.nearest !== undefined) {
      const indent = " ".repeat(width + 10)
      out.push(`${indent}nearest authorized DN: ${e.nearest.dn}`)
      for (const d of e.nearest.differences) {
        out.push(
          `${indent}RDN ${d.position}: ` +
            (d.expected === undefined
              ? `unexpected ${d.actual}`
              : d.actual === undefined
                ? `missing ${d.expected}`
                : `expected ${d.expected}, got ${d.actual}`)
        )
      }
    }
  }
  for (const n of e.notes) out.push(`  note: ${n}`)
  const failures = e.checks.filter((c) => c.status === "fail").map((c) => c.check)
  out.push(
    e.decision === "allow"
      ? "allow: every check passed"
      : e.metricReason === undefined
        ? `deny: ${failures.join(", ")} failed; no listener can use this configuration`
        : `deny: ${failures.join(", ")} failed; Sleeve drops this peer and counts reason "${e.metricReason}"`
  )
  return out
}

/** The `--json` output. */
export const formatJson = (e: Explanation): string => JSON.stringify(e, null, 2)

// ---------------------------------------------------------------------------------------------
// Reading files
// ---------------------------------------------------------------------------------------------

const readBytes = (file: string, what: string) =>
  Effect.gen(function* () {
    const fs = yield* FileSystem.FileSystem
    return yield* fs
      .readFile(file)
      .pipe(Effect.mapError((e) => new ExplainError({ message: `${what} ${file}: ${readError(e)}`, cause: e })))
  })

const readCertificates = (file: string, what: string) =>
  Effect.flatMap(readBytes(file, what), (bytes) => {
    const certs = parseCertificates(bytes, file)
    return Result.isSuccess(certs)
      ? Effect.succeed(certs.success)
      : Effect.fail(new ExplainError({ message: `${what} ${certs.failure.message}`, cause: certs.failure }))
  })

// ---------------------------------------------------------------------------------------------
// Command
// ---------------------------------------------------------------------------------------------

/** What to explain: file paths as the operator gave them. */
export interface Request {
  readonly config: string
  readonly tlsConfig: string
  readonly peerCert: string
  readonly chain: string | undefined
  readonly serverName: string | undefined
}

/** Reads the files of a {@link Request} and explains; fails only when explain cannot run. */
export const explainFiles = (request: Request) =>
  Effect.gen(function* () {
    const text = new TextDecoder().decode(yield* readBytes(request.config, "configuration file"))
    const decoded = ConfigFile.decode(text, request.config)
    if (Result.isFailure(decoded)) {
      const errors = decoded.failure.problems.filter((p) => p.severity === "error")
      return yield* new ExplainError({
        message: `${errors.map(ConfigFile.formatProblem).join("\n")}\n(run sleeve check --config ${request.config})`
      })
    }
    const config = decoded.success
    const tlsConfig = config.tls.get(request.tlsConfig)
    if (tlsConfig === undefined) {
      const known = [...config.tls.keys()]
      return yield* new ExplainError({
        message: `${request.config}: no TLS configuration named "${request.tlsConfig}" (known: ${known.length === 0 ? "none" : known.join(", ")})`
      })
    }
    const peer = yield* readCertificates(request.peerCert, "peer certificate")
    const chain = request.chain === undefined ? [] : yield* readCertificates(request.chain, "chain")
    const ca =
      tlsConfig.caFile === undefined
        ? undefined
        : yield* readCertificates(tlsConfig.caFile, `tls.${tlsConfig.name}.caFile`)
    const now = new Date()
    const explainWith = (classify: (code: string) => string) =>
      makeExplanation({
        file: request.config,
        tlsConfig,
        peer,
        chain,
        ca,
        now,
        serverName: request.serverName,
        classify
      })
    // The metrics module (prom-client: a third of a second to load) is needed only to name the
    // reason of a verification failure, so it is loaded only then.
    const pending = "\u0000classify"
    const first = explainWith(() => pending)
    if (first.metricReason !== pending) return first
    const Metrics = yield* Effect.promise(() => import("@sleeve/metrics/Metrics"))
    return explainWith(Metrics.classifyTlsErrorCode)
  })

/** Runs `sleeve explain`: prints the explanation; fails with {@link DeniedError} on deny. */
export const handler = (input: {
  readonly config: string
  readonly tlsConfig: string
  readonly peerCert: string
  readonly chain: Option.Option<string>
  readonly serverName: Option.Option<string>
  readonly json: boolean
}) =>
  Effect.gen(function* () {
    const explanation = yield* explainFiles({
      config: input.config,
      tlsConfig: input.tlsConfig,
      peerCert: input.peerCert,
      chain: Option.getOrUndefined(input.chain),
      serverName: Option.getOrUndefined(input.serverName)
    })
    if (input.json) yield* Console.log(formatJson(explanation))
    else for (const line of formatText(explanation)) yield* Console.log(line)
    if (explanation.decision === "deny") return yield* new DeniedError({ tlsConfig: explanation.tlsConfig })
  })
