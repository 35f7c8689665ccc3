import { describe, expect, it } from "@effect/vitest"
import { Result } from "effect"
import * as Path from "node:path"
import * as Tls from "node:tls"
import * as ConfigFile from "../src/ConfigFile.ts"
import * as Dn from "../src/DistinguishedName.ts"

const FILE = "sleeve.yaml"

const decoded = (text: string, file = FILE): ConfigFile.SleeveConfig => {
  const r = ConfigFile.decode(text, file)
  if (Result.isFailure(r)) throw new Error(`expected the configuration to decode, got:\n${r.failure.message}`)
  return r.success
}

const errorOf = (text: string, file = FILE): ConfigFile.ConfigError => {
  const r = ConfigFile.decode(text, file)
  if (Result.isSuccess(r)) throw new Error("expected a ConfigError")
  return r.failure
}

/** The problems of a configuration that must not decode, one line each, as `sleeve check` prints them. */
const problems = (text: string, file = FILE): ReadonlyArray<string> => errorOf(text, file).message.split("\n")

const tlsOf = (config: ConfigFile.SleeveConfig, name: string): ConfigFile.TlsConfig => {
  const t = config.tls.get(name)
  if (t === undefined) throw new Error(`no TLS configuration ${name}`)
  return t
}

const dn = (s: string): Dn.DistinguishedName => Result.getOrThrow(Dn.parse(s))

/** A valid server configuration `S` and client configuration `C`, to which listeners are added. */
const twoConfigs = `
tls:
  S:
    type: server
    certificateFile: s.crt
    privateKeyFile: s.key
  C:
    type: client
    caFile: ca.pem
`

/** The shape of the configuration file in the issue: a mirror member with mutual TLS. */
const issueExample = `
# Sleeve configuration for mirror member node1
tls:
  MirrorServer:
    description: Mirror traffic from the other members
    type: server
    caFile: certs/mirror-ca.pem
    certificateFile: certs/node1.chain.pem
    privateKeyFile: certs/node1.key
    privateKeyType: EC
    privateKeyPassword: { env: SLEEVE_MIRROR_KEY_PASSWORD }
    protocols: { min: TLSv1.2, max: TLSv1.3 }
    verifyPeer: require
    verifyDepth: 2
    authorizedPeers:
      - "CN=node2,OU=Mirror,O=Example Corp"
      - "CN=arbiter,OU=Mirror,O=Example Corp"
    requireDualUse: true
  MirrorClient:
    type: client
    caFile: certs/mirror-ca.pem
    certificateFile: certs/node1.chain.pem
    privateKeyFile: certs/node1.key
    privateKeyPassword: { file: secrets/mirror-key-password }
    authorizedPeers: ["CN=node2,OU=Mirror,O=Example Corp"]
    requireDualUse: true
  Legacy:
    description: kept for reference
    enabled: false
    type: client
    verifyPeer: none
listeners:
  - name: mirror-in
    mode: terminate
    listen: "0.0.0.0:2188"
    target: "127.0.0.1:1972"
    tls: MirrorServer
    handshakeTimeout: 5s
    maxConnections: 16
  - name: mirror-out
    mode: originate
    listen: "127.0.0.1:12188"
    target: "node2.example.com:2188"
    tls: MirrorClient
    idleTimeout: 0
admin:
  listen: "127.0.0.1:9464"
drainTimeout: 1m
expiryWarning: 30d
`

describe("ConfigFile.decode: the issue's example file", () => {
  const config = decoded(issueExample, "/etc/sleeve/sleeve.yaml")

  it("decodes every TLS configuration with paths resolved from the file's folder", () => {
    expect(config.file).toBe("/etc/sleeve/sleeve.yaml")
    expect([...config.tls.keys()]).toEqual(["MirrorServer", "MirrorClient", "Legacy"])
    const server = tlsOf(config, "MirrorServer")
    expect(server).toEqual({
      name: "MirrorServer",
      description: "Mirror traffic from the other members",
      enabled: true,
      type: "server",
      caFile: "/etc/sleeve/certs/mirror-ca.pem",
      certificateFile: "/etc/sleeve/certs/node1.chain.pem",
      privateKeyFile: "/etc/sleeve/certs/node1.key",
      privateKeyType: "EC",
      privateKeyPassword: { _tag: "Env", name: "SLEEVE_MIRROR_KEY_PASSWORD" },
      minVersion: "TLSv1.2",
      maxVersion: "TLSv1.3",
      cipherList: ConfigFile.defaults.cipherList,
      cipherSuites: undefined,
      verifyPeer: "require",
      verifyDepth: 2,
      crlFile: undefined,
      crlStale: "reject",
      authorizedPeers: [dn("CN=node2,OU=Mirror,O=Example Corp"), dn("CN=arbiter,OU=Mirror,O=Example Corp")],
      requireDualUse: true
    })
    const client = tlsOf(config, "MirrorClient")
    expect(client.privateKeyPassword).toEqual({ _tag: "File", path: "/etc/sleeve/secrets/mirror-key-password" })
    // A client verifies its server unless told otherwise.
    expect(client.verifyPeer).toBe("require")
    expect(client.authorizedPeers.map(Dn.format)).toEqual(["CN=node2,OU=Mirror,O=Example Corp"])
    const legacy = tlsOf(config, "Legacy")
    expect(legacy.enabled).toBe(false)
    expect(legacy.description).toBe("kept for reference")
  })

  it("decodes the listeners with their defaults and the admin endpoint", () => {
    expect(config.listeners).toEqual([
      {
        name: "mirror-in",
        mode: "terminate",
        listen: { _tag: "Tcp", host: "0.0.0.0", port: 2188 },
        target: { _tag: "Tcp", host: "127.0.0.1", port: 1972 },
        tls: "MirrorServer",
        serverName: undefined,
        insecureSkipHostnameVerification: false,
        starttls: undefined,
        handshakeTimeoutMs: 5_000,
        idleTimeoutMs: ConfigFile.defaults.idleTimeoutMs,
        connectTimeoutMs: ConfigFile.defaults.connectTimeoutMs,
        maxConnections: 16,
        allowPlaintextNetwork: false
      },
      {
        name: "mirror-out",
        mode: "originate",
        listen: { _tag: "Tcp", host: "127.0.0.1", port: 12188 },
        target: { _tag: "Tcp", host: "node2.example.com", port: 2188 },
        tls: "MirrorClient",
        // The name checked against the server certificate defaults to the target host.
        serverName: "node2.example.com",
        insecureSkipHostnameVerification: false,
        starttls: undefined,
        handshakeTimeoutMs: ConfigFile.defaults.handshakeTimeoutMs,
        idleTimeoutMs: 0,
        connectTimeoutMs: ConfigFile.defaults.connectTimeoutMs,
        maxConnections: ConfigFile.defaults.maxConnections,
        allowPlaintextNetwork: false
      }
    ])
    expect(config.admin).toEqual({ listen: { _tag: "Tcp", host: "127.0.0.1", port: 9464 } })
    expect(config.drainTimeoutMs).toBe(60_000)
    expect(config.expiryWarningMs).toBe(30 * 86_400_000)
    expect(ConfigFile.listenersUsing(config, "MirrorServer").map((l) => l.name)).toEqual(["mirror-in"])
    expect(ConfigFile.listenersUsing(config, "Legacy")).toEqual([])
    expect(config.listeners.map(ConfigFile.tlsRole)).toEqual(["server", "client"])
  })

  it("reads the same document written as JSON", () => {
    const json = JSON.stringify({
      tls: {
        MirrorServer: {
          type: "server",
          caFile: "certs/mirror-ca.pem",
          certificateFile: "certs/node1.chain.pem",
          privateKeyFile: "certs/node1.key",
          privateKeyPassword: { env: "SLEEVE_MIRROR_KEY_PASSWORD" },
          verifyPeer: "require",
          authorizedPeers: ["CN=node2,OU=Mirror,O=Example Corp"],
          requireDualUse: true
        }
      },
      listeners: [
        { name: "mirror-in", mode: "terminate", listen: "0.0.0.0:2188", target: "127.0.0.1:1972", tls: "MirrorServer" }
      ],
      admin: { listen: "127.0.0.1:9464" },
      drainTimeout: 10
    })
    const fromJson = decoded(json, "/etc/sleeve/sleeve.json")
    const fromYaml = decoded(
      `
tls:
  MirrorServer:
    type: server
    caFile: certs/mirror-ca.pem
    certificateFile: certs/node1.chain.pem
    privateKeyFile: certs/node1.key
    privateKeyPassword: { env: SLEEVE_MIRROR_KEY_PASSWORD }
    verifyPeer: require
    authorizedPeers: ["CN=node2,OU=Mirror,O=Example Corp"]
    requireDualUse: true
listeners:
  - { name: mirror-in, mode: terminate, listen: "0.0.0.0:2188", target: "127.0.0.1:1972", tls: MirrorServer }
admin: { listen: "127.0.0.1:9464" }
drainTimeout: 10
`,
      "/etc/sleeve/sleeve.yaml"
    )
    expect({ ...fromJson, file: "" }).toEqual({ ...fromYaml, file: "" })
    expect(fromJson.file).toBe("/etc/sleeve/sleeve.json")
    expect(fromJson.drainTimeoutMs).toBe(10_000)
    // JSON errors are reported like YAML ones.
    expect(
      problems('{"tls": {"A": {"type": "client", "verifyPeer": "none", "verifyDepht": 3}}}', "sleeve.json")
    ).toEqual(['sleeve.json: tls.A.verifyDepht: unknown key "verifyDepht"'])
  })
})

