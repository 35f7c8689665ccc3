/**
 * `classifyTlsError` against real handshakes: each failure is provoked on loopback with Node 24
 * `tls` sockets (and `openssl s_client` / `s_server` where the interesting view is the alert a
 * strict third-party peer sends), and both the exact error code Node reports and its
 * classification are asserted. When a Node or OpenSSL upgrade changes a code, this suite says
 * which one. Certificates are throwaway, made with the `openssl` CLI in a temporary directory.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { listen } from "@sleeve/testing/Net"
import * as Process from "@sleeve/testing/Process"
import { within } from "@sleeve/testing/Wait"
import { Effect } from "effect"
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import { createServer as createTcpServer, connect as tcpConnect } from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import * as tls from "node:tls"
import * as Metrics from "../src/Metrics.ts"

// ---------------------------------------------------------------------------------------------
// Throwaway PKI
// ---------------------------------------------------------------------------------------------

let dir = ""
const file = (name: string) => path.join(dir, name)
const read = (name: string) => fs.readFileSync(file(name))
/** Runs the openssl CLI in the temporary directory; `command` is split on spaces. */
const openssl = (command: string) => execFileSync("openssl", command.split(" "), { cwd: dir, stdio: "pipe" })

const caConfig = `[ ca ]
default_ca = CA_default
[ CA_default ]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = policy_any
unique_subject = no
[ policy_any ]
commonName = supplied
`

const newKey = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"

const makeCa = (name: string) =>
  openssl(
    `req -x509 ${newKey} -keyout ${name}.key -out ${name}.pem -days 2 -subj /CN=sleeve-test-${name} ` +
      "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
  )

/** A leaf for localhost/127.0.0.1 signed by `ca`, valid for 1 day or between two dates. */
const makeLeaf = (name: string, ca: string, eku: string, dates?: readonly [string, string]) => {
  openssl(`req -new ${newKey} -keyout ${name}.key -out ${name}.csr -subj /CN=${name}`)
  fs.writeFileSync(
    file(`${name}.ext`),
    `subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=${eku}\nkeyUsage=critical,digitalSignature\n`
  )
  const signer = `-in ${name}.csr -extfile ${name}.ext -out ${name}.pem`
  if (dates === undefined) {
    openssl(`x509 -req ${signer} -CA ${ca}.pem -CAkey ${ca}.key -set_serial ${Date.now()} -days 1`)
  } else {
    // `openssl x509` (3.0) cannot set arbitrary dates; `openssl ca` can.
    const period = `-startdate ${dates[0]} -enddate ${dates[1]}`
    openssl(`ca -batch -config ca.cnf -cert ${ca}.pem -keyfile ${ca}.key ${signer} ${period} -notext`)
  }
}

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "sleeve-metrics-tls-"))
  fs.writeFileSync(file("ca.cnf"), caConfig)
  fs.writeFileSync(file("index.txt"), "")
  fs.writeFileSync(file("serial"), "1000\n")
  makeCa("ca")
  makeCa("other")
  makeLeaf("server", "ca", "serverAuth")
  makeLeaf("client", "ca", "clientAuth")
  makeLeaf("stranger", "other", "serverAuth,clientAuth")
  makeLeaf("serveronly", "ca", "serverAuth")
  makeLeaf("expired", "ca", "serverAuth,clientAuth", ["20200101000000Z", "20200102000000Z"])
  makeLeaf("notyet", "ca", "serverAuth,clientAuth", ["20990101000000Z", "20991231000000Z"])
  openssl(
    `req -x509 ${newKey} -keyout self.key -out self.pem -days 1 -subj /CN=localhost ` +
      "-addext subjectAltName=DNS:localhost"
  )
}, 60_000)

afterAll(() => {
  if (dir !== "") fs.rmSync(dir, { recursive: true, force: true })
})

const identity = (name: string) => ({ key: read(`${name}.key`), cert: read(`${name}.pem`) })

// ---------------------------------------------------------------------------------------------
// Peers
// ---------------------------------------------------------------------------------------------

type TlsError = Error & { code?: string; reason?: string }

/** What one side saw. */
interface Side {
  /** The first error the side reported, if any. */
  error?: TlsError
  /** `authorizationError` after a completed handshake (server sides with `requestCert`). */
  authorizationError?: string
  /** Whether the peer presented no certificate at all (server sides). */
  peerCertificateEmpty?: boolean
  secure: boolean
}

