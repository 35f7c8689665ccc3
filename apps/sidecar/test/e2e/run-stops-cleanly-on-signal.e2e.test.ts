/**
 * The long-running commands end when they are told to: `sleeve run` on SIGTERM (a supervisor
 * stopping it) and `sleeve demo` on SIGINT (Ctrl-C) drain and exit 0 — a supervisor must not
 * record a failure for a requested stop.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as TestPki from "@sleeve/testing/TestPki"
import { readyLine } from "../../src/Demo.ts"
import { main, node, stopWhenReady } from "../support/Sleeve.ts"

let pki: TestPki.TestPki

beforeAll(async () => {
  pki = await TestPki.make()
  const ca = await pki.ca({ name: "root" })
  await pki.leaf(ca, { name: "server" })
  await pki.write(
    "sleeve.yaml",
    `
admin: { listen: "127.0.0.1:0" }
tls:
  Server:
    type: server
    certificateFile: server.crt
    privateKeyFile: server.key
listeners:
  - { name: in, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:9", tls: Server }
`
  )
})

afterAll(async () => {
  await pki?.cleanup()
})

describe("long-running commands", { timeout: 40_000 }, () => {
  it("run exits 0 after SIGTERM, demo exits 0 after SIGINT", async () => {
    const [run, demo] = await Promise.all([
      stopWhenReady(node, [main, "run", "--config", "sleeve.yaml"], {
        cwd: pki.dir,
        ready: (out) => out.includes('"event":"ready"'),
        signal: "SIGTERM"
      }),
      stopWhenReady(node, [main, "demo"], { cwd: pki.dir, ready: (out) => out.includes(readyLine), signal: "SIGINT" })
    ])
    for (const r of [run, demo]) {
      expect(r.signalled).toBe(true)
      expect(r.stderr, r.stderr).not.toMatch(/^sleeve: |^\s+at /m)
      expect(r.code).toBe(0)
    }
  })
})
