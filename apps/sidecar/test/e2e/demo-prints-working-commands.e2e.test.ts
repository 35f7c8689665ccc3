/**
 * `sleeve demo` keeps its promise: started as a real process, it prints its ready block, and
 * every command in it works when pasted into a shell (`bash -c`, real `openssl` and `curl`):
 * the authorized certificate reaches the legacy app, the intruder is dropped and counted on the
 * metrics page, plaintext in / TLS out works, STARTTLS in front of the plaintext SMTP app works
 * with openssl and with curl as a mail client, the printed `sleeve check` passes, and `/status`
 * answers. Then SIGINT drains it: exit code 0 and the throwaway PKI folder is gone.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Process from "@sleeve/testing/Process"
import { existsSync } from "node:fs"
import { endLine, readyLine } from "../../src/Demo.ts"
import { appDir, childEnv, main, node, run } from "../support/Sleeve.ts"

/** The numbered steps of the printed block: `  N. what` followed by one command line. */
const steps = (block: string): Map<number, string> => {
  const out = new Map<number, string>()
  const lines = block.split("\n")
  lines.forEach((line, i) => {
    const m = /^ {2}(\d+)\. /.exec(line)
    const next = lines[i + 1]
    if (m !== null && next?.startsWith("     ")) out.set(Number(m[1]), next.trim())
  })
  return out
}

const bash = (command: string) => run("bash", ["-c", command], { timeoutMs: 15_000 })

describe("sleeve demo", { timeout: 40_000 }, () => {
  it("prints commands that work as printed, then exits 0 on SIGINT", async () => {
    const demo = Process.startDaemon(node, [main, "demo"], {
      cwd: appDir,
      env: childEnv(),
      stdin: "pipe",
      killAfterMs: 35_000
    })
    try {
      const stdout = await demo.waitForOutput(`\n${endLine}\n`, { timeoutMs: 35_000 })
      expect(stdout.startsWith(`${readyLine}\n`)).toBe(true)
      const commands = steps(stdout)
      expect([...commands.keys()]).toEqual([1, 2, 3, 4, 5, 6])
      const command = (n: number) => commands.get(n) as string
      const check = /check it with: sleeve check --config (\S+)\)/.exec(stdout)?.[1]
      const status = /Status: (curl .*)$/m.exec(stdout)?.[1]
      expect(check).toBeDefined()
      expect(status).toBeDefined()
      const pkiDir = /PKI and configuration: (\S+) /.exec(stdout)?.[1] as string

      // Everything but the metrics runs at once; the metrics are read when the rest is done.
      const [authorized, intruder, plaintextIn, starttls, mailClient, checked, statusPage] = await Promise.all([
        bash(command(1)),
        bash(command(2)),
        bash(command(3)),
        bash(command(5)),
        bash(command(6)),
        run(node, [main, "check", "--config", check as string]),
        bash(status as string)
      ])
      const metrics = await bash(command(4))

      // 1. mutual TLS with node2: the legacy app answers
      expect(authorized.stdout).toContain("legacy-app: hello")
      // 2. the intruder completes no exchange with the app, and Sleeve says why
      expect(intruder.stdout).not.toContain("legacy-app")
      expect(demo.stderr()).toMatch(/"event":"peer_rejected","listener":"app-in".*"reason":"dn_rejected"/)
      expect(demo.stderr()).toContain('"nearestAuthorized":"CN=node2.sleeve.demo,O=Sleeve Demo"')
      // 3. plaintext in, TLS out, through app-in to the app
      expect(plaintextIn.stdout).toBe("legacy-app: hello\n")
      // 4. the metrics page shows exactly the one DN rejection
      expect(metrics.code).toBe(0)
      expect(metrics.stdout).toContain('sleeve_tls_dn_rejections_total{listener="app-in",role="server"} 1\n')
      expect(metrics.stdout).toContain(
        'sleeve_tls_handshakes_total{listener="app-in",role="server",result="rejected"} 1\n'
      )
      // 5. STARTTLS: openssl upgraded (verified against the demo CA), then spoke to the app over TLS
      expect(starttls.code, starttls.stderr).toBe(0)
      expect(starttls.stderr).toContain("verify return:1")
      expect(starttls.stdout).toContain("250-legacy-app greets demo")
      expect(starttls.stdout).toContain("221 2.0.0 legacy-app: bye")
      // 6. curl --ssl-reqd delivered a message to the plaintext app through the upgraded session
      expect(mailClient.code, mailClient.stderr).toBe(0)
      expect(mailClient.stdout).toBe("sent\n")
      expect(demo.stderr()).toMatch(/"event":"legacy_smtp_message","from":"<demo@sleeve.demo>"/)
      expect(demo.stderr()).toMatch(/"event":"handshake_ok","listener":"mail-in"/)
      // the printed check command passes, and /status answers
      expect(checked.stdout, checked.stderr).toMatch(/: OK \(3 TLS configurations, 3 listeners\)\n$/)
      expect(checked.code).toBe(0)
      expect((JSON.parse(statusPage.stdout) as { ready: boolean }).ready).toBe(true)

      demo.child.kill("SIGINT")
      const end = await demo.exited
      expect(end).toEqual({ code: 0, signal: null })
      expect(demo.stderr()).not.toMatch(/^sleeve: |^\s+at /m)
      expect(existsSync(pkiDir)).toBe(false)
    } finally {
      await demo.stop("SIGKILL")
    }
  })
})
