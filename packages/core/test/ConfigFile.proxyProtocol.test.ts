/**
 * The PROXY protocol fields of a listener (`proxyProtocol`, `acceptProxyProtocol`): defaults,
 * the model they decode to, and every rule with its exact message (file, path, rule).
 */
import { describe, expect, it } from "@effect/vitest"
import { Result } from "effect"
import * as ConfigFile from "../src/ConfigFile.ts"

const FILE = "sleeve.yaml"
const tls = `
tls:
  S:
    type: server
    certificateFile: s.crt
    privateKeyFile: s.key
  C:
    type: client
    caFile: ca.pem
listeners:
`
const withListener = (fields: string) =>
  `${tls}  - { name: l, listen: "127.0.0.1:0", target: "127.0.0.1:5432", ${fields} }\n`
const decoded = (text: string) => {
  const r = ConfigFile.decode(text, FILE)
  if (Result.isFailure(r)) throw new Error(`expected the configuration to decode, got:\n${r.failure.message}`)
  return r.success.listeners[0]!
}
const problems = (text: string) => {
  const r = ConfigFile.decode(text, FILE)
  if (Result.isSuccess(r)) throw new Error("expected a ConfigError")
  return r.failure.message.split("\n")
}

describe("proxyProtocol", () => {
  it("is off by default, and v1 or v2 on a terminate listener", () => {
    expect(decoded(withListener("mode: terminate, tls: S")).proxyProtocol).toBeUndefined()
    expect(decoded(withListener("mode: terminate, tls: S, proxyProtocol: v2")).proxyProtocol).toBe("v2")
    expect(decoded(withListener("mode: terminate, tls: S, proxyProtocol: v1")).proxyProtocol).toBe("v1")
  })

  it("is allowed on server-side starttls for postgres and ldap", () => {
    for (const protocol of ["postgres", "ldap"]) {
      const l = decoded(withListener(`mode: starttls, protocol: ${protocol}, tls: S, proxyProtocol: v2`))
      expect(l.proxyProtocol).toBe("v2")
    }
  })

  it("names the versions it knows", () => {
    expect(problems(withListener("mode: terminate, tls: S, proxyProtocol: v3"))).toEqual([
      'sleeve.yaml: listeners[0].proxyProtocol: expected "v1" | "v2", got "v3"'
    ])
  })

  it("only where the target is the plaintext application", () => {
    const rule =
      "sleeve.yaml: listeners[0].proxyProtocol: only applies where the target is the plaintext application: " +
      "mode terminate, or mode starttls with side: server"
    expect(problems(withListener("mode: originate, tls: C, proxyProtocol: v2"))).toEqual([rule])
    expect(
      problems(withListener("mode: starttls, side: client, protocol: postgres, tls: C, proxyProtocol: v2"))
    ).toEqual([rule])
  })

  it("not with a STARTTLS protocol whose application talks before the upgrade", () => {
    expect(problems(withListener("mode: starttls, protocol: smtp, tls: S, proxyProtocol: v2"))).toEqual([
      "sleeve.yaml: listeners[0].proxyProtocol: not with protocol: smtp: its application takes part in the " +
        "conversation before the TLS upgrade, so the header would have to precede TLS; supported with protocol " +
        "postgres or ldap, or on a terminate listener"
    ])
  })

  it("not when a STARTTLS client may stay in plaintext", () => {
    expect(
      problems(withListener("mode: starttls, protocol: postgres, requireTls: false, tls: S, proxyProtocol: v2"))
    ).toEqual([
      "sleeve.yaml: listeners[0].proxyProtocol: needs requireTls: true: a client that never upgrades would reach the application first"
    ])
  })
})

describe("acceptProxyProtocol", () => {
  it("decodes addresses and CIDRs of both families, with the default timeout", () => {
    const l = decoded(
      withListener(
        'mode: terminate, tls: S, acceptProxyProtocol: { trustedSources: ["10.0.0.0/8", "192.0.2.7", "fd00::/8", "::1"] }'
      )
    )
    expect(l.acceptProxyProtocol).toEqual({
      trustedSources: [
        { family: "IPv4", address: "10.0.0.0", prefix: 8 },
        { family: "IPv4", address: "192.0.2.7", prefix: 32 },
        { family: "IPv6", address: "fd00::", prefix: 8 },
        { family: "IPv6", address: "::1", prefix: 128 }
      ],
      timeoutMs: ConfigFile.defaults.proxyProtocolTimeoutMs
    })
    expect(l.acceptProxyProtocol!.trustedSources.map(ConfigFile.formatCidr)).toEqual([
      "10.0.0.0/8",
      "192.0.2.7",
      "fd00::/8",
      "::1"
    ])
  })

  it("is allowed on every mode, with a timeout", () => {
    const l = decoded(
      withListener('mode: originate, tls: C, acceptProxyProtocol: { trustedSources: ["127.0.0.1"], timeout: 2s }')
    )
    expect(l.acceptProxyProtocol?.timeoutMs).toBe(2000)
  })

  it("every rule, with its path", () => {
    expect(
      problems(
        withListener(
          'mode: terminate, tls: S, acceptProxyProtocol: { trustedSources: ["10.0.0.0/33", "lb.example", "0.0.0.0/0", "::/0", "1.2.3.4/"], timeout: 0 }'
        )
      )
    ).toEqual([
      'sleeve.yaml: listeners[0].acceptProxyProtocol.trustedSources[0]: expected an IP address or a CIDR such as "10.0.0.0/8" or "fd00::/8", got "10.0.0.0/33"',
      'sleeve.yaml: listeners[0].acceptProxyProtocol.trustedSources[1]: expected an IP address or a CIDR such as "10.0.0.0/8" or "fd00::/8", got "lb.example"',
      'sleeve.yaml: listeners[0].acceptProxyProtocol.trustedSources[2]: "0.0.0.0/0" trusts every address, so any client could claim any source address; list the load balancers',
      'sleeve.yaml: listeners[0].acceptProxyProtocol.trustedSources[3]: "::/0" trusts every address, so any client could claim any source address; list the load balancers',
      'sleeve.yaml: listeners[0].acceptProxyProtocol.trustedSources[4]: expected an IP address or a CIDR such as "10.0.0.0/8" or "fd00::/8", got "1.2.3.4/"',
      "sleeve.yaml: listeners[0].acceptProxyProtocol.timeout: must be above 0"
    ])
    expect(problems(withListener("mode: terminate, tls: S, acceptProxyProtocol: { trustedSources: [] }"))).toEqual([
      "sleeve.yaml: listeners[0].acceptProxyProtocol.trustedSources: needs at least one address or CIDR: the load balancers allowed to send a PROXY header"
    ])
    expect(problems(withListener("mode: terminate, tls: S, acceptProxyProtocol: { trusted: [] }"))).toEqual([
      'sleeve.yaml: listeners[0].acceptProxyProtocol.trusted: unknown key "trusted"',
      "sleeve.yaml: listeners[0].acceptProxyProtocol.trustedSources: required key is missing"
    ])
  })
})
