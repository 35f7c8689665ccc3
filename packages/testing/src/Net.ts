/**
 * Loopback plumbing for tests: a free TCP port for programs that must be told a port number
 * (Prometheus, PostgreSQL, an admin endpoint written into a config), `listen` that resolves with
 * the bound port and fails on a bind error, `makeConnections` to keep a test server's live
 * sockets and count the closed ones, and `close` that ends a server with the sockets it still
 * holds, so that `afterAll` never waits for a client that forgot to hang up.
 *
 * What it deliberately does not do: reserve a port. `freePort` binds port 0 and releases it, so
 * another process may take the port before the program under test binds it; prefer port 0 and
 * `listen` wherever the program can report its own address, and retry where it cannot.
 */
import * as Net from "node:net"

/** A TCP port on `host` that was free a moment ago (bound on port 0, then released). */
export const freePort = (host = "127.0.0.1"): Promise<number> =>
  new Promise((resolve, reject) => {
    const probe = Net.createServer()
    probe.once("error", reject)
    probe.listen(0, host, () => {
      const { port } = probe.address() as Net.AddressInfo
      probe.close(() => resolve(port))
    })
  })

/** Where {@link listen} binds: a host and port (default port 0), or a UNIX socket path. */
export type Where = { readonly host: string; readonly port?: number } | { readonly path: string }

/**
 * Starts `server` listening (default `127.0.0.1`, port 0) and resolves with the bound TCP port
 * (0 for a UNIX socket); rejects when it cannot bind.
 */
export const listen = (server: Net.Server, where: Where = { host: "127.0.0.1" }): Promise<number> =>
  new Promise((resolve, reject) => {
    server.once("error", reject)
    const done = () => {
      server.off("error", reject)
      const address = server.address()
      resolve(typeof address === "object" && address !== null ? address.port : 0)
    }
    if ("path" in where) server.listen(where.path, done)
    else server.listen(where.port ?? 0, where.host, done)
  })

/**
 * Destroys `sockets` (the server's live connections, as the caller tracked them) and closes
 * `server`; resolves once it has closed (also when it was not listening).
 */
export const close = (server: Net.Server, sockets: Iterable<Net.Socket> = []): Promise<void> =>
  new Promise((resolve) => {
    for (const socket of sockets) socket.destroy()
    server.close(() => resolve())
  })

/** The connections a test server accepted: the live ones, and a wait for the n-th to close. */
export interface Connections {
  /** The sockets still open (pass it to {@link close}). */
  readonly sockets: ReadonlySet<Net.Socket>
  /**
   * Keeps `socket` until it closes. Its errors are swallowed: resets and aborted handshakes are
   * what these tests provoke, and the test asserts on what the peer saw instead.
   */
  readonly track: (socket: Net.Socket) => void
  /** Resolves once `n` (default 1) tracked sockets have closed. */
  readonly closed: (n?: number) => Promise<void>
}

/** An empty {@link Connections}. */
export const makeConnections = (): Connections => {
  const sockets = new Set<Net.Socket>()
  let closedCount = 0
  const waiters: Array<{ readonly n: number; readonly resolve: () => void }> = []
  return {
    sockets,
    track: (socket) => {
      sockets.add(socket)
      socket.on("error", () => {})
      socket.once("close", () => {
        sockets.delete(socket)
        closedCount++
        for (const w of waiters.filter((w) => w.n <= closedCount)) w.resolve()
      })
    },
    closed: (n = 1) =>
      closedCount >= n ? Promise.resolve() : new Promise<void>((resolve) => waiters.push({ n, resolve }))
  }
}
