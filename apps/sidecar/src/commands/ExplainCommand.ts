/**
 * The definition of `sleeve explain` (flags, help): its implementation, Explain.ts, is imported
 * when the command runs, so that no other command (`run` above all) loads it.
 */
import { Effect } from "effect"
import { Command, Flag } from "effect/cli"
import { configFlag } from "./ConfigFlag.ts"

/** Flags of `sleeve explain`. */
export const flags = {
  config: configFlag,
  tlsConfig: Flag.String("tls-config").pipe(
    Flag.withMetavar("NAME"),
    Flag.withDescription("the TLS configuration that would judge the peer (a key under tls:)")
  ),
  peerCert: Flag.String("peer-cert").pipe(
    Flag.withMetavar("FILE"),
    Flag.withDescription("the peer's certificate, PEM or DER (a PEM chain: leaf first, then its intermediates)")
  ),
  chain: Flag.String("chain").pipe(
    Flag.withMetavar("FILE"),
    Flag.withDescription("intermediate CA certificates the peer sends with it (PEM)"),
    Flag.optional
  ),
  serverName: Flag.String("server-name").pipe(
    Flag.withMetavar("NAME"),
    Flag.withDescription("client and mirror configurations: also check that the certificate names this host or IP"),
    Flag.optional
  ),
  json: Flag.Boolean("json").pipe(
    Flag.withDescription("print one JSON document { decision, checks, nearest, metricReason, … }"),
    Flag.withDefault(false)
  )
}

/** `sleeve explain --config FILE --tls-config NAME --peer-cert FILE [--chain FILE] [--server-name NAME] [--json]`. */
export const command = Command.make("explain", flags, (input) =>
  Effect.promise(() => import("./Explain.ts")).pipe(Effect.flatMap((Explain) => Explain.handler(input)))
).pipe(
  Command.withShortDescription(
    "would a TLS configuration accept this peer certificate? allow or deny, with every reason"
  ),
  Command.withDescription(
    "Run the full peer authorization of a TLS configuration offline on a certificate file: the chain to " +
      "caFile (OpenSSL through Node), validity, verifyDepth, Key Usage / Extended Key Usage (dual use with " +
      "requireDualUse), authorizedPeers (with the nearest authorized DN and an RDN-by-RDN difference on a miss) " +
      "and, for configurations that connect out, the server name. Lists every failure, not only the first. " +
      "Exits 0 on allow, 1 on deny."
  ),
  Command.withExamples([
    {
      command: "sleeve explain -c sleeve.yaml --tls-config MirrorServer --peer-cert node2.crt",
      description: "would node2 be accepted by MirrorServer?"
    },
    {
      command: "sleeve explain -c sleeve.yaml --tls-config MirrorServer --peer-cert peer.crt --chain intermediates.pem",
      description: "the peer sends intermediates"
    },
    {
      command:
        "sleeve explain -c sleeve.yaml --tls-config MirrorClient --peer-cert node1.crt --server-name node1.example.com --json",
      description: "client side, with the hostname check, as JSON"
    }
  ])
)