describe("ConfigFile.decode: defaults", () => {
  const config = decoded(twoConfigs)

  it("TLS 1.2 minimum, TLS 1.3 maximum, verifyDepth 9, enabled, no description", () => {
    for (const t of config.tls.values()) {
      expect(t.minVersion).toBe("TLSv1.2")
      expect(t.maxVersion).toBe("TLSv1.3")
      expect(t.verifyDepth).toBe(9)
      expect(t.enabled).toBe(true)
      expect(t.description).toBe("")
      expect(t.requireDualUse).toBe(false)
      expect(t.authorizedPeers).toEqual([])
      expect(t.cipherList).toBe(ConfigFile.defaults.cipherList)
    }
  })

  it("verifyPeer: require for a client configuration, none for a server one", () => {
    expect(tlsOf(config, "C").verifyPeer).toBe("require")
    expect(tlsOf(config, "S").verifyPeer).toBe("none")
  })

  it("the default TLS 1.2 cipher list is forward-secret ECDHE with AEAD ciphers only, and OpenSSL accepts it", () => {
    const suites = ConfigFile.defaults.cipherList.split(":")
    expect(suites.length).toBeGreaterThan(0)
    const known = new Set(Tls.getCiphers().map((c) => c.toUpperCase()))
    for (const s of suites) {
      expect(s).toMatch(/^ECDHE-(ECDSA|RSA)-/)
      expect(s).toMatch(/-(GCM-SHA256|GCM-SHA384|CHACHA20-POLY1305)$|-GCM-|CHACHA20-POLY1305/)
      expect(known.has(s)).toBe(true)
    }
    expect(() => Tls.createSecureContext({ ciphers: ConfigFile.defaults.cipherList })).not.toThrow()
  })

  it("file-level defaults: admin on 127.0.0.1:9464, drain 30 s, expiry warning 14 days, no listeners", () => {
    expect(config.admin).toEqual({ listen: { _tag: "Tcp", host: "127.0.0.1", port: 9464 } })
    expect(config.drainTimeoutMs).toBe(30_000)
    expect(config.expiryWarningMs).toBe(14 * 86_400_000)
    expect(config.listeners).toEqual([])
  })

  it("listener defaults: timeouts, connection limit, STARTTLS settings", () => {
    const c = decoded(`${twoConfigs}
listeners:
  - { name: smtp, mode: starttls, protocol: smtp, listen: "127.0.0.1:2525", target: "127.0.0.1:25", tls: S }
  - { name: up, mode: starttls, protocol: imap, side: client, listen: "127.0.0.1:1143", target: "mail.example.com:143", tls: C }
`)
    const [smtp, up] = c.listeners
    expect(smtp?.starttls).toEqual({
      protocol: "smtp",
      side: "server",
      requireTls: true,
      maxCleartextBytes: 65_536,
      line: undefined,
      clientName: "localhost",
      negotiationTimeoutMs: 60_000
    })
    expect(smtp?.handshakeTimeoutMs).toBe(10_000)
    expect(smtp?.idleTimeoutMs).toBe(3_600_000)
    expect(smtp?.connectTimeoutMs).toBe(10_000)
    expect(smtp?.maxConnections).toBe(1024)
    expect(smtp?.serverName).toBeUndefined()
    expect(up?.starttls?.side).toBe("client")
    expect(up?.serverName).toBe("mail.example.com")
    expect(c.listeners.map(ConfigFile.tlsRole)).toEqual(["server", "client"])
  })
})

