/**
 * `{ prompt: true }` key passwords: `sleeve check` asks on the terminal without echo when stdin
 * is one, and reports the problem when it is not. The terminal is a real pseudo-terminal made by
 * util-linux `script`; the password is typed only once the prompt is shown (typed earlier, the
 * terminal itself would echo it), and must never appear in what the terminal displayed.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Process from "@sleeve/testing/Process"
import * as TestPki from "@sleeve/testing/TestPki"
import { lines, main, node, sleeve } from "../support/Sleeve.ts"

let pki: TestPki.TestPki
const password = "pr0mpted-Secret"
const promptText = 'Private key password of TLS configuration "Prompted"'

beforeAll(async () => {
  pki = await TestPki.make()
  const ca = await pki.ca({ name: "root" })
  await pki.leaf(ca, { name: "node", keyPassword: password })
  await pki.write(
    "sleeve.yaml",
    `
tls:
  Prompted:
    type: server
    certificateFile: node.crt
    privateKeyFile: node.key
    privateKeyPassword: { prompt: true }
`
  )
})

afterAll(async () => {
  await pki?.cleanup()
})

const shellQuote = (s: string) => `'${s.replaceAll("'", "'\\''")}'`

/** Runs `sleeve check` on a pseudo-terminal and types `typed` (then Enter) once the prompt shows. */
const checkOnTerminal = async (typed: string): Promise<{ readonly code: number | null; readonly screen: string }> => {
  const command = [node, main, "check", "--config", "sleeve.yaml"].map(shellQuote).join(" ")
  const terminal = Process.startDaemon("script", ["-q", "-e", "-c", command, "/dev/null"], {
    cwd: pki.dir,
    env: { ...process.env, NO_COLOR: "1", TERM: "xterm" },
    stdin: "pipe",
    killAfterMs: 20_000
  })
  // No prompt (it exited, or 20 s passed): nothing is typed, and the assertions say what was shown.
  await terminal
    .waitForOutput(promptText, { timeoutMs: 20_000 })
    .then(() => terminal.child.stdin?.write(`${typed}\r`))
    .catch(() => undefined)
  const { code } = await terminal.exited
  terminal.child.stdin?.destroy()
  if (terminal.child.pid === undefined) throw new Error(terminal.stderr())
  return { code, screen: terminal.stdout() }
}

describe("sleeve check ({ prompt: true } passwords)", { timeout: 30_000 }, () => {
  it("asks on a terminal without echo; the right password passes, a wrong one is reported; no TTY is a problem", async () => {
    const [right, wrong, noTty] = await Promise.all([
      checkOnTerminal(password),
      checkOnTerminal("not-the-password"),
      sleeve(["check", "--config", "sleeve.yaml"], { cwd: pki.dir })
    ])

    expect(right.screen).toContain(promptText)
    expect(right.screen).toContain("sleeve.yaml: OK (1 TLS configuration, 0 listeners)")
    expect(right.screen).not.toContain(password)
    expect(right.code).toBe(0)

    expect(wrong.screen).toContain(
      `sleeve.yaml: tls.Prompted.privateKeyPassword: TLS configuration "Prompted": private key file ${pki.dir}/node.key could not be decrypted with the configured password`
    )
    expect(wrong.screen).toContain("sleeve.yaml: 1 error")
    expect(wrong.screen).not.toContain("not-the-password")
    expect(wrong.code).toBe(1)

    expect(lines(noTty.stdout)).toEqual([
      "sleeve.yaml: tls.Prompted.privateKeyPassword: { prompt: true } needs an interactive terminal at start; use { env } or { file } for services",
      "sleeve.yaml: 1 error"
    ])
    expect(noTty.stdout).not.toContain(promptText)
    expect(noTty.code).toBe(1)
  })
})
