/**
 * A mutual-TLS client for the black-box suites: it connects to a listener of a running `sleeve`
 * with a test identity, sends one message once the handshake is done, waits for its echo and
 * reports what it saw after the connection closed (secured or not, what came back, the first
 * error). Listeners under test forward to an echo server, so a full echo means the connection
 * was authorized end to end. Nothing here asserts: the suites compare the report.
 */
import type * as TestPki from "@sleeve/testing/TestPki"
import * as Tls from "node:tls"

/** What one TLS client connection saw, once it closed. */
export interface Exchange {
  readonly secured: boolean
  readonly echoed: string
  readonly error: string | undefined
}

/**
 * Connects to 127.0.0.1:`port` as `who`, trusting `caPem`, and once secured sends `message` and
 * waits for its echo; resolves when the connection has closed (it is destroyed after 10 s idle).
 */
export const exchange = (port: number, caPem: string, who: TestPki.Identity, message = "ping\n"): Promise<Exchange> =>
  new Promise((resolve) => {
    let secured = false
    let echoed = ""
    let error: string | undefined
    const socket = Tls.connect({ host: "127.0.0.1", port, ca: caPem, cert: who.certPem, key: who.keyPem })
    socket.setEncoding("utf8")
    socket.on("secureConnect", () => {
      secured = true
      socket.write(message)
    })
    socket.on("data", (d: string) => {
      echoed += d
      if (echoed === message) socket.end()
    })
    socket.on("error", (e: NodeJS.ErrnoException) => {
      error = e.code ?? e.message
    })
    socket.on("close", () => resolve({ secured, echoed, error }))
    socket.setTimeout(10_000, () => socket.destroy(new Error("client timeout")))
  })