describe("ConfigFile.decode: every malformed class gives its exact message", () => {
  it("YAML syntax errors name the line and column", () => {
    expect(problems("tls:\n  MyCfg:\n    type: client\n    caFile: [a\n")).toEqual([
      "sleeve.yaml: line 5, column 1: invalid YAML: Flow sequence in block collection must be sufficiently indented and end with a ]"
    ])
    expect(problems("tls:\n  MyCfg:\n\ttype: client\n")).toEqual([
      "sleeve.yaml: line 3, column 1: invalid YAML: Tabs are not allowed as indentation"
    ])
    // A key given twice is an error, not "the last one wins".
    expect(problems("tls:\n  MyCfg:\n    type: client\n    verifyPeer: none\n    verifyPeer: none\n")).toEqual([
      "sleeve.yaml: line 5, column 5: invalid YAML: Map keys must be unique"
    ])
    expect(problems("")).toEqual(['sleeve.yaml: expected a mapping with "tls" and "listeners", got null'])
    expect(problems("- a\n- b\n")).toEqual([
      'sleeve.yaml: expected a mapping with "tls" and "listeners", got ["a","b"]'
    ])
  })

  it("unknown keys, at every level", () => {
    expect(
      problems(`
tls:
  MyCfg:
    type: client
    verifyPeer: none
    verifyPer: require
listeners:
  - { name: a, mode: originate, listen: "127.0.0.1:1", target: "h:2", tls: MyCfg, sni: h }
admin: { listen: "127.0.0.1:9000", token: x }
metrics: true
`)
    ).toEqual([
      'sleeve.yaml: metrics: unknown key "metrics"',
      'sleeve.yaml: tls.MyCfg.verifyPer: unknown key "verifyPer"',
      'sleeve.yaml: listeners[0].sni: unknown key "sni"',
      'sleeve.yaml: admin.token: unknown key "token"'
    ])
  })

  it("wrong types and missing keys", () => {
    expect(
      problems(`
tls:
  MyCfg:
    type: serve
    enabled: "no"
    verifyDepth: "3"
    authorizedPeers: "CN=node2"
    requireDualUse: yes
  Other:
    verifyPeer: none
`)
    ).toEqual([
      'sleeve.yaml: tls.MyCfg.enabled: expected boolean, got "no"',
      'sleeve.yaml: tls.MyCfg.type: expected "client" | "server" | "mirror", got "serve"',
      'sleeve.yaml: tls.MyCfg.verifyDepth: expected number, got "3"',
      'sleeve.yaml: tls.MyCfg.authorizedPeers: expected array, got "CN=node2"',
      'sleeve.yaml: tls.MyCfg.requireDualUse: expected boolean, got "yes"',
      "sleeve.yaml: tls.Other.type: required key is missing"
    ])
    expect(problems("tls:\n  A: { type: client, verifyPeer: none, verifyDepth: 1.5 }\n")).toEqual([
      "sleeve.yaml: tls.A.verifyDepth: expected an integer, got 1.5"
    ])
    expect(problems("listeners: []\n")).toEqual(["sleeve.yaml: tls: required key is missing"])
    expect(problems(`${twoConfigs}listeners:\n  - { name: a }\n`)).toEqual([
      "sleeve.yaml: listeners[0].mode: required key is missing",
      "sleeve.yaml: listeners[0].listen: required key is missing",
      "sleeve.yaml: listeners[0].target: required key is missing",
      "sleeve.yaml: listeners[0].tls: required key is missing"
    ])
  })

  it("a key password written in the file, or any other shape of privateKeyPassword, is refused with one rule", () => {
    const rule =
      "sleeve.yaml: tls.S.privateKeyPassword: expected { env: NAME }, { file: PATH } or { prompt: true } — the password itself never goes in the file"
    for (const shape of ["hunter2", "{ env: '' }", "{ prompt: false }", "{ env: A, file: B }", "{ env: 5 }", "{}"]) {
      expect(
        problems(
          `tls:\n  S:\n    type: server\n    certificateFile: s.crt\n    privateKeyFile: s.key\n    privateKeyPassword: ${shape}\n`
        )
      ).toEqual([rule])
    }
  })

  it("TLS 1.0 (and 1.1, SSL) requested: refused with the reason", () => {
    const cfg = (min: string) =>
      `tls:\n  MyCfg:\n    type: client\n    verifyPeer: none\n    protocols:\n      min: ${min}\n`
    const why =
      ": TLS 1.0/1.1 (and SSL) are refused — they are deprecated by RFC 8996 and lack modern AEAD ciphers; upgrade the peer to TLS 1.2 or later"
    expect(problems(cfg("TLSv1"))).toEqual([
      `sleeve.yaml: tls.MyCfg.protocols.min: expected "TLSv1.2" | "TLSv1.3", got "TLSv1"${why}`
    ])
    expect(problems(cfg("TLSv1.1"))).toEqual([
      `sleeve.yaml: tls.MyCfg.protocols.min: expected "TLSv1.2" | "TLSv1.3", got "TLSv1.1"${why}`
    ])
    expect(problems(cfg("SSLv3"))).toEqual([
      `sleeve.yaml: tls.MyCfg.protocols.min: expected "TLSv1.2" | "TLSv1.3", got "SSLv3"${why}`
    ])
    // Not a deprecated protocol, just a wrong value: no explanation.
    expect(problems(cfg("1.2"))).toEqual([
      'sleeve.yaml: tls.MyCfg.protocols.min: expected "TLSv1.2" | "TLSv1.3", got 1.2'
    ])
    expect(problems(`tls:\n  MyCfg: { type: client, verifyPeer: none, protocols: { max: TLSv1.0 } }\n`)).toEqual([
      `sleeve.yaml: tls.MyCfg.protocols.max: expected "TLSv1.2" | "TLSv1.3", got "TLSv1.0"${why}`
    ])
    expect(
      problems(`tls:\n  MyCfg: { type: client, verifyPeer: none, protocols: { min: TLSv1.3, max: TLSv1.2 } }\n`)
    ).toEqual(["sleeve.yaml: tls.MyCfg.protocols: min (TLSv1.3) is above max (TLSv1.2)"])
  })

  it("a listener referencing a missing, a disabled or a wrong-type TLS configuration", () => {
    expect(
      problems(`
tls:
  S: { type: server, certificateFile: s.crt, privateKeyFile: s.key }
  C: { type: client, caFile: ca.pem }
  Off: { type: server, enabled: false, certificateFile: s.crt, privateKeyFile: s.key }
listeners:
  - { name: a, mode: terminate, listen: "0.0.0.0:1", target: "127.0.0.1:1", tls: Missing }
  - { name: b, mode: terminate, listen: "0.0.0.0:2", target: "127.0.0.1:1", tls: Off }
  - { name: c, mode: terminate, listen: "0.0.0.0:3", target: "127.0.0.1:1", tls: C }
  - { name: d, mode: originate, listen: "0.0.0.0:4", target: "127.0.0.1:1", tls: S }
  - { name: e, mode: starttls, protocol: smtp, side: client, listen: "0.0.0.0:5", target: "127.0.0.1:1", tls: S }
  - { name: f, mode: starttls, protocol: smtp, listen: "0.0.0.0:6", target: "127.0.0.1:1", tls: C }
`)
    ).toEqual([
      'sleeve.yaml: listeners[0].tls: no TLS configuration named "Missing" (known: S, C, Off)',
      'sleeve.yaml: listeners[1].tls: TLS configuration "Off" is disabled (enabled: false)',
      'sleeve.yaml: listeners[2].tls: TLS configuration "C" is of type client, but a terminate listener needs type server',
      'sleeve.yaml: listeners[3].tls: TLS configuration "S" is of type server, but a originate listener needs type client',
      'sleeve.yaml: listeners[4].tls: TLS configuration "S" is of type server, but a starttls side: client listener needs type client',
      'sleeve.yaml: listeners[5].tls: TLS configuration "C" is of type client, but a starttls side: server listener needs type server'
    ])
    expect(
      problems(
        'tls: {}\nlisteners:\n  - { name: a, mode: terminate, listen: "0.0.0.0:1", target: "127.0.0.1:1", tls: X }\n'
      )
    ).toEqual(['sleeve.yaml: listeners[0].tls: no TLS configuration named "X"'])
  })

  it("every semantic problem of a file is listed at once: TLS configurations, listeners, then file-level settings", () => {
    const error = errorOf(
      `
tls:
  S:
    type: server
    certificateFile: s.crt
    verifyPeer: request
    authorizedPeers: ["CN=node2"]
  C:
    type: client
    verifyDepth: 101
listeners:
  - { name: a, mode: terminate, listen: "0.0.0.0:99999", target: "backend", tls: S, handshakeTimeout: 10 sec }
  - { name: a, mode: originate, listen: "unix:/run/a.sock", target: "h:0", tls: C, maxConnections: 0 }
drainTimeout: -1
`,
      "conf/sleeve.yaml"
    )
    expect(error._tag).toBe("ConfigError")
    expect(error.file).toBe("conf/sleeve.yaml")
    expect(error.problems.every((p) => p.severity === "error" && p.file === "conf/sleeve.yaml")).toBe(true)
    expect(error.message).toBe(
      [
        "conf/sleeve.yaml: tls.S.privateKeyFile: a server configuration needs certificateFile and privateKeyFile",
        "conf/sleeve.yaml: tls.S.caFile: verifyPeer: request needs a caFile with the certificate authorities to trust",
        "conf/sleeve.yaml: tls.S.authorizedPeers: needs verifyPeer: require (it is request); a DN is only trusted on a verified chain",
        "conf/sleeve.yaml: tls.C.caFile: verifyPeer: require needs a caFile with the certificate authorities to trust",
        "conf/sleeve.yaml: tls.C.verifyDepth: expected 0 to 100, got 101",
        "conf/sleeve.yaml: listeners[0].listen: port must be between 0 and 65535, got 99999",
        'conf/sleeve.yaml: listeners[0].target: expected "host:port", "[v6]:port" or "unix:/path", got "backend"',
        'conf/sleeve.yaml: listeners[0].handshakeTimeout: expected a duration such as "500ms", "10s", "5m" or "1h", got "10 sec"',
        "conf/sleeve.yaml: listeners[1].listen: listening on a UNIX socket is not supported; use host:port",
        "conf/sleeve.yaml: listeners[1].target: port 0 is not a target",
        "conf/sleeve.yaml: listeners[1].maxConnections: expected at least 1, got 0",
        'conf/sleeve.yaml: listeners[1].name: duplicate listener name "a" (also listeners[0])',
        "conf/sleeve.yaml: drainTimeout: expected a non-negative number of seconds, got -1"
      ].join("\n")
    )
    expect(error.problems[0]).toEqual({
      file: "conf/sleeve.yaml",
      path: "tls.S.privateKeyFile",
      rule: "a server configuration needs certificateFile and privateKeyFile",
      severity: "error"
    })
  })
})