/** A Node TLS client; settles when its socket has closed. */
const nodeClient = (port: number, options: tls.ConnectionOptions) =>
  new Promise<Side>((resolve) => {
    const side: Side = { secure: false }
    const socket = tls.connect({ host: "127.0.0.1", port, servername: "localhost", ...options })
    socket.on("secureConnect", () => {
      side.secure = true
      socket.write("hello\n")
    })
    socket.on("error", (e: TlsError) => {
      side.error ??= e
    })
    socket.on("data", () => {})
    socket.on("close", () => resolve(side))
  })

/** A Node TLS server (one connection) and a Node TLS client; both sides' views. */
const nodePair = async (serverOptions: tls.TlsOptions, clientOptions: tls.ConnectionOptions) => {
  let settle: (side: Side) => void = () => {}
  const serverSide = new Promise<Side>((resolve) => {
    settle = resolve
  })
  const server = tls.createServer(serverOptions, (socket) => {
    settle({
      secure: true,
      ...(socket.authorizationError === undefined ? {} : { authorizationError: String(socket.authorizationError) }),
      peerCertificateEmpty: Object.keys(socket.getPeerCertificate()).length === 0
    })
    socket.on("error", () => {})
    socket.end("bye\n")
  })
  server.on("tlsClientError", (error: TlsError) => settle({ secure: false, error }))
  try {
    const port = await listen(server)
    const client = await within("client", 5000, nodeClient(port, clientOptions))
    return { server: await within("server", 5000, serverSide), client }
  } finally {
    server.close()
  }
}

/** A Node TLS server (as the proxy builds one: `new tls.TLSSocket(raw, { isServer })`). */
const nodeSocketServer = async (options: tls.TlsOptions, runPeer: (port: number) => Promise<unknown>) => {
  let settle: (side: Side) => void = () => {}
  const serverSide = new Promise<Side>((resolve) => {
    settle = resolve
  })
  const server = createTcpServer((raw) => {
    const socket = new tls.TLSSocket(raw, { ...options, isServer: true })
    socket.on("secure", () => settle({ secure: true }))
    socket.on("error", (error: TlsError) => settle({ secure: false, error }))
    socket.on("data", () => {})
  })
  try {
    const port = await listen(server)
    await within("peer", 10_000, runPeer(port))
    return await within("server", 5000, serverSide)
  } finally {
    server.close()
  }
}

/** `openssl s_client` that verifies strictly and so sends an alert when it rejects. */
const sClient = async (port: number, ...args: ReadonlyArray<string>): Promise<number | null> =>
  (
    await Process.run(
      "openssl",
      ["s_client", "-connect", `127.0.0.1:${port}`, "-servername", "localhost", "-verify_return_error", ...args],
      { cwd: dir }
    )
  ).code

/** `openssl s_server` for one connection, requiring a client certificate from `ca`. */
const sServerRequiringClientCert = async (clientOptions: tls.ConnectionOptions) => {
  const server = Process.startDaemon(
    "openssl",
    (
      "s_server -accept 127.0.0.1:0 -naccept 1 -cert server.pem -key server.key " +
      "-Verify 1 -verify_return_error -CAfile ca.pem"
    ).split(" "),
    { cwd: dir, stdin: "pipe" }
  )
  try {
    const accept = /ACCEPT 127\.0\.0\.1:(\d+)/
    const port = Number(accept.exec(await server.waitForOutput(accept, { timeoutMs: 10_000 }))?.[1])
    return await within("client", 5000, nodeClient(port, { ca: read("ca.pem"), ...clientOptions }))
  } finally {
    await server.stop()
  }
}

const codeOf = (side: Side): string | undefined => side.error?.code

/** Asserts the error code a side saw and that it classifies to `reason`. */
const expectFailure = (side: Side, code: string, reason: Metrics.FailureReason) => {
  assert.isDefined(side.error, `expected an error with code ${code}`)
  assert.strictEqual(codeOf(side), code)
  assert.strictEqual(Metrics.classifyTlsError(side.error!), reason)
}

/** Asserts a completed handshake whose peer verification failed with `code`. */
const expectVerifyFailure = (side: Side, code: string, reason: Metrics.FailureReason) => {
  assert.isTrue(side.secure, "handshake completes; verification is Node's check afterwards")
  assert.strictEqual(side.authorizationError, code)
  assert.strictEqual(Metrics.classifyTlsErrorCode(side.authorizationError!), reason)
}

