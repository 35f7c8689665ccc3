/**
 * Support for the data-path integration suites (DataPath, Rejections, Lifecycle, Throughput): a
 * real `ProxyRuntime` (`ProxyUnderTest`) started from a configuration file written next to a
 * `TestPki`, plain and TLS target servers that count what reaches them, TLS clients that report
 * what they saw, an `openssl` process runner, seeded random byte streams with their SHA-256, and
 * the handshake counters of a listener. Waits, ports and processes are @sleeve/testing's.
 *
 * Everything a helper opens is registered with a `Cleanup` so that a failing test still closes
 * its sockets, servers, processes and runtimes (the suites run `cleanup.run()` in `afterEach`).
 * Nothing here is product code; it drives the product from the outside, as an operator would.
 */
import * as Metrics from "@sleeve/metrics/Metrics"
import { close, listen, makeConnections, type Where } from "@sleeve/testing/Net"
import * as Process from "@sleeve/testing/Process"
import * as TestPki from "@sleeve/testing/TestPki"
import { eventually, within } from "@sleeve/testing/Wait"
import type { ChildProcess } from "node:child_process"
import { createCipheriv, createHash } from "node:crypto"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Tls from "node:tls"
import type * as ProxyRuntime from "../../src/ProxyRuntime.ts"
import { type ProxyUnderTest, start as startProxyUnderTest } from "./ProxyUnderTest.ts"

export type { LoggedEvent, ProxyUnderTest } from "./ProxyUnderTest.ts"

// ---------------------------------------------------------------------------------------------
// Cleanup
// ---------------------------------------------------------------------------------------------

/** Undo actions, run last-registered first. */
export interface Cleanup {
  readonly defer: (undo: () => unknown) => void
  /** Runs every registered action (errors are swallowed so that one failure does not leak the rest). */
  readonly run: () => Promise<void>
}