describe("ConfigFile.decode: structural and semantic problems together", () => {
  it("a broken entry does not hide the problems of the others; listeners of a broken configuration are not blamed", () => {
    expect(
      problems(`
tls:
  S: { type: server, certificateFile: c, privateKeyFile: k, verifyPeer: maybe }
  C: { type: client, caFile: ca, protocols: { min: TLSv1 } }
  D: { type: client }
listeners:
  - { name: a, mode: terminate, listen: "0.0.0.0:1", target: "127.0.0.1:1", tls: S }
  - { name: b, mode: originate, listen: "0.0.0.0:1", target: "127.0.0.1:1", tls: D, colour: red }
  - { name: c, mode: originate, listen: "0.0.0.0:1", target: "127.0.0.1:1", tls: Nope }
admin: { listen: 9464 }
drainTimeout: true
expiryWarning: 2 weeks
colour: blue
`)
    ).toEqual([
      'sleeve.yaml: colour: unknown key "colour"',
      'sleeve.yaml: tls.S.verifyPeer: expected "none" | "request" | "require", got "maybe"',
      'sleeve.yaml: tls.C.protocols.min: expected "TLSv1.2" | "TLSv1.3", got "TLSv1": TLS 1.0/1.1 (and SSL) are refused — they are deprecated by RFC 8996 and lack modern AEAD ciphers; upgrade the peer to TLS 1.2 or later',
      "sleeve.yaml: tls.D.caFile: verifyPeer: require needs a caFile with the certificate authorities to trust",
      'sleeve.yaml: listeners[1].colour: unknown key "colour"',
      'sleeve.yaml: listeners[2].tls: no TLS configuration named "Nope" (known: S, C, D)',
      "sleeve.yaml: admin.listen: expected string, got 9464",
      "sleeve.yaml: listeners[2].listen: address 0.0.0.0:1 is also used by listeners[0]",
      "sleeve.yaml: drainTimeout: expected number | string, got true",
      'sleeve.yaml: expiryWarning: expected a duration such as "500ms", "10s", "5m" or "1h", got "2 weeks"'
    ])
  })

  it("an unreadable tls or listeners key", () => {
    expect(problems("tls:\nlisteners: 3\n")).toEqual([
      "sleeve.yaml: tls: expected object, got null",
      "sleeve.yaml: listeners: expected array, got 3"
    ])
    // Without a readable tls mapping no reference can be judged, so none is blamed.
    expect(
      problems(
        'tls: [1]\nlisteners:\n  - { name: a, mode: terminate, listen: "0.0.0.0:1", target: "127.0.0.1:1", tls: S }\n'
      )
    ).toEqual(["sleeve.yaml: tls: expected object, got [1]"])
  })
})

describe("ConfigFile.decode: TLS configuration rules", () => {
  const one = (body: string) => problems(`tls:\n  X: ${body}\n`)

  it("a server needs a certificate and a key; a certificate needs its key", () => {
    expect(one("{ type: server }")).toEqual([
      "sleeve.yaml: tls.X.certificateFile: a server configuration needs certificateFile and privateKeyFile"
    ])
    expect(one("{ type: server, privateKeyFile: k }")).toEqual([
      "sleeve.yaml: tls.X.certificateFile: a server configuration needs certificateFile and privateKeyFile"
    ])
    expect(one("{ type: client, verifyPeer: none, certificateFile: c }")).toEqual([
      "sleeve.yaml: tls.X.privateKeyFile: certificateFile and privateKeyFile go together"
    ])
    expect(one("{ type: client, verifyPeer: none, privateKeyFile: k }")).toEqual([
      "sleeve.yaml: tls.X.certificateFile: certificateFile and privateKeyFile go together"
    ])
    expect(one("{ type: client, verifyPeer: none, privateKeyPassword: { env: PW } }")).toEqual([
      "sleeve.yaml: tls.X.privateKeyPassword: set without a privateKeyFile"
    ])
  })

  it("verifying peers needs a caFile (fail closed, never the system store by accident)", () => {
    expect(one("{ type: client }")).toEqual([
      "sleeve.yaml: tls.X.caFile: verifyPeer: require needs a caFile with the certificate authorities to trust"
    ])
    expect(one("{ type: server, certificateFile: c, privateKeyFile: k, verifyPeer: request }")).toEqual([
      "sleeve.yaml: tls.X.caFile: verifyPeer: request needs a caFile with the certificate authorities to trust"
    ])
    // Without verification no CA is needed.
    expect(tlsOf(decoded("tls:\n  X: { type: client, verifyPeer: none }\n"), "X").caFile).toBeUndefined()
  })

  it("authorizedPeers and requireDualUse without verifyPeer: require are refused", () => {
    // server: verifyPeer defaults to none
    expect(
      one('{ type: server, certificateFile: c, privateKeyFile: k, caFile: ca, authorizedPeers: ["CN=node2"] }')
    ).toEqual([
      "sleeve.yaml: tls.X.authorizedPeers: needs verifyPeer: require (it is none); a DN is only trusted on a verified chain"
    ])
    expect(
      one(
        '{ type: server, certificateFile: c, privateKeyFile: k, caFile: ca, verifyPeer: request, authorizedPeers: ["CN=node2"], requireDualUse: true }'
      )
    ).toEqual([
      "sleeve.yaml: tls.X.authorizedPeers: needs verifyPeer: require (it is request); a DN is only trusted on a verified chain",
      "sleeve.yaml: tls.X.requireDualUse: needs verifyPeer: require (it is request)"
    ])
    expect(one('{ type: client, verifyPeer: none, authorizedPeers: ["CN=node2"] }')).toEqual([
      "sleeve.yaml: tls.X.authorizedPeers: needs verifyPeer: require (it is none); a DN is only trusted on a verified chain"
    ])
    // With verifyPeer: require it decodes.
    const ok = decoded(
      'tls:\n  X: { type: server, certificateFile: c, privateKeyFile: k, caFile: ca, verifyPeer: require, authorizedPeers: ["CN=node2"], requireDualUse: true }\n'
    )
    expect(tlsOf(ok, "X").authorizedPeers.map(Dn.format)).toEqual(["CN=node2"])
  })

  it("authorizedPeers must be distinguished names, and never the empty DN", () => {
    const cfg = (peers: string) => `tls:\n  X: { type: client, caFile: ca, authorizedPeers: ${peers} }\n`
    expect(problems(cfg('["CN=a,,"]'))).toEqual([
      "sleeve.yaml: tls.X.authorizedPeers[0]: not a distinguished name: expected an attribute type, found ',' at position 5"
    ])
    // An empty DN would authorize any verified certificate with an empty subject.
    expect(problems(cfg('["CN=ok", ""]'))).toEqual([
      "sleeve.yaml: tls.X.authorizedPeers[1]: an empty distinguished name is not allowed"
    ])
    // Parsed as structured DNs: an escaped comma stays inside the CN.
    const c = decoded(cfg('["CN=node1\\\\,O=Trusted", "cn=Node2, o=Example Corp"]'))
    const peers = tlsOf(c, "X").authorizedPeers
    expect(peers[0]?.rdns).toHaveLength(1)
    expect(peers.map(Dn.format)).toEqual(["CN=node1\\,O=Trusted", "CN=Node2,O=Example Corp"])
  })

  it("verifyDepth is between 0 and 100", () => {
    expect(one("{ type: client, verifyPeer: none, verifyDepth: -1 }")).toEqual([
      "sleeve.yaml: tls.X.verifyDepth: expected 0 to 100, got -1"
    ])
    expect(tlsOf(decoded("tls:\n  X: { type: client, verifyPeer: none, verifyDepth: 0 }\n"), "X").verifyDepth).toBe(0)
  })

  it("relative paths are resolved from the configuration file's folder, absolute ones are kept", () => {
    const text = `
tls:
  X:
    type: server
    caFile: ../pki/ca.pem
    certificateFile: /srv/tls/node1.crt
    privateKeyFile: keys/node1.key
    privateKeyPassword: { file: ./secrets/pw }
    verifyPeer: require
    crlFile: crl.pem
`
    const abs = tlsOf(decoded(text, "/etc/sleeve/sleeve.yaml"), "X")
    expect(abs.caFile).toBe("/etc/pki/ca.pem")
    expect(abs.certificateFile).toBe("/srv/tls/node1.crt")
    expect(abs.privateKeyFile).toBe("/etc/sleeve/keys/node1.key")
    expect(abs.privateKeyPassword).toEqual({ _tag: "File", path: "/etc/sleeve/secrets/pw" })
    expect(abs.crlFile).toBe("/etc/sleeve/crl.pem")
    // A relative configuration path is taken from the working directory, then its folder anchors the rest.
    const rel = decoded(text, "deploy/sleeve.yaml")
    expect(rel.file).toBe(Path.resolve("deploy/sleeve.yaml"))
    expect(tlsOf(rel, "X").privateKeyFile).toBe(Path.resolve("deploy/keys/node1.key"))
    expect(tlsOf(rel, "X").caFile).toBe(Path.resolve("pki/ca.pem"))
  })

  it("cipher lists and password sources are carried over as written", () => {
    const c = decoded(`
tls:
  X:
    type: server
    certificateFile: c
    privateKeyFile: k
    privateKeyPassword: { prompt: true }
    cipherList: ECDHE-ECDSA-AES256-GCM-SHA384
    cipherSuites: TLS_AES_256_GCM_SHA384
    protocols: { min: TLSv1.3 }
`)
    const x = tlsOf(c, "X")
    expect(x.privateKeyPassword).toEqual({ _tag: "Prompt" })
    expect(x.cipherList).toBe("ECDHE-ECDSA-AES256-GCM-SHA384")
    expect(x.cipherSuites).toBe("TLS_AES_256_GCM_SHA384")
    expect([x.minVersion, x.maxVersion]).toEqual(["TLSv1.3", "TLSv1.3"])
  })
})

