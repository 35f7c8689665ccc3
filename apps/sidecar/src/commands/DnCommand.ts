/**
 * The definition of `sleeve dn` (arguments, help): its implementation, Dn.ts, is imported when the
 * command runs, so that no other command (`run` above all) loads it.
 */
import { Effect } from "effect"
import { Argument, Command, Flag } from "effect/cli"

/** `sleeve dn FILE [--issuer] [--all]`. */
export const command = Command.make(
  "dn",
  {
    file: Argument.String("file").pipe(
      Argument.withMetavar("FILE"),
      Argument.withDescription("certificate file: PEM (a chain is fine) or DER")
    ),
    issuer: Flag.Boolean("issuer").pipe(
      Flag.withDescription("print the issuer DN instead of the subject DN"),
      Flag.withDefault(false)
    ),
    all: Flag.Boolean("all").pipe(
      Flag.withDescription("one line per certificate in the file (default: the first only)"),
      Flag.withDefault(false)
    )
  },
  (input) => Effect.promise(() => import("./Dn.ts")).pipe(Effect.flatMap((Dn) => Dn.handler(input)))
).pipe(
  Command.withShortDescription("print a certificate's subject DN (RFC 4514), for authorizedPeers"),
  Command.withDescription(
    "Print the subject (or issuer) distinguished name of a certificate in RFC 4514 form, exactly as " +
      "`openssl x509 -noout -subject -nameopt RFC2253` prints it, ready to paste into authorizedPeers."
  ),
  Command.withExamples([
    { command: "sleeve dn node1.crt", description: "subject of the (first) certificate" },
    { command: "sleeve dn --issuer node1.crt", description: "who issued it" },
    { command: "sleeve dn --all chain.pem", description: "every certificate of a chain, leaf first" }
  ])
)
