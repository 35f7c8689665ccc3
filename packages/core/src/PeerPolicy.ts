/**
 * Peer authorization: the decision Sleeve takes on a peer once OpenSSL has finished the
 * handshake, in both roles (seed "TLS with Mirroring": the client authenticates the server, the
 * server authenticates the client, and either drops the connection on a mismatch).
 *
 * The checks run in a fixed order, and the first failure is the reason reported:
 * 1. a certificate was presented (`verifyPeer: require`; `request` lets a peer without one pass);
 * 2. its chain verified to the configured CA (OpenSSL's verdict — never re-implemented here);
 * 3. the chain has no more than `verifyDepth` intermediate CAs (the leaf and root not counted);
 * 4. the leaf satisfies the dual-use rule (`requireDualUse`);
 * 5. the leaf's subject DN equals one of `authorizedPeers`, compared as structured DNs
 *    (RFC 4517 matching), never as strings, so `CN=node1\,O=Trusted` is not `CN=node1,O=Trusted`.
 *
 * Pure: it takes what the TLS engine observed and returns a decision.
 */
import { Option, Result } from "effect"
import * as Certificate from "./Certificate.ts"
import type * as ConfigFile from "./ConfigFile.ts"
import * as DistinguishedName from "./DistinguishedName.ts"

/** What the TLS engine observed about the peer. */
export interface Observed {
  /** Peer chain as presented, leaf first (empty when the peer sent no certificate). */
  readonly chain: ReadonlyArray<Certificate.Certificate>
  /** OpenSSL's verification verdict. */
  readonly verified: boolean
  /** OpenSSL's verification error code (e.g. `UNABLE_TO_GET_ISSUER_CERT_LOCALLY`) when not verified. */
  readonly verifyError: string | undefined
}

/** Why a peer was denied; each maps to a metric reason and a troubleshooting entry. */
export type DenyReason = "no_certificate" | "unverified" | "depth" | "dual_use" | "dn_not_authorized"

/** The decision. */
export type Decision =
  | { readonly _tag: "Allow"; readonly peer: Certificate.Certificate | undefined }
  | {
      readonly _tag: "Deny"
      readonly reason: DenyReason
      /** One sentence for logs and `sleeve explain`. */
      readonly detail: string
      readonly peer: Certificate.Certificate | undefined
      /** OpenSSL's code, for `unverified`. */
      readonly verifyError?: string | undefined
      /** For `dn_not_authorized`: the closest authorized DN and how it differs. */
      readonly nearest?: DistinguishedName.Nearest | undefined
    }

/** Runs the checks (see the module header) for a TLS configuration. */
export const authorize = (config: ConfigFile.TlsConfig, observed: Observed): Decision => {
  const leaf = observed.chain[0]
  if (config.verifyPeer === "none") return { _tag: "Allow", peer: leaf }
  // verifyPeer
  if (leaf === undefined) {
    return config.verifyPeer === "require"
      ? { _tag: "Deny", reason: "no_certificate", detail: "the peer presented no certificate", peer: undefined }
      : { _tag: "Allow", peer: undefined }
  }
  // caFile: OpenSSL's chain verification
  if (!observed.verified) {
    return {
      _tag: "Deny",
      reason: "unverified",
      detail: `the peer certificate did not verify against caFile: ${observed.verifyError ?? "unknown error"}`,
      peer: leaf,
      verifyError: observed.verifyError
    }
  }
  // verifyDepth: intermediates between the leaf and the trust anchor, as OpenSSL counts them
  // (neither the leaf nor the trust anchor counts). Whether the chain ends with the self-issued
  // root (Node's `getPeerCertificate(true)` on a verified chain) or not (a chain as presented),
  // the number is the same.
  const last = observed.chain[observed.chain.length - 1]
  const anchor = observed.chain.length > 1 && last !== undefined && Certificate.isSelfIssued(last) ? 1 : 0
  const intermediates = observed.chain.length - 1 - anchor
  if (intermediates > config.verifyDepth) {
    return {
      _tag: "Deny",
      reason: "depth",
      detail:
        `the peer chain has ${intermediates} intermediate CA certificate${intermediates === 1 ? "" : "s"}, ` +
        `more than verifyDepth ${config.verifyDepth}`,
      peer: leaf
    }
  }
  // requireDualUse: the seed's mirror KU/EKU rule
  if (config.requireDualUse) {
    const d = Certificate.checkDualUse(leaf)
    if (Result.isFailure(d)) return { _tag: "Deny", reason: "dual_use", detail: d.failure.message, peer: leaf }
  }
  // authorizedPeers: structured DN equality
  if (config.authorizedPeers.length > 0) {
    if (!config.authorizedPeers.some((dn) => DistinguishedName.equals(dn, leaf.subject))) {
      const nearest = DistinguishedName.nearest(leaf.subject, config.authorizedPeers)
      return {
        _tag: "Deny",
        reason: "dn_not_authorized",
        detail: `peer DN "${leaf.subjectString}" is not in authorizedPeers`,
        peer: leaf,
        nearest: Option.getOrUndefined(nearest)
      }
    }
  }
  return { _tag: "Allow", peer: leaf }
}