describe("ConfigFile.decode: listener rules", () => {
  const withListeners = (listeners: string) => `${twoConfigs}listeners:\n${listeners}`

  it("listen and target addresses: host:port, [v6]:port, unix:/path", () => {
    const c = decoded(
      withListeners(`  - { name: a, mode: terminate, listen: "[::]:8443", target: "unix:/run/postgresql/.s.PGSQL.5432", tls: S }
  - { name: b, mode: originate, listen: "[::1]:15432", target: "[2001:db8::1]:5432", tls: C }
  - { name: c, mode: originate, listen: "localhost:0", target: "db.internal:5432", tls: C, serverName: db.example.com }
`)
    )
    expect(c.listeners.map((l) => [l.listen, l.target])).toEqual([
      [
        { _tag: "Tcp", host: "::", port: 8443 },
        { _tag: "Unix", path: "/run/postgresql/.s.PGSQL.5432" }
      ],
      [
        { _tag: "Tcp", host: "::1", port: 15432 },
        { _tag: "Tcp", host: "2001:db8::1", port: 5432 }
      ],
      [
        { _tag: "Tcp", host: "localhost", port: 0 },
        { _tag: "Tcp", host: "db.internal", port: 5432 }
      ]
    ])
    expect(c.listeners.map((l) => l.serverName)).toEqual([undefined, "2001:db8::1", "db.example.com"])
  })

  it("bad addresses", () => {
    expect(
      problems(
        withListeners(`  - { name: a, mode: terminate, listen: "8443", target: "::1:5432", tls: S }
  - { name: b, mode: terminate, listen: "0.0.0.0:65536", target: "unix:", tls: S }
  - { name: c, mode: terminate, listen: "unix:/run/sleeve.sock", target: "[::1]5432", tls: S }
`)
      )
    ).toEqual([
      'sleeve.yaml: listeners[0].listen: expected "host:port", "[v6]:port" or "unix:/path", got "8443"',
      'sleeve.yaml: listeners[0].target: expected "host:port", "[v6]:port" or "unix:/path", got "::1:5432"',
      "sleeve.yaml: listeners[1].listen: port must be between 0 and 65535, got 65536",
      'sleeve.yaml: listeners[1].target: expected "unix:/path", got "unix:"',
      "sleeve.yaml: listeners[2].listen: listening on a UNIX socket is not supported; use host:port",
      'sleeve.yaml: listeners[2].target: expected "host:port", "[v6]:port" or "unix:/path", got "[::1]5432"'
    ])
    expect(problems(`${twoConfigs}admin: { listen: "unix:/run/admin.sock" }\n`)).toEqual([
      "sleeve.yaml: admin.listen: the admin endpoint listens on host:port"
    ])
    expect(problems(`${twoConfigs}admin: { listen: "9464" }\n`)).toEqual([
      'sleeve.yaml: admin.listen: expected "host:port", "[v6]:port" or "unix:/path", got "9464"'
    ])
  })

  it("duplicate listener names and addresses, with the file's indices", () => {
    expect(
      problems(
        withListeners(`  - { name: broken, mode: terminate, listen: "nowhere", target: "127.0.0.1:1", tls: S }
  - { name: a, mode: terminate, listen: "0.0.0.0:8443", target: "127.0.0.1:1", tls: S }
  - { name: a, mode: terminate, listen: "0.0.0.0:8444", target: "127.0.0.1:1", tls: S }
  - { name: b, mode: terminate, listen: "0.0.0.0:8443", target: "127.0.0.1:1", tls: S }
  - { name: c, mode: terminate, listen: "[::1]:8443", target: "127.0.0.1:1", tls: S }
  - { name: d, mode: terminate, listen: "[::1]:8443", target: "127.0.0.1:1", tls: Nope }
  - { name: e, mode: terminate, listen: "127.0.0.1:9464", target: "127.0.0.1:1", tls: S }
`)
      )
    ).toEqual([
      'sleeve.yaml: listeners[0].listen: expected "host:port", "[v6]:port" or "unix:/path", got "nowhere"',
      'sleeve.yaml: listeners[5].tls: no TLS configuration named "Nope" (known: S, C)',
      'sleeve.yaml: listeners[2].name: duplicate listener name "a" (also listeners[1])',
      "sleeve.yaml: listeners[3].listen: address 0.0.0.0:8443 is also used by listeners[1]",
      "sleeve.yaml: listeners[5].listen: address [::1]:8443 is also used by listeners[4]",
      "sleeve.yaml: listeners[6].listen: address 127.0.0.1:9464 is also used by the admin endpoint (admin.listen)"
    ])
    // Port 0 (a free port chosen by the system) never clashes.
    const c = decoded(
      withListeners(`  - { name: a, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:1", tls: S }
  - { name: b, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:1", tls: S }
`)
    )
    expect(c.listeners).toHaveLength(2)
  })

  it("durations: seconds as a number, or <n>ms|s|m|h|d; idleTimeout 0 disables, other timeouts must be above 0", () => {
    const c = decoded(
      withListeners(`  - { name: a, mode: terminate, listen: "0.0.0.0:1", target: "127.0.0.1:1", tls: S, handshakeTimeout: 500ms, idleTimeout: 0, connectTimeout: 2.5 }
  - { name: b, mode: terminate, listen: "0.0.0.0:2", target: "127.0.0.1:1", tls: S, handshakeTimeout: 1.5s, idleTimeout: 2h, connectTimeout: 1m }
drainTimeout: 0
expiryWarning: 1d
`)
    )
    expect(c.listeners.map((l) => [l.handshakeTimeoutMs, l.idleTimeoutMs, l.connectTimeoutMs])).toEqual([
      [500, 0, 2_500],
      [1_500, 7_200_000, 60_000]
    ])
    expect(c.drainTimeoutMs).toBe(0)
    expect(c.expiryWarningMs).toBe(86_400_000)
    expect(
      problems(
        withListeners(`  - { name: a, mode: terminate, listen: "0.0.0.0:1", target: "127.0.0.1:1", tls: S, handshakeTimeout: 0, connectTimeout: 0s, idleTimeout: "1 week" }
expiryWarning: 30 days
`)
      )
    ).toEqual([
      'sleeve.yaml: listeners[0].idleTimeout: expected a duration such as "500ms", "10s", "5m" or "1h", got "1 week"',
      "sleeve.yaml: listeners[0].handshakeTimeout: must be above 0",
      "sleeve.yaml: listeners[0].connectTimeout: must be above 0",
      'sleeve.yaml: expiryWarning: expected a duration such as "500ms", "10s", "5m" or "1h", got "30 days"'
    ])
  })

  it("STARTTLS fields only with mode: starttls; a protocol is required; line needs its command and reply", () => {
    expect(
      problems(
        withListeners(`  - { name: a, mode: terminate, listen: "0.0.0.0:1", target: "127.0.0.1:1", tls: S, protocol: smtp, requireTls: false }
  - { name: b, mode: starttls, listen: "0.0.0.0:2", target: "127.0.0.1:1", tls: S }
  - { name: c, mode: starttls, protocol: line, listen: "0.0.0.0:3", target: "127.0.0.1:1", tls: S }
  - { name: d, mode: starttls, protocol: smtp, line: { command: STARTTLS, reply: OK }, listen: "0.0.0.0:4", target: "127.0.0.1:1", tls: S }
  - { name: e, mode: starttls, protocol: smtp, maxCleartextBytes: 10, listen: "0.0.0.0:5", target: "127.0.0.1:1", tls: S }
`)
      )
    ).toEqual([
      "sleeve.yaml: listeners[0].protocol: only applies to mode: starttls",
      "sleeve.yaml: listeners[0].requireTls: only applies to mode: starttls",
      "sleeve.yaml: listeners[1].protocol: mode: starttls needs a protocol (smtp | imap | pop3 | ldap | postgres | line)",
      "sleeve.yaml: listeners[2].line: protocol: line needs line: { command, reply }",
      "sleeve.yaml: listeners[3].line: only applies to protocol: line",
      "sleeve.yaml: listeners[4].maxCleartextBytes: expected at least 64, got 10"
    ])
    const c = decoded(
      withListeners(`  - name: custom
    mode: starttls
    protocol: line
    line: { command: "STARTTLS", reply: "OK go" }
    requireTls: false
    maxCleartextBytes: 1024
    clientName: sleeve.example.com
    listen: "127.0.0.1:3"
    target: "127.0.0.1:1"
    tls: S
`)
    )
    expect(c.listeners[0]?.starttls).toEqual({
      protocol: "line",
      side: "server",
      requireTls: false,
      maxCleartextBytes: 1024,
      line: { command: "STARTTLS", reply: "OK go" },
      clientName: "sleeve.example.com",
      negotiationTimeoutMs: 60_000
    })
  })

  it("what Sleeve itself sends in a STARTTLS dialogue must be one clean protocol line", () => {
    expect(
      problems(
        withListeners(`  - { name: a, mode: starttls, protocol: smtp, side: client, clientName: "evil\\r\\nRCPT TO:<x>", listen: "0.0.0.0:1", target: "127.0.0.1:25", tls: C }
  - { name: b, mode: starttls, protocol: line, line: { command: "STARTTLS\\n", reply: "\\u0100K" }, listen: "0.0.0.0:2", target: "127.0.0.1:1", tls: S }
`)
      )
    ).toEqual([
      'sleeve.yaml: listeners[0].clientName: expected a domain or an address literal, got "evil\\r\\nRCPT TO:<x>"',
      "sleeve.yaml: listeners[1].line.command: expected 1 to 1000 Latin-1 characters without CR, LF or NUL",
      "sleeve.yaml: listeners[1].line.reply: expected 1 to 1000 Latin-1 characters without CR, LF or NUL"
    ])
  })

  it("serverName and insecureSkipHostnameVerification only apply to client-side TLS", () => {
    expect(
      problems(
        withListeners(`  - { name: a, mode: terminate, listen: "0.0.0.0:1", target: "127.0.0.1:1", tls: S, serverName: h }
  - { name: b, mode: terminate, listen: "0.0.0.0:2", target: "127.0.0.1:1", tls: S, insecureSkipHostnameVerification: true }
`)
      )
    ).toEqual([
      "sleeve.yaml: listeners[0].serverName: only applies to client-side TLS",
      "sleeve.yaml: listeners[1].insecureSkipHostnameVerification: only applies to client-side TLS"
    ])
    const c = decoded(
      withListeners(
        '  - { name: a, mode: originate, listen: "127.0.0.1:1", target: "10.0.0.5:5432", tls: C, insecureSkipHostnameVerification: true }\n'
      )
    )
    expect(c.listeners[0]?.insecureSkipHostnameVerification).toBe(true)
  })
})

