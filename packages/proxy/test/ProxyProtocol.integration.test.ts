/**
 * The PROXY protocol on real sockets, with real third-party parsers.
 *
 * Sending (`proxyProtocol`): a terminate listener in front of HAProxy's `accept-proxy` HTTP
 * frontend, which answers with the client address and the SNI (`fc_pp_authority`) it parsed
 * from Sleeve's header — Debian's HAProxy 2.6 has no `fc_pp_tlv`, so the TLVs no real parser here
 * can show (PP2_TYPE_SSL and its sub-TLVs, Sleeve's DN and TLS-configuration TLVs) are checked
 * on a raw target socket with the codec, against what the client negotiated, and compared with
 * the header HAProxy's own TLS frontend sends for the same client (`send-proxy-v2` with
 * `proxy-v2-options ssl,cert-cn,ssl-cipher,authority`); v1 through HAProxy and nginx's stream
 * `proxy_protocol` listener; and a server-side STARTTLS (postgres) listener whose header follows
 * the upgrade and precedes the app's first byte.
 *
 * Receiving (`acceptProxyProtocol`): HAProxy as the load balancer in front (`send-proxy-v2` and
 * `send-proxy`), the client on 127.0.0.2 so that its address differs from HAProxy's: Sleeve's
 * event log (accepted, handshake_ok) and the header it sends onward name the real client; and
 * every refusal (untrusted source, malformed, timeout, closed) is counted, logged once, and the
 * listener keeps serving.
 */
import { afterAll, afterEach, assert, beforeAll, describe, it } from "@effect/vitest"
import { MetricName } from "@sleeve/metrics/Metrics"
import { close, listen, makeConnections } from "@sleeve/testing/Net"
import { eventually, within } from "@sleeve/testing/Wait"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Tls from "node:tls"
import * as PP from "../src/ProxyProtocol.ts"
import {
  type Cleanup,
  clientTls,
  connectTcp,
  connectTls,
  type DataPki,
  makeCleanup,
  makeDataPki,
  makeReader,
  type ProxyUnderTest,
  spawnOpenssl,
  startProxy,
  type TlsEntry,
  terminateTls
} from "./support/DataPathHarness.ts"
import * as Haproxy from "./support/Haproxy.ts"
import * as Nginx from "./support/Nginx.ts"

let pki: DataPki
let cleanup: Cleanup

beforeAll(async () => {
  pki = await makeDataPki()
}, 30_000)
afterAll(() => pki.pki.cleanup())
afterEach(async () => {
  await cleanup.run()
})
const fresh = () => {
  cleanup = makeCleanup()
  return cleanup
}

/** Writes a configuration with one listener (extra fields as in the file) and starts Sleeve. */
const startSleeve = (
  c: Cleanup,
  listener: Record<string, unknown>,
  tls: TlsEntry = terminateTls(pki)
): Promise<ProxyUnderTest> => {
  const file = pki.path(`pp-${Math.random().toString(36).slice(2)}.json`)
  Fs.writeFileSync(
    file,
    JSON.stringify({ tls: { front: tls }, listeners: [{ name: "front", tls: "front", ...listener }] })
  )
  return startProxy(c, file)
}

/** What a raw target saw on one connection: the PROXY header, then the application bytes. */
interface Seen {
  readonly header: PP.Header
  readonly headerBytes: Uint8Array
  readonly after: () => Buffer
}

/**
 * A target that decodes the PROXY header with the codec (refusing the connection if there is
 * none), then echoes what follows.
 */
