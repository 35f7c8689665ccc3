/**
 * The definition of `sleeve certs` (flags, help): its implementation, Certs.ts, is imported when
 * the command runs, so that no other command (`run` above all) loads it.
 */
import { Effect } from "effect"
import { Command, Flag } from "effect/cli"

/** Flags of `sleeve certs`. */
export const flags = {
  out: Flag.String("out").pipe(
    Flag.withMetavar("DIR"),
    Flag.withDescription("folder to write into (created if missing)")
  ),
  names: Flag.String("names").pipe(
    Flag.withMetavar("SERVER,CLIENT"),
    Flag.withDescription("the two node names: CN, DNS name and file names (default: node1,node2)"),
    Flag.withDefault("node1,node2")
  ),
  org: Flag.String("org").pipe(
    Flag.withMetavar("NAME"),
    Flag.withDescription('the O attribute of every subject DN (default: "Sleeve Dev")'),
    Flag.withDefault("Sleeve Dev")
  ),
  days: Flag.Int("days").pipe(
    Flag.withMetavar("N"),
    Flag.withDescription("validity of the node certificates in days, 1 to 825 (default: 90; the CA: at least 365)"),
    Flag.withDefault(90)
  ),
  keyType: Flag.Literals("key-type", ["EC", "RSA", "Ed25519"]).pipe(
    Flag.withMetavar("TYPE"),
    Flag.withDescription("key algorithm: EC (P-256), RSA (2048 bits) or Ed25519 (default: EC)"),
    Flag.withDefault("EC" as const)
  ),
  keyPasswordEnv: Flag.String("key-password-env").pipe(
    Flag.withMetavar("NAME"),
    Flag.withDescription(
      "encrypt every key with the password in this environment variable; sleeve.yaml reads it from there"
    ),
    Flag.optional
  ),
  force: Flag.Boolean("force").pipe(Flag.withDescription("replace files that already exist"), Flag.withDefault(false))
}

/** `sleeve certs --out DIR [--names A,B] [--org O] [--days N] [--key-type T] [--key-password-env NAME] [--force]`. */
export const command = Command.make("certs", flags, (input) =>
  Effect.promise(() => import("./Certs.ts")).pipe(Effect.flatMap((Certs) => Certs.handler(input)))
).pipe(
  Command.withShortDescription("write a development PKI and a mirror-pair sleeve.yaml that uses it"),
  Command.withDescription(
    "Write a CA, two dual-use node certificates (Key Usage digitalSignature + keyEncipherment, Extended Key " +
      "Usage serverAuth + clientAuth, as mirroring requires) and a sleeve.yaml with a MirrorServer/MirrorClient " +
      "pair that authorize each other's DN, a terminate and an originate listener and the admin endpoint. The " +
      "configuration is checked before the command succeeds. Refuses to overwrite files unless --force. For " +
      "development only."
  ),
  Command.withExamples([
    { command: "sleeve certs --out ./dev-pki", description: "node1 and node2, EC keys, 90 days" },
    {
      command: "SLEEVE_KEY_PASSWORD=s3cret sleeve certs --out ./dev-pki --key-password-env SLEEVE_KEY_PASSWORD",
      description: "encrypted keys; sleeve.yaml reads the password from that variable"
    },
    {
      command: "sleeve certs --out ./pki --names iris-a.example.com,iris-b.example.com --org 'Example Corp' --force",
      description: "your own names, replacing an earlier PKI"
    }
  ])
)