describe("ConfigFile: addresses and durations", () => {
  const ok = <A>(r: Result.Result<A, string>): A => {
    if (Result.isFailure(r)) throw new Error(r.failure)
    return r.success
  }
  const fail = <A>(r: Result.Result<A, string>): string => {
    if (Result.isSuccess(r)) throw new Error("expected a failure")
    return r.failure
  }

  it("parseAddress / formatAddress round trip", () => {
    const cases: ReadonlyArray<[string, ConfigFile.Address]> = [
      ["127.0.0.1:8443", { _tag: "Tcp", host: "127.0.0.1", port: 8443 }],
      ["0.0.0.0:0", { _tag: "Tcp", host: "0.0.0.0", port: 0 }],
      ["db-1.example.com:5432", { _tag: "Tcp", host: "db-1.example.com", port: 5432 }],
      ["[::1]:65535", { _tag: "Tcp", host: "::1", port: 65535 }],
      ["[fe80::1%eth0]:22", { _tag: "Tcp", host: "fe80::1%eth0", port: 22 }],
      ["[::ffff:10.0.0.1]:80", { _tag: "Tcp", host: "::ffff:10.0.0.1", port: 80 }],
      ["unix:/var/run/app.sock", { _tag: "Unix", path: "/var/run/app.sock" }]
    ]
    for (const [text, address] of cases) {
      expect(ok(ConfigFile.parseAddress(text))).toEqual(address)
      expect(ConfigFile.formatAddress(address)).toBe(text)
    }
  })

  it("parseAddress refuses what is not an address", () => {
    const shape = (s: string) => `expected "host:port", "[v6]:port" or "unix:/path", got "${s}"`
    for (const s of [
      "",
      "host",
      ":80",
      "host:",
      "host:port",
      "::1:80",
      "[::1]",
      "[::1]80",
      "[zz::1]:80",
      "a b:80",
      "h:123456"
    ]) {
      expect(fail(ConfigFile.parseAddress(s))).toBe(shape(s))
    }
    expect(fail(ConfigFile.parseAddress("h:70000"))).toBe("port must be between 0 and 65535, got 70000")
    expect(fail(ConfigFile.parseAddress("unix:"))).toBe('expected "unix:/path", got "unix:"')
  })

  it("parseDuration: seconds, or a number with a unit; milliseconds out", () => {
    const cases: ReadonlyArray<[number | string, number]> = [
      [0, 0],
      [10, 10_000],
      [0.25, 250],
      ["500ms", 500],
      ["10s", 10_000],
      ["1.5s", 1_500],
      ["5m", 300_000],
      ["1h", 3_600_000],
      ["2d", 172_800_000],
      [" 3 s ", 3_000]
    ]
    for (const [input, ms] of cases) expect(ok(ConfigFile.parseDuration(input))).toBe(ms)
    const unit = (s: string) => `expected a duration such as "500ms", "10s", "5m" or "1h", got "${s}"`
    for (const s of ["10", "-1s", "1 week", "1w", "s", "", "1e3s"])
      expect(fail(ConfigFile.parseDuration(s))).toBe(unit(s))
    expect(fail(ConfigFile.parseDuration(-1))).toBe("expected a non-negative number of seconds, got -1")
    expect(fail(ConfigFile.parseDuration(Number.POSITIVE_INFINITY))).toBe(
      "expected a non-negative number of seconds, got Infinity"
    )
    expect(fail(ConfigFile.parseDuration(Number.NaN))).toBe("expected a non-negative number of seconds, got NaN")
  })

  it("formatProblem: file, path, warning marker", () => {
    expect(ConfigFile.formatProblem({ file: "s.yaml", path: "", rule: "broken", severity: "error" })).toBe(
      "s.yaml: broken"
    )
    expect(
      ConfigFile.formatProblem({
        file: "s.yaml",
        path: "tls.A.certificateFile",
        rule: "expires soon",
        severity: "warning"
      })
    ).toBe("s.yaml: tls.A.certificateFile: warning: expires soon")
  })
})