const startDecodingTarget = async (c: Cleanup) => {
  const seen: Array<Seen> = []
  const waiting: Array<() => void> = []
  // `next` hands out connections in arrival order, also those that arrived before it was called.
  let taken = 0
  const connections = makeConnections()
  const server = Net.createServer({ allowHalfOpen: true }, (socket) => {
    connections.track(socket)
    let buffer = Buffer.alloc(0)
    const onData = (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk])
      const d = PP.decode(buffer)
      if (d._tag === "Incomplete") return
      socket.off("data", onData)
      if (d._tag === "Invalid") {
        socket.destroy()
        return
      }
      const rest: Array<Buffer> = [buffer.subarray(d.length)]
      const s: Seen = {
        header: d.header,
        headerBytes: Uint8Array.from(buffer.subarray(0, d.length)),
        after: () => Buffer.concat(rest)
      }
      socket.write(buffer.subarray(d.length))
      socket.on("data", (more: Buffer) => {
        rest.push(more)
        socket.write(more)
      })
      socket.on("end", () => socket.end())
      seen.push(s)
      for (const w of waiting.splice(0)) w()
    }
    socket.on("data", onData)
  })
  c.defer(() => close(server, connections.sockets))
  const port = await listen(server)
  return {
    port,
    seen,
    next: (): Promise<Seen> => {
      const k = taken++
      return within(
        "the target to receive a PROXY header",
        10_000,
        new Promise<Seen>((resolve) => {
          const check = (): void => {
            if (seen.length > k) resolve(seen[k]!)
            else waiting.push(check)
          }
          check()
        })
      )
    }
  }
}

const text = (tlvs: ReadonlyArray<PP.Tlv>, type: number) => {
  const t = PP.findTlv(tlvs, type)
  return t === undefined ? undefined : PP.tlvText(t.value)
}