const live = (name: string, body: () => Promise<void>) => it.live(name, () => Effect.promise(body), 30_000)

const mtlsServer = (overrides: tls.TlsOptions = {}): tls.TlsOptions => ({
  ...identity("server"),
  ca: read("ca.pem"),
  requestCert: true,
  rejectUnauthorized: false,
  ...overrides
})

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

describe("classifyTlsError with real handshakes (Node 24, OpenSSL 3)", () => {
  describe("unknown CA", () => {
    live("client view: the server's CA is not trusted", async () => {
      const { client } = await nodePair(identity("server"), { ca: read("other.pem") })
      expectFailure(client, "UNABLE_TO_VERIFY_LEAF_SIGNATURE", "unknown_ca")
    })

    live("client view: a self-signed server certificate", async () => {
      const { client } = await nodePair(identity("self"), { ca: read("ca.pem") })
      expectFailure(client, "DEPTH_ZERO_SELF_SIGNED_CERT", "unknown_ca")
    })

    live("server view: the client's CA is not trusted", async () => {
      const { server } = await nodePair(mtlsServer(), { ca: read("ca.pem"), ...identity("stranger") })
      expectVerifyFailure(server, "UNABLE_TO_VERIFY_LEAF_SIGNATURE", "unknown_ca")
    })

    live("server view: a strict client (openssl s_client) rejects our CA with an alert", async () => {
      const server = await nodeSocketServer(identity("server"), (port) => sClient(port, "-CAfile", "other.pem"))
      expectFailure(server, "ERR_SSL_TLSV1_ALERT_UNKNOWN_CA", "unknown_ca")
    })

    live("client view: a strict server (openssl s_server) rejects our CA with an alert", async () => {
      const client = await sServerRequiringClientCert(identity("stranger"))
      expectFailure(client, "ERR_SSL_TLSV1_ALERT_UNKNOWN_CA", "unknown_ca")
    })
  })

  describe("validity period", () => {
    live("client view: expired server certificate", async () => {
      const { client } = await nodePair(identity("expired"), { ca: read("ca.pem") })
      expectFailure(client, "CERT_HAS_EXPIRED", "expired")
    })

    live("server view: expired client certificate", async () => {
      const { server } = await nodePair(mtlsServer(), { ca: read("ca.pem"), ...identity("expired") })
      expectVerifyFailure(server, "CERT_HAS_EXPIRED", "expired")
    })

    live("server view: a strict client rejects our expired certificate with an alert", async () => {
      const server = await nodeSocketServer(identity("expired"), (port) => sClient(port, "-CAfile", "ca.pem"))
      expectFailure(server, "ERR_SSL_SSL/TLS_ALERT_CERTIFICATE_EXPIRED", "expired")
    })

    live("client view: a strict server rejects our expired certificate with an alert", async () => {
      const client = await sServerRequiringClientCert(identity("expired"))
      expectFailure(client, "ERR_SSL_SSL/TLS_ALERT_CERTIFICATE_EXPIRED", "expired")
    })

    live("client view: server certificate not yet valid", async () => {
      const { client } = await nodePair(identity("notyet"), { ca: read("ca.pem") })
      expectFailure(client, "CERT_NOT_YET_VALID", "not_yet_valid")
    })
  })

  describe("client certificate required but none sent", () => {
    live("TLS 1.3: server and client views", async () => {
      const { server, client } = await nodePair(mtlsServer({ rejectUnauthorized: true }), { ca: read("ca.pem") })
      expectFailure(server, "ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE", "no_certificate")
      expectFailure(client, "ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED", "no_certificate")
    })

    live("TLS 1.2: the client only gets a generic handshake_failure alert", async () => {
      const { server, client } = await nodePair(mtlsServer({ rejectUnauthorized: true }), {
        ca: read("ca.pem"),
        maxVersion: "TLSv1.2"
      })
      expectFailure(server, "ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE", "no_certificate")
      // Documented ambiguity: handshake_failure is classified as no_shared_cipher.
      expectFailure(client, "ERR_SSL_SSL/TLS_ALERT_HANDSHAKE_FAILURE", "no_shared_cipher")
    })

    live("a server that does not reject reports a missing certificate as UNABLE_TO_GET_ISSUER_CERT", async () => {
      const { server } = await nodePair(mtlsServer(), { ca: read("ca.pem") })
      assert.isTrue(server.peerCertificateEmpty, "no peer certificate")
      // The caveat in classifyTlsErrorCode's documentation: callers must check the empty
      // peer certificate first, as the code alone says unknown_ca.
      expectVerifyFailure(server, "UNABLE_TO_GET_ISSUER_CERT", "unknown_ca")
    })
  })

  live("protocol version: server minVersion TLSv1.3, client maxVersion TLSv1.2", async () => {
    const { server, client } = await nodePair(
      { ...identity("server"), minVersion: "TLSv1.3" },
      { ca: read("ca.pem"), maxVersion: "TLSv1.2" }
    )
    expectFailure(server, "ERR_SSL_UNSUPPORTED_PROTOCOL", "protocol_version")
    expectFailure(client, "ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION", "protocol_version")
  })

  live("no shared cipher: TLS 1.2 with disjoint cipher lists", async () => {
    const { server, client } = await nodePair(
      { ...identity("server"), maxVersion: "TLSv1.2", ciphers: "ECDHE-ECDSA-AES128-GCM-SHA256" },
      { ca: read("ca.pem"), maxVersion: "TLSv1.2", ciphers: "ECDHE-ECDSA-CHACHA20-POLY1305" }
    )
    expectFailure(server, "ERR_SSL_NO_SHARED_CIPHER", "no_shared_cipher")
    expectFailure(client, "ERR_SSL_SSL/TLS_ALERT_HANDSHAKE_FAILURE", "no_shared_cipher")
  })

  describe("certificate purpose (dual use)", () => {
    live("server view: a client certificate without clientAuth", async () => {
      const { server } = await nodePair(mtlsServer(), { ca: read("ca.pem"), ...identity("serveronly") })
      expectVerifyFailure(server, "INVALID_PURPOSE", "dual_use")
    })

    live("client view: a strict server rejects our certificate without clientAuth", async () => {
      const client = await sServerRequiringClientCert(identity("serveronly"))
      expectFailure(client, "ERR_SSL_SSL/TLS_ALERT_UNSUPPORTED_CERTIFICATE", "dual_use")
    })
  })

  live("host name mismatch", async () => {
    const { client } = await nodePair(identity("server"), { ca: read("ca.pem"), servername: "wrong.example" })
    expectFailure(client, "ERR_TLS_CERT_ALTNAME_INVALID", "bad_certificate")
  })

  live("handshake timeout: a TCP client that never speaks", async () => {
    let settle: (e: TlsError) => void = () => {}
    const seen = new Promise<TlsError>((resolve) => {
      settle = resolve
    })
    const server = tls.createServer({ ...identity("server"), handshakeTimeout: 200 })
    server.on("tlsClientError", (e: TlsError) => settle(e))
    try {
      const port = await listen(server)
      const silent = tcpConnect(port, "127.0.0.1")
      silent.on("error", () => {})
      const error = await within("server", 5000, seen)
      silent.destroy()
      expectFailure({ secure: false, error }, "ERR_TLS_HANDSHAKE_TIMEOUT", "timeout")
    } finally {
      server.close()
    }
  })

  describe("peer does not speak TLS", () => {
    live("client view: a plaintext server greeting", async () => {
      const plain = createTcpServer((s) => {
        s.on("error", () => {})
        s.end("220 mail.example ESMTP ready and waiting\r\n")
      })
      try {
        const client = await within("client", 5000, nodeClient(await listen(plain), { ca: read("ca.pem") }))
        expectFailure(client, "ERR_SSL_WRONG_VERSION_NUMBER", "protocol_version")
      } finally {
        plain.close()
      }
    })

    live("server view: a plaintext HTTP request", async () => {
      const server = await nodeSocketServer(
        identity("server"),
        (port) =>
          new Promise<void>((resolve) => {
            const s = tcpConnect(port, "127.0.0.1", () => s.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
            s.on("error", () => {})
            s.on("data", () => {})
            s.on("close", () => resolve())
            setTimeout(() => s.destroy(), 1000)
          })
      )
      expectFailure(server, "ERR_SSL_HTTP_REQUEST", "protocol_version")
    })
  })
})