describe("type: mirror (one entry for %MirrorServer and %MirrorClient)", () => {
  const mirror = `
tls:
  Mirror:
    type: mirror
    caFile: ca.pem
    certificateFile: node.crt
    privateKeyFile: node.key
    authorizedPeers: ["CN=node2,O=Example"]
listeners:
  - { name: in, mode: terminate, listen: "127.0.0.1:2188", target: "127.0.0.1:2189", tls: Mirror }
  - { name: out, mode: originate, listen: "127.0.0.1:2190", target: "node2.example:2188", tls: Mirror }
`
  it("is referenced by a terminate and an originate listener, with mutual verification and dual use on", () => {
    const c = decoded(mirror)
    const m = tlsOf(c, "Mirror")
    expect(m.type).toBe("mirror")
    expect(m.verifyPeer).toBe("require")
    expect(m.requireDualUse).toBe(true)
    expect(c.listeners.map((l) => [l.name, l.tls, ConfigFile.tlsRole(l)])).toEqual([
      ["in", "Mirror", "server"],
      ["out", "Mirror", "client"]
    ])
  })

  it("refuses to verify less than require, and needs a certificate and key", () => {
    expect(
      problems(`
tls:
  Mirror:
    type: mirror
    caFile: ca.pem
    verifyPeer: request
`)
    ).toEqual([
      'sleeve.yaml: tls.Mirror.verifyPeer: a mirror configuration authenticates its peer both ways: expected "require", got "request"',
      "sleeve.yaml: tls.Mirror.certificateFile: a mirror configuration needs certificateFile and privateKeyFile"
    ])
  })
})

describe("negotiationTimeout (starttls)", () => {
  const withListener = (extra: string, mode = "starttls") => `
tls:
  S:
    type: server
    certificateFile: s.crt
    privateKeyFile: s.key
listeners:
  - name: l
    mode: ${mode}
    listen: "127.0.0.1:2525"
    target: "127.0.0.1:25"
    tls: S
${mode === "starttls" ? "    protocol: smtp\n" : ""}${extra}`
  it("defaults to 60 s and accepts a duration", () => {
    expect(decoded(withListener("")).listeners[0]?.starttls?.negotiationTimeoutMs).toBe(60_000)
    expect(decoded(withListener("    negotiationTimeout: 5s\n")).listeners[0]?.starttls?.negotiationTimeoutMs).toBe(
      5000
    )
  })
  it("only applies to mode: starttls and must be above 0", () => {
    expect(problems(withListener("    negotiationTimeout: 5s\n", "terminate"))).toEqual([
      "sleeve.yaml: listeners[0].negotiationTimeout: only applies to mode: starttls"
    ])
    expect(problems(withListener("    negotiationTimeout: 0s\n"))).toEqual([
      "sleeve.yaml: listeners[0].negotiationTimeout: must be above 0"
    ])
  })
})