/** An HTTP/1.1 GET over `socket`, resolving with the whole response once the server closes. */
const httpGet = async (socket: Net.Socket): Promise<string> => {
  const reader = makeReader(socket)
  socket.write("GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
  await within("the HTTP response", 10_000, reader.ended)
  return reader.text()
}

describe("proxyProtocol: v2 from a terminate listener", { timeout: 30_000 }, () => {
  it("HAProxy (accept-proxy) parses it: client address and port, destination, SNI as fc_pp_authority", async () => {
    const c = fresh()
    const hp = await Haproxy.start(
      1,
      ([port]) => `${Haproxy.preamble("http")}
frontend app
  bind 127.0.0.1:${port} accept-proxy
  http-request return status 200 content-type text/plain lf-string "src=%[src]:%[src_port] dst=%[dst]:%[dst_port] authority=%[fc_pp_authority]\\n"
`
    )
    c.defer(() => hp.stop())
    const proxy = await startSleeve(c, {
      mode: "terminate",
      listen: "127.0.0.1:0",
      target: `127.0.0.1:${hp.ports[0]}`,
      proxyProtocol: "v2"
    })
    const client = await connectTls(c, { ...clientTls(pki.ca, pki.client), port: proxy.port("front") })
    const response = await httpGet(client)
    assert.match(response, /^HTTP\/1\.1 200/)
    assert.include(
      response,
      `src=127.0.0.1:${client.localPort} dst=127.0.0.1:${proxy.port("front")} authority=localhost\n`,
      response
    )
    await proxy.counted(
      MetricName.proxyProtocolHeadersTotal,
      { listener: "front", direction: "sent", version: "v2" },
      1
    )
  })

  it("carries PP2_TYPE_SSL (flags, verify, version, CN, cipher), the subject DN (0xE0) and the TLS configuration (0xE1)", async () => {
    const c = fresh()
    const target = await startDecodingTarget(c)
    const proxy = await startSleeve(c, {
      mode: "terminate",
      listen: "127.0.0.1:0",
      target: `127.0.0.1:${target.port}`,
      proxyProtocol: "v2"
    })
    const client = await connectTls(c, { ...clientTls(pki.ca, pki.client), port: proxy.port("front") })
    const reader = makeReader(client)
    client.write("ping\n")
    const seen = await target.next()
    await reader.until("ping\n")
    assert.strictEqual(reader.text(), "ping\n", "the client gets back only its own bytes")
    const h = seen.header
    assert.strictEqual(h.version, 2)
    assert.strictEqual(h.command, "proxy")
    assert.deepStrictEqual(h.addresses, {
      family: "IPv4",
      transport: "stream",
      source: { address: "127.0.0.1", port: client.localPort! },
      destination: { address: "127.0.0.1", port: proxy.port("front") }
    })
    assert.deepStrictEqual(
      h.tlvs.map((t) => t.type),
      [PP.tlvType.authority, PP.tlvType.ssl, PP.tlvType.subjectDn, PP.tlvType.tlsConfig]
    )
    assert.strictEqual(text(h.tlvs, PP.tlvType.authority), "localhost")
    assert.strictEqual(text(h.tlvs, PP.tlvType.subjectDn), pki.client.subject)
    assert.strictEqual(text(h.tlvs, PP.tlvType.subjectDn), "CN=client,O=Sleeve Test")
    assert.strictEqual(text(h.tlvs, PP.tlvType.tlsConfig), "front")
    const ssl = PP.decodeSsl(PP.findTlv(h.tlvs, PP.tlvType.ssl)!.value)
    assert.isDefined(ssl)
    assert.strictEqual(ssl!.client, PP.sslClient.ssl | PP.sslClient.certConn | PP.sslClient.certSess)
    assert.strictEqual(ssl!.verify, 0)
    assert.strictEqual(text(ssl!.tlvs, PP.sslSubtype.version), client.getProtocol())
    assert.strictEqual(text(ssl!.tlvs, PP.sslSubtype.cipher), client.getCipher().name)
    assert.strictEqual(text(ssl!.tlvs, PP.sslSubtype.cn), "client")
    // The header is not application data.
    client.end()
    await proxy.counted(MetricName.bytesTotal, { listener: "front", direction: "client_to_target" }, 5)
  })

  it("a client without a certificate (verifyPeer: none): SSL flag only, verify non-zero, no DN", async () => {
    const c = fresh()
    const target = await startDecodingTarget(c)
    const proxy = await startSleeve(
      c,
      { mode: "terminate", listen: "127.0.0.1:0", target: `127.0.0.1:${target.port}`, proxyProtocol: "v2" },
      { type: "server", certificateFile: pki.proxy.certFile, privateKeyFile: pki.proxy.keyFile }
    )
    const client = await connectTls(c, { ...clientTls(pki.ca), port: proxy.port("front") })
    client.write("x")
    const { header } = await target.next()
    const ssl = PP.decodeSsl(PP.findTlv(header.tlvs, PP.tlvType.ssl)!.value)!
    assert.strictEqual(ssl.client, PP.sslClient.ssl)
    assert.notStrictEqual(ssl.verify, 0)
    assert.strictEqual(text(ssl.tlvs, PP.sslSubtype.cn), undefined)
    assert.strictEqual(PP.findTlv(header.tlvs, PP.tlvType.subjectDn), undefined)
    assert.strictEqual(text(header.tlvs, PP.tlvType.tlsConfig), "front")
  })
})

describe("proxyProtocol: the same PP2_TYPE_SSL layout as HAProxy's own sender", { timeout: 30_000 }, () => {
  it("flags, verify and the version/CN/cipher sub-TLVs match what send-proxy-v2 (proxy-v2-options ssl,cert-cn,ssl-cipher,authority) sends for the same client", async () => {
    const c = fresh()
    const target = await startDecodingTarget(c)
    const pem = pki.path("haproxy-front.pem")
    Fs.writeFileSync(pem, `${pki.proxy.certPem}${pki.proxy.keyPem}`)
    const hp = await Haproxy.start(
      1,
      ([port]) => `${Haproxy.preamble("tcp")}
frontend tls
  bind 127.0.0.1:${port} ssl crt ${pem} ca-file ${pki.ca.certFile} verify optional
  default_backend app
backend app
  server s1 127.0.0.1:${target.port} send-proxy-v2 proxy-v2-options ssl,cert-cn,ssl-cipher,authority
`
    )
    c.defer(() => hp.stop())
    const proxy = await startSleeve(c, {
      mode: "terminate",
      listen: "127.0.0.1:0",
      target: `127.0.0.1:${target.port}`,
      proxyProtocol: "v2"
    })
    const viaHaproxy = await connectTls(c, { ...clientTls(pki.ca, pki.client), port: hp.ports[0]! })
    viaHaproxy.write("a")
    const theirs = await target.next()
    const viaSleeve = await connectTls(c, { ...clientTls(pki.ca, pki.client), port: proxy.port("front") })
    viaSleeve.write("b")
    const ours = await target.next()
    // What both senders put in the header; the values follow what each client negotiated.
    const layout = (h: PP.Header) => {
      const ssl = PP.decodeSsl(PP.findTlv(h.tlvs, PP.tlvType.ssl)!.value)!
      const sub = ssl.tlvs.filter((t) => t.type === 0x21 || t.type === 0x22 || t.type === 0x23)
      return {
        authority: text(h.tlvs, PP.tlvType.authority),
        client: ssl.client,
        verify: ssl.verify,
        subtypes: sub.map((t) => t.type),
        values: sub.map((t) => PP.tlvText(t.value))
      }
    }
    const expected = (negotiated: Tls.TLSSocket) => ({
      authority: "localhost",
      client: PP.sslClient.ssl | PP.sslClient.certConn | PP.sslClient.certSess,
      verify: 0,
      subtypes: [PP.sslSubtype.version, PP.sslSubtype.cn, PP.sslSubtype.cipher],
      values: [negotiated.getProtocol() ?? undefined, "client", negotiated.getCipher().name]
    })
    assert.deepStrictEqual(layout(theirs.header), expected(viaHaproxy), "HAProxy's header")
    assert.deepStrictEqual(layout(ours.header), expected(viaSleeve), "Sleeve's header")
  })
})

describe("proxyProtocol: v1", { timeout: 30_000 }, () => {
  it("HAProxy parses the line; the raw bytes are exactly the spec's line", async () => {
    const c = fresh()
    const hp = await Haproxy.start(
      1,
      ([port]) => `${Haproxy.preamble("http")}
frontend app
  bind 127.0.0.1:${port} accept-proxy
  http-request return status 200 content-type text/plain lf-string "src=%[src]:%[src_port] dst=%[dst]:%[dst_port]\\n"
`
    )
    c.defer(() => hp.stop())
    const proxy = await startSleeve(c, {
      mode: "terminate",
      listen: "127.0.0.1:0",
      target: `127.0.0.1:${hp.ports[0]}`,
      proxyProtocol: "v1"
    })
    const client = await connectTls(c, { ...clientTls(pki.ca, pki.client), port: proxy.port("front") })
    const response = await httpGet(client)
    assert.include(response, `src=127.0.0.1:${client.localPort} dst=127.0.0.1:${proxy.port("front")}\n`, response)

    const target = await startDecodingTarget(c)
    const raw = await startSleeve(c, {
      mode: "terminate",
      listen: "127.0.0.1:0",
      target: `127.0.0.1:${target.port}`,
      proxyProtocol: "v1"
    })
    const second = await connectTls(c, { ...clientTls(pki.ca, pki.client), port: raw.port("front") })
    second.write("hi")
    const seen = await target.next()
    assert.strictEqual(
      Buffer.from(seen.headerBytes).toString("latin1"),
      `PROXY TCP4 127.0.0.1 127.0.0.1 ${second.localPort} ${raw.port("front")}\r\n`
    )
    await eventually("the application bytes", () => seen.after().toString() === "hi")
  })
})

// nginx 1.22 (Debian 12) refuses any version 2 header longer than 107 bytes ("header is too
// large while reading PROXY protocol"; 1.23.2 raised the limit with its TLV support), and a
// header with Sleeve's TLS TLVs is longer: v1 is the version to use with it (docs/proxy-protocol.md).
describe("proxyProtocol: nginx's proxy_protocol listener as the parser", { timeout: 30_000 }, () => {
  it("v1: nginx reads the client address and port and the address it connected to", async () => {
    const c = fresh()
    const nginx = await Nginx.startEcho()
    c.defer(() => nginx.stop())
    const proxy = await startSleeve(c, {
      mode: "terminate",
      listen: "127.0.0.1:0",
      target: `127.0.0.1:${nginx.port}`,
      proxyProtocol: "v1"
    })
    const client = await connectTls(c, { ...clientTls(pki.ca, pki.client), port: proxy.port("front") })
    const reader = makeReader(client)
    await within("nginx to answer and close", 10_000, reader.ended)
    assert.strictEqual(
      reader.text(),
      `addr=127.0.0.1 port=${client.localPort} server=127.0.0.1:${proxy.port("front")}\n`
    )
  })
})

describe("proxyProtocol: server-side STARTTLS (postgres)", { timeout: 30_000 }, () => {
  const sslRequest = Buffer.from("0000000804d2162f", "hex")

  it("the app's first bytes are the header, written after the upgrade, with the TLS TLVs", async () => {
    const c = fresh()
    const target = await startDecodingTarget(c)
    const proxy = await startSleeve(
      c,
      {
        mode: "starttls",
        protocol: "postgres",
        listen: "127.0.0.1:0",
        target: `127.0.0.1:${target.port}`,
        proxyProtocol: "v2"
      },
      terminateTls(pki)
    )
    const raw = await connectTcp(c, { host: "127.0.0.1", port: proxy.port("front") })
    const answer = await within(
      "the SSLRequest answer",
      5000,
      new Promise<Buffer>((r) => {
        raw.once("data", r)
        raw.write(sslRequest)
      })
    )
    assert.strictEqual(answer.toString(), "S")
    const secure = await connectTls(c, { ...clientTls(pki.ca, pki.client), socket: raw })
    const startup = Buffer.from("startup-message")
    secure.write(startup)
    const seen = await target.next()
    assert.deepStrictEqual(Buffer.from(seen.headerBytes.subarray(0, 12)), Buffer.from(PP.v2Signature))
    assert.deepStrictEqual(seen.header.addresses?.source, { address: "127.0.0.1", port: raw.localPort! })
    assert.strictEqual(text(seen.header.tlvs, PP.tlvType.subjectDn), "CN=client,O=Sleeve Test")
    const ssl = PP.decodeSsl(PP.findTlv(seen.header.tlvs, PP.tlvType.ssl)!.value)!
    assert.strictEqual(text(ssl.tlvs, PP.sslSubtype.version), secure.getProtocol())
    await eventually("the startup message after the header", () => seen.after().equals(startup))
    await proxy.counted(
      MetricName.proxyProtocolHeadersTotal,
      { listener: "front", direction: "sent", version: "v2" },
      1
    )
  })
})

describe("proxyProtocol: server-side STARTTLS (ldap) with openssl s_client -starttls ldap", { timeout: 30_000 }, () => {
  it("the header, with the client's DN, comes before the first LDAP byte after StartTLS", async () => {
    const c = fresh()
    const target = await startDecodingTarget(c)
    const proxy = await startSleeve(
      c,
      {
        mode: "starttls",
        protocol: "ldap",
        listen: "127.0.0.1:0",
        target: `127.0.0.1:${target.port}`,
        proxyProtocol: "v2"
      },
      terminateTls(pki)
    )
    const client = spawnOpenssl(c, [
      "s_client",
      "-connect",
      `127.0.0.1:${proxy.port("front")}`,
      "-starttls",
      "ldap",
      "-CAfile",
      pki.ca.certFile,
      "-cert",
      pki.client.certFile,
      "-key",
      pki.client.keyFile,
      "-servername",
      "localhost",
      "-quiet"
    ])
    // -quiet prints the verification lines on stderr once the handshake is done.
    await client.until("verify return:1", 10_000, "stderr")
    client.child.stdin?.write("first ldap bytes\n")
    const seen = await target.next()
    const a = seen.header.addresses
    assert.strictEqual(a?.family === "IPv4" ? a.source.address : undefined, "127.0.0.1")
    assert.strictEqual(text(seen.header.tlvs, PP.tlvType.subjectDn), "CN=client,O=Sleeve Test")
    assert.strictEqual(text(seen.header.tlvs, PP.tlvType.tlsConfig), "front")
    await eventually("the LDAP bytes after the header", () => seen.after().toString() === "first ldap bytes\n")
    await proxy.counted(MetricName.starttlsUpgradesTotal, { listener: "front", protocol: "ldap", result: "ok" }, 1)
  })
})

describe("acceptProxyProtocol: HAProxy as the load balancer in front", { timeout: 30_000 }, () => {
  for (const [option, version] of [
    ["send-proxy-v2", "v2"],
    ["send-proxy", "v1"]
  ] as const) {
    it(`${option}: the event log, the DN decision's log and the header sent onward name the real client`, async () => {
      const c = fresh()
      const target = await startDecodingTarget(c)
      // Sleeve first, on a port HAProxy is then told about.
      const proxy = await startSleeve(c, {
        mode: "terminate",
        listen: "127.0.0.1:0",
        target: `127.0.0.1:${target.port}`,
        proxyProtocol: "v2",
        acceptProxyProtocol: { trustedSources: ["127.0.0.1"] }
      })
      const hp = await Haproxy.start(
        2,
        ([port, ready]) => `${Haproxy.preamble("tcp")}
frontend lb
  bind 127.0.0.1:${port}
  default_backend sleeve
backend sleeve
  server s1 127.0.0.1:${proxy.port("front")} ${option}
${Haproxy.readyFrontend(ready!)}`,
        ([, ready]) => [ready!]
      )
      c.defer(() => hp.stop())
      // The client comes from 127.0.0.2, an address that is not the load balancer's.
      const client = await connectTls(c, {
        ...clientTls(pki.ca, pki.client),
        port: hp.ports[0]!,
        ...({ localAddress: "127.0.0.2" } as object)
      })
      const reader = makeReader(client)
      client.write("through the balancer\n")
      const seen = await target.next()
      await reader.until("through the balancer\n")
      const real = `127.0.0.2:${client.localPort}`
      assert.deepStrictEqual(seen.header.addresses, {
        family: "IPv4",
        transport: "stream",
        source: { address: "127.0.0.2", port: client.localPort! },
        destination: { address: "127.0.0.1", port: hp.ports[0]! }
      })
      const events = proxy.events()
      // Exactly one connection, the client's, went through the balancer.
      const accepted = events.find((e) => e.event === "accepted")
      assert.deepStrictEqual(
        events.filter((e) => e.event === "accepted").map((e) => e.remote),
        [real]
      )
      assert.match(String(accepted?.via), /^127\.0\.0\.1:\d+$/)
      assert.notStrictEqual(accepted?.via, real)
      const handshake = events.find((e) => e.event === "handshake_ok")
      assert.strictEqual(handshake?.remote, real)
      assert.strictEqual(handshake?.peerSubject, "CN=client,O=Sleeve Test")
      await proxy.counted(
        MetricName.proxyProtocolHeadersTotal,
        { listener: "front", direction: "received", version },
        1
      )
    })
  }

  it("a DN rejection is logged with the real client's address", async () => {
    const c = fresh()
    const target = await startDecodingTarget(c)
    const proxy = await startSleeve(
      c,
      {
        mode: "terminate",
        listen: "127.0.0.1:0",
        target: `127.0.0.1:${target.port}`,
        acceptProxyProtocol: { trustedSources: ["127.0.0.0/30"] }
      },
      terminateTls(pki, ["CN=someone else,O=Sleeve Test"])
    )
    const hp = await Haproxy.start(
      2,
      ([port, ready]) => `${Haproxy.preamble("tcp")}
frontend lb
  bind 127.0.0.1:${port}
  default_backend sleeve
backend sleeve
  server s1 127.0.0.1:${proxy.port("front")} send-proxy-v2
${Haproxy.readyFrontend(ready!)}`,
      ([, ready]) => [ready!]
    )
    c.defer(() => hp.stop())
    const client = Tls.connect({
      ...clientTls(pki.ca, pki.client),
      host: "127.0.0.1",
      port: hp.ports[0]!,
      // Not in @types/node's ConnectionOptions, but tls.connect passes it on to net.connect.
      ...({ localAddress: "127.0.0.2" } as object)
    })
    c.defer(() => client.destroy())
    client.on("error", () => {})
    const port = await within(
      "the client to connect",
      5000,
      new Promise<number>((r) => client.once("connect", () => r(client.localPort!)))
    )
    await eventually("the DN rejection", () => proxy.events().some((e) => e.event === "peer_rejected"))
    const rejected = proxy.events().find((e) => e.event === "peer_rejected")
    assert.strictEqual(rejected?.remote, `127.0.0.2:${port}`)
    assert.strictEqual(rejected?.reason, "dn_rejected")
  })
})

describe("acceptProxyProtocol: addresses", { timeout: 30_000 }, () => {
  it("on a dual-stack listener an IPv4 source matches its IPv4 entry; LOCAL keeps the balancer's address", async () => {
    const c = fresh()
    const target = await startDecodingTarget(c)
    const proxy = await startSleeve(c, {
      mode: "terminate",
      listen: "[::]:0",
      target: `127.0.0.1:${target.port}`,
      proxyProtocol: "v2",
      acceptProxyProtocol: { trustedSources: ["127.0.0.1", "::1"] }
    })
    const port = proxy.port("front")
    // A v1 line from 127.0.0.1 (seen as ::ffff:127.0.0.1 on this listener), then TLS on the same socket.
    const raw = await connectTcp(c, { host: "127.0.0.1", port })
    raw.write("PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n")
    const secure = await connectTls(c, { ...clientTls(pki.ca, pki.client), socket: raw })
    secure.write("v6")
    const seen = await target.next()
    assert.deepStrictEqual(seen.header.addresses, {
      family: "IPv6",
      transport: "stream",
      source: { address: "2001:db8::7", port: 40000 },
      destination: { address: "2001:db8::1", port: 443 }
    })
    // A LOCAL header from ::1 (a health check): the connection keeps its own endpoints.
    const local = await connectTcp(c, { host: "::1", port })
    local.write(PP.encodeV2({ command: "local", addresses: undefined, tlvs: [] }))
    const secureLocal = await connectTls(c, { ...clientTls(pki.ca, pki.client), socket: local })
    secureLocal.write("local")
    const seenLocal = await target.next()
    assert.deepStrictEqual(seenLocal.header.addresses, {
      family: "IPv6",
      transport: "stream",
      source: { address: "::1", port: local.localPort! },
      destination: { address: "::1", port }
    })
    const accepted = proxy.events().filter((e) => e.event === "accepted")
    assert.deepStrictEqual(
      accepted.map((e) => e.remote),
      ["2001:db8::7:40000", `::1:${local.localPort}`]
    )
  })
})

describe("acceptProxyProtocol: the bytes after the header", { timeout: 30_000 }, () => {
  it("a ClientHello in the same segment as the header reaches TLS intact", async () => {
    const c = fresh()
    const target = await startDecodingTarget(c)
    const proxy = await startSleeve(c, {
      mode: "terminate",
      listen: "127.0.0.1:0",
      target: `127.0.0.1:${target.port}`,
      proxyProtocol: "v2",
      acceptProxyProtocol: { trustedSources: ["127.0.0.1"] }
    })
    const header = PP.encodeV1({
      command: "proxy",
      addresses: {
        family: "IPv4",
        transport: "stream",
        source: { address: "198.51.100.20", port: 5555 },
        destination: { address: "198.51.100.1", port: 443 }
      }
    })
    // A tiny balancer: the client's first chunk (its ClientHello) goes out in one write with the header.
    const firstWrites: Array<number> = []
    const connections = makeConnections()
    const balancer = Net.createServer((client) => {
      connections.track(client)
      const upstream = Net.connect({ host: "127.0.0.1", port: proxy.port("front") })
      connections.track(upstream)
      client.once("data", (hello: Buffer) => {
        firstWrites.push(header.length + hello.length)
        upstream.write(Buffer.concat([header, hello]))
        client.pipe(upstream).pipe(client)
      })
    })
    c.defer(() => close(balancer, connections.sockets))
    const port = await listen(balancer)
    const client = await connectTls(c, { ...clientTls(pki.ca, pki.client), port })
    const reader = makeReader(client)
    client.write("after the hello\n")
    const seen = await target.next()
    await reader.until("after the hello\n")
    assert.isAbove(firstWrites[0]!, header.length + 100, "header and ClientHello in one write")
    assert.deepStrictEqual(seen.header.addresses?.source, { address: "198.51.100.20", port: 5555 })
  })
})

describe("acceptProxyProtocol: refusals", { timeout: 30_000 }, () => {
  const header = (source: string, port: number) =>
    PP.encodeV2({
      command: "proxy",
      addresses: {
        family: "IPv4",
        transport: "stream",
        source: { address: source, port },
        destination: { address: "192.0.2.1", port: 443 }
      },
      tlvs: []
    })

  const refusals = async (proxy: ProxyUnderTest) => {
    const out: Record<string, number> = {}
    for (const reason of ["untrusted_source", "malformed", "timeout", "closed"]) {
      out[reason] = await proxy.value(MetricName.proxyProtocolRefusedTotal, { listener: "front", reason })
    }
    return out
  }

  it("untrusted source, malformed, timeout and closed are refused, counted and logged once; a good header still works", async () => {
    const c = fresh()
    const target = await startDecodingTarget(c)
    const proxy = await startSleeve(
      c,
      {
        mode: "originate",
        listen: "127.0.0.1:0",
        target: `127.0.0.1:${target.port}`,
        acceptProxyProtocol: { trustedSources: ["127.0.0.1"], timeout: "500ms" }
      },
      { type: "client", caFile: pki.ca.certFile }
    )
    const port = proxy.port("front")
    // Sleeve's FIN ends our reading side (the socket is half-open), a reset closes it.
    const closedBy = (s: Net.Socket) =>
      within(
        "Sleeve to close the connection",
        5000,
        new Promise<void>((r) => {
          s.once("end", () => r())
          s.once("close", () => r())
          s.resume()
        })
      )

    // Not from a trusted source: refused before a byte is read, even with a valid header.
    const untrusted = await connectTcp(c, { host: "127.0.0.1", port, localAddress: "127.0.0.2" })
    untrusted.write(header("203.0.113.9", 1234))
    await closedBy(untrusted)
    // Trusted, but not a header.
    const malformed = await connectTcp(c, { host: "127.0.0.1", port })
    malformed.write("GET / HTTP/1.1\r\n\r\n")
    await closedBy(malformed)
    // Trusted, half a header, then silence.
    const slow = await connectTcp(c, { host: "127.0.0.1", port })
    slow.write(header("203.0.113.9", 1234).subarray(0, 20))
    await closedBy(slow)
    // Trusted, half a header, then hang up.
    const quitter = await connectTcp(c, { host: "127.0.0.1", port })
    quitter.end(header("203.0.113.9", 1234).subarray(0, 10))
    await closedBy(quitter)

    await eventually("every refusal to be counted", async () => (await refusals(proxy)).closed === 1)
    assert.deepStrictEqual(await refusals(proxy), { untrusted_source: 1, malformed: 1, timeout: 1, closed: 1 })
    await proxy.counted(MetricName.connectionsRefusedTotal, { listener: "front", reason: "proxy_protocol" }, 4)
    const logged = proxy.events().filter((e) => e.event === "connection_refused")
    assert.deepStrictEqual(
      logged.map((e) => e.detail),
      ["untrusted_source", "malformed", "timeout", "closed"]
    )
    assert.match(String(logged[0]?.remote), /^127\.0\.0\.2:\d+$/)
    assert.strictEqual(target.seen.length, 0, "nothing reached the target")

    // The listener keeps serving: a trusted source with a header gets through (originate: the
    // TLS leg goes to the target, which is plain here, so only the accepted event is checked).
    const good = await connectTcp(c, { host: "127.0.0.1", port })
    good.write(header("203.0.113.9", 1234))
    await eventually("the accepted event with the real client", () =>
      proxy.events().some((e) => e.event === "accepted" && e.remote === "203.0.113.9:1234")
    )
  })
})