/** A fresh, empty cleanup list. */
export const makeCleanup = (): Cleanup => {
  const undo: Array<() => unknown> = []
  return {
    defer: (f) => undo.push(f),
    run: async () => {
      while (undo.length > 0) {
        const f = undo.pop()!
        try {
          await f()
        } catch {
          // best effort: keep cleaning
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/** The certificates most suites need: one trusted CA, the proxy's own and an authorized client. */
export interface DataPki {
  readonly pki: TestPki.TestPki
  readonly ca: TestPki.Identity
  /** The proxy's certificate: `CN=proxy,O=Sleeve Test`, dual-use, SAN localhost/127.0.0.1/::1. */
  readonly proxy: TestPki.Identity
  /** An authorized client: `CN=client,O=Sleeve Test`, dual-use. */
  readonly client: TestPki.Identity
  /** A TLS target (the remote of an originate listener): `CN=target,O=Sleeve Test`. */
  readonly target: TestPki.Identity
  /** A path inside the PKI's temporary directory. */
  readonly path: (name: string) => string
}

/** A fresh PKI in its own temporary directory (remove it with `pki.cleanup()`). */
export const makeDataPki = async (): Promise<DataPki> => {
  const pki = await TestPki.make()
  const ca = await pki.ca({ name: "ca", subject: [{ CN: "Sleeve Data Path CA" }, { O: "Sleeve Test" }] })
  const [proxy, client, target] = await Promise.all([
    pki.leaf(ca, { name: "proxy", subject: [{ CN: "proxy" }, { O: "Sleeve Test" }] }),
    pki.leaf(ca, { name: "client", subject: [{ CN: "client" }, { O: "Sleeve Test" }] }),
    pki.leaf(ca, { name: "target", subject: [{ CN: "target" }, { O: "Sleeve Test" }] })
  ])
  return { pki, ca, proxy, client, target, path: (name) => `${pki.dir}/${name}` }
}

/** Node client options presenting `identity` and trusting `ca`. */
export const clientTls = (ca: TestPki.Identity, identity?: TestPki.Identity): Tls.ConnectionOptions => ({
  ca: ca.certPem,
  servername: "localhost",
  ...(identity === undefined ? {} : { cert: identity.certPem, key: identity.keyPem })
})

// ---------------------------------------------------------------------------------------------
// Configuration and the proxy under test
// ---------------------------------------------------------------------------------------------

/** A TLS configuration entry as written in the file. */
export interface TlsEntry {
  readonly type: "client" | "server" | "mirror"
  readonly caFile?: string
  readonly certificateFile?: string
  readonly privateKeyFile?: string
  readonly privateKeyPassword?: { readonly env: string } | { readonly file: string }
  readonly verifyPeer?: "none" | "request" | "require"
  readonly authorizedPeers?: ReadonlyArray<string>
  readonly requireDualUse?: boolean
  readonly protocols?: { readonly min?: "TLSv1.2" | "TLSv1.3"; readonly max?: "TLSv1.2" | "TLSv1.3" }
}

/** A terminate listener's TLS entry: the proxy's certificate, mutual TLS with `authorizedPeers` (default: the client). */
export const terminateTls = (
  pki: DataPki,
  authorizedPeers: ReadonlyArray<string> = [pki.client.subject]
): TlsEntry => ({
  type: "server",
  certificateFile: pki.proxy.certFile,
  privateKeyFile: pki.proxy.keyFile,
  caFile: pki.ca.certFile,
  verifyPeer: "require",
  authorizedPeers
})

/** An originate listener's TLS entry: the proxy's certificate as client, `authorizedPeers` (default: the target). */
export const originateTls = (
  pki: DataPki,
  authorizedPeers: ReadonlyArray<string> = [pki.target.subject]
): TlsEntry => ({
  type: "client",
  certificateFile: pki.proxy.certFile,
  privateKeyFile: pki.proxy.keyFile,
  caFile: pki.ca.certFile,
  authorizedPeers
})

/** A listener entry as written in the file. */
export interface ListenerEntry {
  readonly name: string
  readonly mode: "terminate" | "originate"
  readonly listen: string
  readonly target: string
  readonly tls: string
  readonly serverName?: string
  readonly handshakeTimeout?: string
  readonly idleTimeout?: string
  readonly connectTimeout?: string
  readonly maxConnections?: number
}

/** A whole configuration file. */
export interface ConfigEntry {
  readonly tls: Readonly<Record<string, TlsEntry>>
  readonly listeners: ReadonlyArray<ListenerEntry>
  readonly drainTimeout?: string
}

/** Writes `config` to `file` (JSON, which is YAML) and returns the path. */
export const writeConfig = (file: string, config: ConfigEntry): string => {
  Fs.writeFileSync(file, `${JSON.stringify(config, null, 2)}\n`)
  return file
}

/** `ProxyUnderTest.start`, drained (deadline 0) when `cleanup` runs. */
export const startProxy = async (
  cleanup: Cleanup,
  file: string,
  options: ProxyRuntime.ActivateOptions = {}
): Promise<ProxyUnderTest> => {
  const proxy = await startProxyUnderTest(file, options)
  cleanup.defer(() => proxy.running.drain(0))
  return proxy
}

/** The handshake counters of one listener, as an object (for one `deepEqual`). */
export const handshakeCounts = async (
  proxy: ProxyUnderTest,
  listener: string,
  role: Metrics.Role
): Promise<Record<Metrics.HandshakeResult, number>> => {
  const out = { ok: 0, failed: 0, timeout: 0, rejected: 0 }
  for (const result of Metrics.handshakeResults) {
    out[result] = await proxy.value(Metrics.MetricName.handshakesTotal, { listener, role, result })
  }
  return out
}

/** The non-zero failure reasons of one listener. */
export const failureReasons = async (
  proxy: ProxyUnderTest,
  listener: string,
  role: Metrics.Role
): Promise<Partial<Record<Metrics.FailureReason, number>>> => {
  const out: Partial<Record<Metrics.FailureReason, number>> = {}
  for (const reason of Metrics.failureReasons) {
    const n = await proxy.value(Metrics.MetricName.handshakeFailuresTotal, { listener, role, reason })
    if (n > 0) out[reason] = n
  }
  return out
}

// ---------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------

/** A server standing in for the application (terminate) or the remote (originate). */
export interface Target {
  readonly server: Net.Server
  /** TCP port, or 0 for a UNIX socket. */
  readonly port: number
  /** Connections accepted (TCP level). */
  readonly accepts: () => number
  /** Every byte any connection sent to it. */
  readonly received: () => Buffer
  /** Live server-side sockets. */
  readonly sockets: ReadonlySet<Net.Socket>
}

/**
 * A plain TCP server; `handle` serves each connection (default: echo, honouring half-close:
 * the reply ends when the request does). Sockets are `allowHalfOpen`.
 */
export const startTarget = async (
  cleanup: Cleanup,
  handle: (socket: Net.Socket) => void = (s) => s.pipe(s),
  where: Where = { host: "127.0.0.1" }
): Promise<Target> => {
  let accepts = 0
  const chunks: Array<Buffer> = []
  const connections = makeConnections()
  const server = Net.createServer({ allowHalfOpen: true }, (s) => {
    accepts++
    connections.track(s)
    s.on("data", (c: Buffer) => chunks.push(c))
    handle(s)
  })
  cleanup.defer(() => close(server, connections.sockets))
  const port = await listen(server, where)
  return {
    server,
    port,
    accepts: () => accepts,
    received: () => Buffer.concat(chunks),
    sockets: connections.sockets
  }
}

/** A TLS server (the remote of an originate listener); `accepts` counts TCP connections. */
export const startTlsTarget = async (
  cleanup: Cleanup,
  options: Tls.TlsOptions,
  handle: (socket: Tls.TLSSocket) => void = (s) => s.pipe(s),
  where: Where = { host: "127.0.0.1" }
): Promise<Target & { readonly secured: () => number }> => {
  let accepts = 0
  let secured = 0
  const chunks: Array<Buffer> = []
  const connections = makeConnections()
  const server = Tls.createServer({ ...options, allowHalfOpen: true }, (s) => {
    secured++
    s.on("data", (c: Buffer) => chunks.push(c))
    handle(s)
  })
  server.on("connection", (s: Net.Socket) => {
    accepts++
    connections.track(s)
  })
  server.on("tlsClientError", () => {})
  cleanup.defer(() => close(server, connections.sockets))
  const port = await listen(server, where)
  return {
    server,
    port,
    accepts: () => accepts,
    secured: () => secured,
    received: () => Buffer.concat(chunks),
    sockets: connections.sockets
  }
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/**
 * A TLS connection that resolves on `secureConnect`, rejects on an error or close before it.
 * Half-open is allowed (the server ending its side does not end ours).
 */
export const connectTls = (cleanup: Cleanup, options: Tls.ConnectionOptions): Promise<Tls.TLSSocket> =>
  new Promise((resolve, reject) => {
    // `allowHalfOpen` is not in @types/node's ConnectionOptions, but tls.connect honours it.
    const s = Tls.connect({ host: "127.0.0.1", ...({ allowHalfOpen: true } as object), ...options })
    cleanup.defer(() => s.destroy())
    const onError = (e: Error) => reject(e)
    s.once("error", onError)
    s.once("close", () => reject(new Error("closed before the handshake completed")))
    s.once("secureConnect", () => {
      s.off("error", onError)
      s.on("error", () => {})
      resolve(s)
    })
  })

/** A plain TCP connection, resolved once connected. */
export const connectTcp = (cleanup: Cleanup, options: Net.NetConnectOpts): Promise<Net.Socket> =>
  new Promise((resolve, reject) => {
    const s = Net.connect({ allowHalfOpen: true, ...options })
    cleanup.defer(() => s.destroy())
    s.once("error", reject)
    s.once("connect", () => {
      s.off("error", reject)
      s.on("error", () => {})
      resolve(s)
    })
  })

/** What a TLS client saw of one connection attempt, from connect to close. */
export interface Probe {
  /** The client finished its side of the handshake. */
  readonly secureConnect: boolean
  /** Code (or message) of the first error the client saw. */
  readonly error: string | undefined
  /** Application bytes received. */
  readonly received: string
  /** The server ended the stream cleanly (TLS close_notify / FIN) rather than resetting. */
  readonly ended: boolean
}

/**
 * Connects, writes `payload` once the handshake is done, and reports everything until the
 * connection closes (a server that keeps it open fails the probe after `ms`).
 */
export const probeTls = (options: Tls.ConnectionOptions, payload = "ping\n", ms = 5000): Promise<Probe> => {
  let secureConnect = false
  let error: string | undefined
  let ended = false
  let received = ""
  const s = Tls.connect({ host: "127.0.0.1", ...options })
  s.setEncoding("utf8")
  s.on("data", (d: string) => (received += d))
  s.once("secureConnect", () => {
    secureConnect = true
    s.write(payload)
  })
  s.once("end", () => {
    ended = true
    s.end()
  })
  s.on("error", (e: Error & { code?: string }) => (error ??= e.code ?? e.message))
  const done = new Promise<Probe>((resolve) =>
    s.once("close", () => resolve({ secureConnect, error, received, ended }))
  )
  // A probe that times out must not leave its socket behind.
  return within("TLS probe", ms, done).finally(() => s.destroy())
}

/** A reader that buffers a socket's data so that tests can wait for what they expect. */
export interface Reader {
  readonly text: () => string
  /** Waits until the data read so far contains `needle`. */
  readonly until: (needle: string, ms?: number) => Promise<string>
  /** Resolves when the stream has ended (FIN / close_notify). */
  readonly ended: Promise<void>
}

/** Starts buffering `socket`'s data. */
export const makeReader = (socket: Net.Socket): Reader => {
  let text = ""
  socket.setEncoding("utf8")
  socket.on("data", (d: string) => (text += d))
  const ended = new Promise<void>((r) => socket.once("end", () => r()))
  return {
    text: () => text,
    until: async (needle, ms = 5000) => {
      await eventually(
        JSON.stringify(needle),
        () => text.includes(needle),
        ms,
        () => `have ${JSON.stringify(text)}`
      )
      return text
    },
    ended
  }
}

// ---------------------------------------------------------------------------------------------
// openssl
// ---------------------------------------------------------------------------------------------

/** A running `openssl` process. */
export interface OpensslProcess {
  readonly child: ChildProcess
  readonly stdout: () => string
  readonly stderr: () => string
  /** Resolves with the exit code (or the signal name). */
  readonly exited: Promise<number | string>
  /** Waits until stdout (or stderr with `stream: "stderr"`) contains `needle`. */
  readonly until: (needle: string, ms?: number, stream?: "stdout" | "stderr") => Promise<void>
}

/** Spawns `openssl <args>` (stdin open for the test to write); it is killed at cleanup if still running. */
export const spawnOpenssl = (cleanup: Cleanup, args: ReadonlyArray<string>): OpensslProcess => {
  const daemon = Process.startDaemon("openssl", args, { stdin: "pipe" })
  cleanup.defer(() => daemon.stop("SIGKILL"))
  return {
    child: daemon.child,
    stdout: daemon.stdout,
    stderr: daemon.stderr,
    exited: daemon.exited.then(({ code, signal }) => code ?? signal ?? "unknown"),
    until: async (needle, ms = 5000, stream = "stdout") => {
      await daemon.waitForOutput(needle, { stream, timeoutMs: ms })
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Seeded streams and hashes
// ---------------------------------------------------------------------------------------------

const chunkSize = 64 * 1024
const zeros = Buffer.alloc(chunkSize)

/**
 * Writes `size` pseudo-random bytes derived from `seed` (AES-256-CTR keystream: fast and
 * reproducible), honouring backpressure, then ends the write side. Resolves with the SHA-256 of
 * what was written once it has been handed to the socket.
 */
export const sendSeeded = (socket: Net.Socket, seed: string, size: number): Promise<string> =>
  new Promise((resolve, reject) => {
    const key = createHash("sha256").update(seed).digest()
    const cipher = createCipheriv("aes-256-ctr", key, Buffer.alloc(16))
    const hash = createHash("sha256")
    let left = size
    const onError = (e: Error) => reject(e)
    socket.once("error", onError)
    const pump = () => {
      while (left > 0) {
        const n = Math.min(chunkSize, left)
        const chunk = cipher.update(n === chunkSize ? zeros : zeros.subarray(0, n))
        hash.update(chunk)
        left -= n
        if (!socket.write(chunk)) {
          socket.once("drain", pump)
          return
        }
      }
      socket.off("error", onError)
      socket.end()
      resolve(hash.digest("hex"))
    }
    pump()
  })

/** The SHA-256 and size of everything `socket` delivers until its end. */
export const hashIncoming = (socket: Net.Socket): Promise<{ readonly sha256: string; readonly bytes: number }> =>
  new Promise((resolve, reject) => {
    const hash = createHash("sha256")
    let bytes = 0
    socket.on("data", (c: Buffer) => {
      bytes += c.length
      hash.update(c)
    })
    socket.once("end", () => resolve({ sha256: hash.digest("hex"), bytes }))
    socket.once("error", reject)
  })
