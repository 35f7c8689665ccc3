/**
 * `sleeve run` with a broken configuration (issue 12, "Hostile input / Config"): for each class of
 * problem it exits non-zero with a message naming the file, the path inside it and the rule, and
 * never starts a half-configured sidecar — the good listener's port next to the broken entry
 * never accepts a connection while the process lives, and no `ready` event is printed.
 * (`sleeve check` on the same classes: check-rejects-broken-config.e2e.test.ts; every message
 * verbatim: packages/core/test/ConfigFile.test.ts.)
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { freePort } from "@sleeve/testing/Net"
import * as Process from "@sleeve/testing/Process"
import * as TestPki from "@sleeve/testing/TestPki"
import * as Net from "node:net"
import { childEnv, main, node } from "../support/Sleeve.ts"

let pki: TestPki.TestPki
let occupied: Net.Server
let occupiedPort: number

beforeAll(async () => {
  pki = await TestPki.make()
  const ca = await pki.ca({ name: "root" })
  await pki.leaf(ca, { name: "server", san: { dns: ["localhost"], ip: ["127.0.0.1"] } })
  occupied = Net.createServer()
  await new Promise<void>((r) => occupied.listen(0, "127.0.0.1", () => r()))
  occupiedPort = (occupied.address() as Net.AddressInfo).port
}, 30_000)
afterAll(async () => {
  occupied?.close()
  await pki?.cleanup()
})

/** A good TLS entry and a good listener on `port`, plus the broken part. */
const file = (port: number, broken: { readonly tls?: string; readonly listener?: string }): string => `
tls:
  Server:
    type: server
    certificateFile: server.crt
    privateKeyFile: server.key
${broken.tls ?? ""}
listeners:
  - { name: good, mode: terminate, listen: "127.0.0.1:${port}", target: "127.0.0.1:9", tls: Server }
${broken.listener ?? ""}
`

interface Case {
  readonly name: string
  readonly broken: (port: number) => { readonly tls?: string; readonly listener?: string }
  /** The message (after `<file>: ` for the problems found in the file). */
  readonly message: RegExp
}

const cases: ReadonlyArray<Case> = [
  {
    name: "schema: a malformed duration",
    broken: () => ({
      listener: `  - { name: bad, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:9", tls: Server, idleTimeout: banana }`
    }),
    message: /listeners\[1\]\.idleTimeout: expected a duration/
  },
  {
    name: "schema: TLS 1.0",
    broken: () => ({
      tls: "  Legacy:\n    type: server\n    certificateFile: server.crt\n    privateKeyFile: server.key\n    protocols: { min: TLSv1 }"
    }),
    message: /tls\.Legacy\.protocols\.min: expected "TLSv1\.2" \| "TLSv1\.3", got "TLSv1": TLS 1\.0\/1\.1/
  },
  {
    name: "reference: an unknown TLS configuration",
    broken: () => ({
      listener: `  - { name: bad, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:9", tls: Nope }`
    }),
    message: /listeners\[1\]\.tls: no TLS configuration named "Nope"/
  },
  {
    name: "semantic: a plaintext target off the host",
    broken: () => ({
      listener: `  - { name: bad, mode: terminate, listen: "127.0.0.1:0", target: "192.0.2.10:9", tls: Server }`
    }),
    message: /listeners\[1\]\.target: .*192\.0\.2\.10/
  },
  {
    name: "material: a certificate file that does not exist",
    broken: () => ({
      tls: "  Broken:\n    type: server\n    certificateFile: missing.crt\n    privateKeyFile: server.key",
      listener: `  - { name: bad, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:9", tls: Broken }`
    }),
    message: /tls\.Broken\.certificateFile: .*missing\.crt/
  },
  {
    name: "runtime: a listen address already in use",
    broken: () => ({
      listener: `  - { name: bad, mode: terminate, listen: "127.0.0.1:${occupiedPort}", target: "127.0.0.1:9", tls: Server }`
    }),
    message:
      /listeners\[1\]\.listen: cannot listen on 127\.0\.0\.1:\d+: the address is already in use \(EADDRINUSE\): another process or listener holds it; stop it or choose another address/
  }
]

describe("sleeve run refuses a broken configuration and opens nothing", { timeout: 60_000 }, () => {
  for (const c of cases) {
    it(c.name, async () => {
      const port = await freePort()
      const name = `${c.name.replace(/\W+/g, "-")}.yaml`
      await pki.write(name, file(port, c.broken(port)))
      const daemon = Process.startDaemon(node, [main, "run", "--config", name], {
        cwd: pki.dir,
        env: childEnv(),
        killAfterMs: 30_000
      })
      // While the process lives, the good listener's port must never accept.
      let accepted = 0
      let alive = true
      const exited = daemon.exited.finally(() => {
        alive = false
      })
      const probing = (async () => {
        while (alive) {
          await new Promise<void>((r) => {
            const s = Net.connect({ host: "127.0.0.1", port })
            s.once("connect", () => {
              accepted++
              s.destroy()
              r()
            })
            s.once("error", () => r())
          })
          await new Promise((r) => setTimeout(r, 5))
        }
      })()
      const { code } = await exited
      await probing
      const out = daemon.stdout() + daemon.stderr()
      expect(code, out).not.toBe(0)
      // Every class names the file (a bind failure too: the file, the listener's field, the address).
      expect(out, out).toMatch(new RegExp(`${name.replace(/\./g, "\\.")}: `))
      expect(out, out).toMatch(c.message)
      expect(out).not.toContain('"event":"ready"')
      if (c.name.startsWith("runtime")) {
        // Binding is the last step: the good listener may have bound, but it never served — the
        // process refused to start and released it.
        expect(out).not.toContain('"event":"accepted"')
      } else {
        expect(accepted, "the good listener never accepted a connection").toBe(0)
        expect(out).not.toContain('"event":"listening"')
      }
    })
  }
})
