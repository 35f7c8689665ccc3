/**
 * `sleeve certs --out DIR`: a development PKI for trying mirror-style mutual TLS on one machine —
 * a CA, two dual-use node certificates with the seed's mirror profile (Key Usage
 * digitalSignature + keyEncipherment, Extended Key Usage serverAuth + clientAuth), and a
 * `sleeve.yaml` that uses them: a MirrorServer/MirrorClient pair whose `authorizedPeers` name each
 * other, a terminate listener, an originate listener chained to it, and the admin endpoint.
 *
 * The written configuration is checked exactly as `sleeve check` would check it before the
 * command reports success, so what it hands over always passes. Existing files are never
 * replaced unless `--force`; with `--key-password-env NAME` every key is encrypted with the
 * password in that variable, and the configuration reads it from there (`{ env: NAME }`).
 *
 * Certificates are made by `TestPki` from @sleeve/testing, imported when the command runs (as
 * `sleeve demo` does) so that other commands do not load @peculiar/x509. This is a development
 * tool: the CA key sits next to the certificates, and nothing here is meant for production.
 */
import { Console, Data, Effect, FileSystem, Option, Redacted, Result } from "effect"
import * as Path from "node:path"
import * as Check from "./Check.ts"

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/** Bad options, a file in the way, or a failure while writing. */
export class CertsError extends Data.TaggedError("CertsError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

// ---------------------------------------------------------------------------------------------
// Options and the configuration written
// ---------------------------------------------------------------------------------------------

/** Validated options of {@link write}. */
export interface Options {
  readonly out: string
  /** Exactly two node names: the first serves (MirrorServer), the second connects (MirrorClient). */
  readonly names: readonly [string, string]
  readonly org: string
  readonly days: number
  readonly keyType: "EC" | "RSA" | "Ed25519"
  /** Encrypt the keys with the password in this environment variable. */
  readonly keyPasswordEnv: string | undefined
  readonly force: boolean
}

/** Fixed addresses of the written configuration (edit the file to change them). */
export const addresses = {
  terminateListen: "127.0.0.1:2188",
  terminateTarget: "127.0.0.1:1972",
  originateListen: "127.0.0.1:12188",
  admin: "127.0.0.1:9464"
} as const

const nodeName = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/

/** Parses `--names`: two distinct host-name-like names (each is a CN, a DNS SAN and a file name). */
export const parseNames = (input: string): Result.Result<readonly [string, string], string> => {
  const names = input.split(",").map((n) => n.trim())
  if (names.length !== 2) {
    return Result.fail(
      `--names takes exactly two names, the serving node then the connecting one (got ${names.length})`
    )
  }
  const bad = names.filter((n) => !nodeName.test(n) || n === "ca" || n === "ca-bundle")
  if (bad.length > 0) {
    return Result.fail(
      `--names: ${bad.map((n) => `"${n}"`).join(", ")} ${bad.length === 1 ? "is" : "are"} not usable; ` +
        'use host names such as "node1" or "node1.example.com" (they name the files and the certificates), other than "ca"'
    )
  }
  if (names[0] === names[1]) return Result.fail(`--names: the two names must differ (got "${names[0]}" twice)`)
  return Result.succeed([names[0] as string, names[1] as string])
}

/** The files the command leaves in `out`, in a stable order. */
export const filesFor = (names: readonly [string, string]): ReadonlyArray<string> => [
  "ca-bundle.pem",
  "ca.crt",
  "ca.key",
  ...names.flatMap((n) => [`${n}.crt`, `${n}.key`]),
  "sleeve.yaml"
]

/**
 * Written by TestPki and removed again: with no intermediate CA, each `<name>.chain.pem` is its
 * `.crt`. Still never overwritten without `--force`.
 */
const scratchFiles = (names: readonly [string, string]): ReadonlyArray<string> => [
  "ca.chain.pem",
  ...names.map((n) => `${n}.chain.pem`)
]

/** The `sleeve.yaml` for the pair; paths are relative to the file, so the folder can move. */
export const makeConfig = (p: {
  readonly server: { readonly name: string; readonly subject: string }
  readonly client: { readonly name: string; readonly subject: string }
  readonly keyPasswordEnv: string | undefined
  readonly created: Date
}): string => {
  const password = p.keyPasswordEnv === undefined ? "" : `\n    privateKeyPassword: { env: ${p.keyPasswordEnv} }`
  // JSON strings are YAML double-quoted scalars: DNs with escapes (`O=Example\, Inc`) stay exact.
  const q = JSON.stringify
  return `# Written by \`sleeve certs\` on ${p.created.toISOString()}: a development PKI for mirror-style mutual TLS.
# ${p.server.name} serves (MirrorServer), ${p.client.name} connects (MirrorClient); each accepts only the other's DN.
# Not for production: the CA key (ca.key) is in this folder. Reference: docs/configuration.md
tls:
  MirrorServer: # like IRIS %MirrorServer
    type: server
    caFile: ca-bundle.pem
    certificateFile: ${p.server.name}.crt
    privateKeyFile: ${p.server.name}.key${password}
    verifyPeer: require
    authorizedPeers: [${q(p.client.subject)}]
    requireDualUse: true
  MirrorClient: # like IRIS %MirrorClient
    type: client
    caFile: ca-bundle.pem
    certificateFile: ${p.client.name}.crt
    privateKeyFile: ${p.client.name}.key${password}
    verifyPeer: require
    authorizedPeers: [${q(p.server.subject)}]
    requireDualUse: true
listeners:
  - name: mirror-in # TLS in (from ${p.client.name}), plaintext to the local application
    mode: terminate
    listen: ${q(addresses.terminateListen)}
    target: ${q(addresses.terminateTarget)}
    tls: MirrorServer
  - name: mirror-out # plaintext in from a local client, TLS out to mirror-in as ${p.client.name}
    mode: originate
    listen: ${q(addresses.originateListen)}
    target: ${q(addresses.terminateListen)}
    serverName: ${q(p.server.name)}
    tls: MirrorClient
admin:
  listen: ${q(addresses.admin)}
`
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

const DAY = 86_400_000

/** Writes the PKI and the configuration, then checks the configuration; returns the lines to print. */
export const write = (options: Options) =>
  Effect.gen(function* () {
    const fs = yield* FileSystem.FileSystem
    const fsError = (what: string) => (cause: unknown) =>
      new CertsError({ message: `${what}: ${(cause as { message?: unknown }).message ?? String(cause)}`, cause })

    let password: Redacted.Redacted<string> | undefined
    if (options.keyPasswordEnv !== undefined) {
      const value = process.env[options.keyPasswordEnv]
      if (value === undefined || value === "") {
        return yield* new CertsError({
          message: `--key-password-env: environment variable ${options.keyPasswordEnv} is not set (it should hold the key password)`
        })
      }
      password = Redacted.make(value)
    }

    const files = [...filesFor(options.names), ...scratchFiles(options.names)]
    const paths = files.map((f) => Path.join(options.out, f))
    const existing: Array<string> = []
    for (const [i, p] of paths.entries()) {
      if (yield* fs.exists(p).pipe(Effect.mapError(fsError(p)))) existing.push(files[i] as string)
    }
    if (existing.length > 0 && !options.force) {
      return yield* new CertsError({
        message: `${options.out}: would overwrite ${existing.join(", ")} (use --force to replace them)`
      })
    }
    yield* fs
      .makeDirectory(options.out, { recursive: true, mode: 0o700 })
      .pipe(Effect.mapError(fsError(`cannot create ${options.out}`)))
    // Removed first so that keys are created anew with mode 0600 (a rewrite keeps the old mode).
    for (const p of paths) yield* fs.remove(p, { force: true }).pipe(Effect.mapError(fsError(`cannot replace ${p}`)))

    const TestPki = yield* Effect.promise(() => import("@sleeve/testing/TestPki"))
    const now = Date.now()
    const keyPassword = password === undefined ? {} : { keyPassword: Redacted.value(password) }
    const made = yield* Effect.tryPromise({
      try: async () => {
        // Absolute: TestPki joins its folder with paths that already contain a relative one.
        const pki = await TestPki.make({ dir: Path.resolve(options.out) })
        const ca = await pki.ca({
          name: "ca",
          subject: [{ CN: "Sleeve Development CA" }, { O: options.org }],
          keyType: options.keyType,
          notAfter: new Date(now + Math.max(365, options.days) * DAY),
          ...keyPassword
        })
        const node = (name: string) =>
          pki.leaf(ca, {
            name,
            subject: [{ CN: name }, { O: options.org }],
            keyType: options.keyType,
            notAfter: new Date(now + options.days * DAY),
            keyUsage: ["digitalSignature", "keyEncipherment"],
            extendedKeyUsage: ["serverAuth", "clientAuth"],
            san: { dns: [...new Set(["localhost", name])], ip: ["127.0.0.1", "::1"] },
            ...keyPassword
          })
        return { ca, server: await node(options.names[0]), client: await node(options.names[1]) }
      },
      catch: fsError(`cannot make the certificates in ${options.out}`)
    })
    const configPath = Path.join(options.out, "sleeve.yaml")
    yield* fs
      .writeFileString(
        configPath,
        makeConfig({
          server: made.server,
          client: made.client,
          keyPasswordEnv: options.keyPasswordEnv,
          created: new Date(now)
        })
      )
      .pipe(Effect.mapError(fsError(`cannot write ${configPath}`)))
    for (const f of scratchFiles(options.names)) {
      yield* fs.remove(Path.join(options.out, f), { force: true }).pipe(Effect.mapError(fsError(`cannot remove ${f}`)))
    }

    // What is handed over must pass `sleeve check`: check it here, with the same code.
    const report = Check.makeReport(
      yield* fs.readFileString(configPath).pipe(Effect.mapError(fsError(configPath))),
      configPath,
      { now: new Date() }
    )
    if (!report.ok) {
      return yield* new CertsError({
        message: `the written configuration does not pass sleeve check: ${Check.formatText(report).join("; ")}`
      })
    }
    const [s, c] = options.names
    return [
      `sleeve certs: wrote ${options.out} (${options.keyType} keys${password === undefined ? "" : `, encrypted with $${options.keyPasswordEnv}`}, certificates valid ${options.days} days)`,
      `  ca-bundle.pem            caFile: the CA certificate, ${made.ca.subject}`,
      "  ca.crt, ca.key           the CA and its key, to issue more certificates (never deploy ca.key)",
      `  ${`${s}.crt, ${s}.key`.padEnd(24)} ${made.server.subject}: MirrorServer (dual use)`,
      `  ${`${c}.crt, ${c}.key`.padEnd(24)} ${made.client.subject}: MirrorClient (dual use)`,
      `  sleeve.yaml              mirror-in: terminate ${addresses.terminateListen} -> ${addresses.terminateTarget}; ` +
        `mirror-out: originate ${addresses.originateListen} -> mirror-in; admin ${addresses.admin}`,
      `Checked: ${Check.formatSummary(report)}. Next:`,
      `  sleeve run --config ${configPath}`,
      `  sleeve explain --config ${configPath} --tls-config MirrorServer --peer-cert ${Path.join(options.out, `${c}.crt`)}`
    ]
  })

// ---------------------------------------------------------------------------------------------
// Command
// ---------------------------------------------------------------------------------------------

/** Runs `sleeve certs`. */
export const handler = (input: {
  readonly out: string
  readonly names: string
  readonly org: string
  readonly days: number
  readonly keyType: "EC" | "RSA" | "Ed25519"
  readonly keyPasswordEnv: Option.Option<string>
  readonly force: boolean
}) =>
  Effect.gen(function* () {
    const names = parseNames(input.names)
    if (Result.isFailure(names)) return yield* new CertsError({ message: names.failure })
    if (input.org.trim() === "") return yield* new CertsError({ message: "--org must not be empty" })
    if (!Number.isInteger(input.days) || input.days < 1 || input.days > 825) {
      // 825 days: the longest validity mainstream TLS clients have accepted for a leaf.
      return yield* new CertsError({ message: `--days must be between 1 and 825, got ${input.days}` })
    }
    const env = Option.getOrUndefined(input.keyPasswordEnv)
    if (env !== undefined && !/^[A-Za-z_][A-Za-z0-9_]*$/.test(env)) {
      return yield* new CertsError({ message: `--key-password-env: "${env}" is not an environment variable name` })
    }
    const lines = yield* write({
      out: input.out,
      names: names.success,
      org: input.org.trim(),
      days: input.days,
      keyType: input.keyType,
      keyPasswordEnv: env,
      force: input.force
    })
    for (const line of lines) yield* Console.log(line)
  })
