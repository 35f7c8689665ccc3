/**
 * The `openssl` command line (Debian's OpenSSL 3) as a test oracle: run it and read its verdict
 * (`verdict`: exit code and everything it printed, for `verify` and friends, which print their
 * verdict on either stream), run it where it must succeed (`output`), and print a certificate's
 * subject or issuer DN the way operators see it (`dn`, `-nameopt RFC2253`).
 *
 * Tests only: product code never runs openssl. What it deliberately does not do: build
 * certificates (that is `TestPki`) or talk TLS (suites spawn `s_client` / `s_server` with
 * `Process.startDaemon`, because what they check is specific to each suite).
 */
import * as Process from "./Process.ts"

/** openssl answers in milliseconds; one that hangs is killed after this long. */
const timeoutMs = 20_000

/** What an openssl run said: its exit code (-1 when killed) and stdout followed by stderr. */
export interface Verdict {
  readonly code: number
  readonly out: string
}

/** `openssl …args`; never rejects on a non-zero exit (the code is the verdict). */
export const verdict = async (...args: Array<string>): Promise<Verdict> => {
  const r = await Process.run("openssl", args, { timeoutMs })
  return { code: r.code ?? -1, out: r.stdout + r.stderr }
}

/** `openssl …args`: its stdout, or an error naming the command and what it said. */
export const output = async (args: ReadonlyArray<string>): Promise<string> => {
  const r = await Process.run("openssl", args, { timeoutMs })
  if (r.code !== 0) throw new Error(`openssl ${args.join(" ")} failed (${r.code}): ${r.stderr}`)
  return r.stdout
}

/**
 * `openssl x509 -noout -<what> -nameopt RFC2253` without the `subject=` / `issuer=` prefix and
 * the final newline; fails when openssl does, or prints something else.
 */
export const dn = async (certFile: string, what: "subject" | "issuer"): Promise<string> => {
  const out = await output(["x509", "-in", certFile, "-noout", `-${what}`, "-nameopt", "RFC2253"])
  if (!out.startsWith(`${what}=`)) throw new Error(`unexpected openssl output: ${out}`)
  return out.slice(what.length + 1).replace(/\n$/, "")
}