// ---------------------------------------------------------------------------------------------
// Decision cache
// ---------------------------------------------------------------------------------------------

/**
 * What the TLS engine observed about the peer, with the parsing of its chain deferred: a cache
 * hit needs only the chain's identity, and parsing certificates is most of the work of judging a
 * peer (measured: ~0.5 ms of each mutual-TLS handshake).
 */
export interface Presented {
  /** OpenSSL's verification verdict. */
  readonly verified: boolean
  /** OpenSSL's verification error code when not verified. */
  readonly verifyError: string | undefined
  /**
   * The identity of the chain, leaf first: the SHA-256 fingerprint of every certificate of it
   * (empty when the peer sent no certificate).
   */
  readonly fingerprints: ReadonlyArray<string>
  /** The chain, parsed, leaf first, in the same order as `fingerprints`. Called only when needed. */
  readonly chain: () => ReadonlyArray<Certificate.Certificate>
}

/** Decisions of one TLS configuration, remembered per verified chain. */
export interface DecisionCache {
  readonly config: ConfigFile.TlsConfig
  /** The decision {@link authorize} takes on `presented`, from the cache when the chain was judged before. */
  readonly authorize: (presented: Presented) => Decision
  /** Chains remembered now. */
  readonly size: () => number
}

/**
 * A decision cache for `config`. The decision is a pure function of the configuration and the
 * verified chain, so it is remembered per chain identity (the fingerprints of the leaf and of every
 * certificate above it). Fail closed:
 * - only chains OpenSSL verified are looked up or remembered; an unverified chain is judged afresh
 *   every time (and denied), even when a verified chain with the same fingerprints was allowed;
 * - the cache belongs to one configuration: a reload builds new material and with it a new cache,
 *   so nothing decided under the old `authorizedPeers`, CA or CRL survives it.
 *
 * At most `maxEntries` chains are kept (the oldest is dropped first), so a peer presenting endless
 * distinct certificates cannot grow it.
 */
export const makeCache = (
  config: ConfigFile.TlsConfig,
  options: { readonly maxEntries?: number } = {}
): DecisionCache => {
  const maxEntries = options.maxEntries ?? 1024
  const entries = new Map<string, Decision>()
  const judge = (p: Presented): Decision =>
    authorize(config, { chain: p.chain(), verified: p.verified, verifyError: p.verifyError })
  return {
    config,
    size: () => entries.size,
    authorize: (p) => {
      if (p.verified !== true || p.fingerprints.length === 0 || config.verifyPeer === "none") return judge(p)
      const key = p.fingerprints.join("/")
      const hit = entries.get(key)
      if (hit !== undefined) return hit
      const decision = judge(p)
      if (entries.size >= maxEntries) {
        const oldest = entries.keys().next()
        if (oldest.done !== true) entries.delete(oldest.value)
      }
      entries.set(key, decision)
      return decision
    }
  }
}