describe("plaintext guardrails (issue 13 §3)", () => {
  const head = `tls:
  S: { type: server, certificateFile: c, privateKeyFile: k }
  C: { type: client, caFile: ca }
`
  const withListeners = (listeners: string, top = "") =>
    `${head}${top}listeners:${listeners === "" ? " []" : ""}\n${listeners}`
  const rule = (why: string, shown: string) =>
    `plaintext on the network: ${why}, and ${shown} is not loopback or a UNIX socket ` +
    "(a host name other than localhost counts as network); use 127.0.0.1, [::1], localhost or unix:/path, " +
    `or set allowPlaintextNetwork: true on this listener to accept it (logged as a warning at every start)`

  it("the plaintext side of each mode must stay on the host; the TLS side may be anywhere", () => {
    expect(
      problems(
        withListeners(`  - { name: t, mode: terminate, listen: "0.0.0.0:1", target: "10.0.0.5:80", tls: S }
  - { name: o, mode: originate, listen: "0.0.0.0:2", target: "db.example.com:5432", tls: C }
  - { name: ss, mode: starttls, protocol: smtp, listen: "0.0.0.0:3", target: "mail-app:25", tls: S }
  - { name: sf, mode: starttls, protocol: smtp, requireTls: false, listen: "0.0.0.0:4", target: "127.0.0.1:25", tls: S }
  - { name: sc, mode: starttls, protocol: imap, side: client, listen: "[::]:5", target: "mail.example.com:143", tls: C }
`)
      )
    ).toEqual([
      `sleeve.yaml: listeners[0].target: ${rule("terminate forwards the decrypted bytes to target", "10.0.0.5:80")}`,
      `sleeve.yaml: listeners[1].listen: ${rule("originate accepts the application's plaintext on listen", "0.0.0.0:2")}`,
      `sleeve.yaml: listeners[2].target: ${rule("a server-side starttls listener forwards the decrypted bytes to target", "mail-app:25")}`,
      `sleeve.yaml: listeners[3].listen: ${rule("with requireTls: false, a client that never sends STARTTLS is relayed in plaintext from listen", "0.0.0.0:4")}`,
      `sleeve.yaml: listeners[4].listen: ${rule("a client-side starttls listener accepts the application's plaintext on listen", "[::]:5")}`
    ])
  })

  it("loopback literals, localhost and UNIX sockets stay on the host; other names and wildcard addresses do not", () => {
    const c = decoded(
      withListeners(`  - { name: a, mode: terminate, listen: "0.0.0.0:1", target: "127.0.0.2:80", tls: S }
  - { name: b, mode: terminate, listen: "0.0.0.0:2", target: "[::1]:80", tls: S }
  - { name: c, mode: terminate, listen: "0.0.0.0:3", target: "LocalHost:80", tls: S }
  - { name: d, mode: terminate, listen: "0.0.0.0:4", target: "unix:/run/app.sock", tls: S }
  - { name: e, mode: terminate, listen: "0.0.0.0:5", target: "[::ffff:127.0.0.1]:80", tls: S }
  - { name: f, mode: originate, listen: "localhost:6", target: "db.example.com:5432", tls: C }
  - { name: g, mode: starttls, protocol: smtp, requireTls: false, listen: "127.0.0.1:7", target: "127.0.0.1:25", tls: S }
`)
    )
    expect(c.listeners.map((l) => l.allowPlaintextNetwork)).toEqual([false, false, false, false, false, false, false])
    expect(ConfigFile.plaintextWarnings(c)).toEqual([])
    for (const host of ["127.0.0.1", "127.9.9.9", "::1", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1"]) {
      expect(ConfigFile.isLoopbackIp(host)).toBe(true)
    }
    for (const host of ["0.0.0.0", "::", "10.0.0.1", "128.0.0.1", "::ffff:10.0.0.1", "fe80::1", "localhost", "app"]) {
      expect(ConfigFile.isLoopbackIp(host)).toBe(false)
    }
    // `localhost.example.com` is a name like any other: network.
    expect(
      problems(
        withListeners(
          `  - { name: a, mode: terminate, listen: "0.0.0.0:1", target: "localhost.example.com:80", tls: S }\n`
        )
      )
    ).toEqual([
      `sleeve.yaml: listeners[0].target: ${rule("terminate forwards the decrypted bytes to target", "localhost.example.com:80")}`
    ])
  })

  it("allowPlaintextNetwork: true accepts a plaintext side on the network, with a warning for check and run", () => {
    const c = decoded(
      withListeners(`  - { name: legacy, mode: terminate, listen: "0.0.0.0:1", target: "10.0.0.5:80", tls: S, allowPlaintextNetwork: true }
  - { name: local, mode: terminate, listen: "0.0.0.0:2", target: "127.0.0.1:80", tls: S, allowPlaintextNetwork: true }
  - { name: plain, mode: terminate, listen: "0.0.0.0:3", target: "127.0.0.1:81", tls: S }
`)
    )
    expect(c.listeners.map((l) => l.allowPlaintextNetwork)).toEqual([true, true, false])
    expect(ConfigFile.plaintextWarnings(c).map(ConfigFile.formatProblem)).toEqual([
      `${c.file}: listeners[0].allowPlaintextNetwork: warning: listener "legacy" carries application bytes in plaintext over the network: target 10.0.0.5:80`,
      `${c.file}: listeners[1].allowPlaintextNetwork: warning: listener "local" allows plaintext on the network, but none of its plaintext sides leaves this host`
    ])
    expect(
      problems(
        withListeners(
          `  - { name: a, mode: terminate, listen: "0.0.0.0:1", target: "127.0.0.1:80", tls: S, allowPlaintextNetwork: 1 }\n`
        )
      )
    ).toEqual(["sleeve.yaml: listeners[0].allowPlaintextNetwork: expected boolean, got 1"])
  })

  it("policy.requireTls forbids the override and a STARTTLS plaintext fallback off the host, and says why", () => {
    const policy = "policy:\n  requireTls: true\n"
    expect(decoded(withListeners("", policy)).policy).toEqual({ requireTls: true })
    expect(decoded(withListeners("")).policy).toEqual({ requireTls: false })
    expect(
      problems(
        withListeners(
          `  - { name: a, mode: terminate, listen: "0.0.0.0:1", target: "10.0.0.5:80", tls: S, allowPlaintextNetwork: true }
  - { name: b, mode: terminate, listen: "0.0.0.0:2", target: "127.0.0.1:80", tls: S, allowPlaintextNetwork: true }
  - { name: c, mode: originate, listen: "0.0.0.0:3", target: "db.example.com:5432", tls: C }
  - { name: d, mode: starttls, protocol: smtp, requireTls: false, listen: "0.0.0.0:4", target: "127.0.0.1:25", tls: S }
`,
          policy
        )
      )
    ).toEqual([
      "sleeve.yaml: listeners[0].allowPlaintextNetwork: policy.requireTls forbids plaintext application bytes off this host, so this override is not allowed; put the application on the same host (loopback or unix:/path) or remove policy.requireTls",
      "sleeve.yaml: listeners[0].target: plaintext on the network: terminate forwards the decrypted bytes to target, and 10.0.0.5:80 is not loopback or a UNIX socket; policy.requireTls forbids that (use 127.0.0.1, [::1], localhost or unix:/path)",
      "sleeve.yaml: listeners[1].allowPlaintextNetwork: policy.requireTls forbids plaintext application bytes off this host, so this override is not allowed; put the application on the same host (loopback or unix:/path) or remove policy.requireTls",
      "sleeve.yaml: listeners[2].listen: plaintext on the network: originate accepts the application's plaintext on listen, and 0.0.0.0:3 is not loopback or a UNIX socket; policy.requireTls forbids that (use 127.0.0.1, [::1], localhost or unix:/path)",
      "sleeve.yaml: listeners[3].requireTls: policy.requireTls forbids requireTls: false here: listen 0.0.0.0:4 is not loopback, so a client that never sends STARTTLS would be relayed in plaintext over the network; set requireTls: true"
    ])
    // Everything on the host, STARTTLS required on the network side: allowed under the policy.
    const ok = decoded(
      withListeners(
        `  - { name: a, mode: terminate, listen: "0.0.0.0:1", target: "unix:/run/app.sock", tls: S }
  - { name: b, mode: originate, listen: "127.0.0.1:2", target: "db.example.com:5432", tls: C }
  - { name: c, mode: starttls, protocol: smtp, listen: "0.0.0.0:3", target: "127.0.0.1:25", tls: S }
  - { name: d, mode: starttls, protocol: smtp, requireTls: false, listen: "127.0.0.1:4", target: "127.0.0.1:26", tls: S }
`,
        policy
      )
    )
    expect(ok.listeners).toHaveLength(4)
    expect(problems(withListeners("", "policy:\n  requireTls: yes\n  other: 1\n"))).toEqual([
      'sleeve.yaml: policy.other: unknown key "other"',
      'sleeve.yaml: policy.requireTls: expected boolean, got "yes"'
    ])
  })
})

describe("crlFile and crlStale (issue 13 §2)", () => {
  it("crlStale defaults to reject, accepts warn, needs a crlFile; a CRL needs peer verification", () => {
    const c = decoded(`tls:
  A: { type: server, certificateFile: c, privateKeyFile: k, caFile: ca, verifyPeer: require, crlFile: crl.pem }
  B: { type: client, caFile: ca, crlFile: crl.pem, crlStale: warn }
`)
    expect(tlsOf(c, "A").crlStale).toBe("reject")
    expect(tlsOf(c, "B").crlStale).toBe("warn")
    expect(
      problems(`tls:
  A: { type: server, certificateFile: c, privateKeyFile: k, crlFile: crl.pem }
  B: { type: client, caFile: ca, crlStale: warn }
  C: { type: client, caFile: ca, crlFile: crl.pem, crlStale: never }
`)
    ).toEqual([
      "sleeve.yaml: tls.A.crlFile: has no effect with verifyPeer: none (no peer certificate is verified); set verifyPeer or remove it",
      "sleeve.yaml: tls.B.crlStale: only applies with a crlFile",
      'sleeve.yaml: tls.C.crlStale: expected "reject" | "warn", got "never"'
    ])
  })
})
