/**
 * The admin HTTP endpoint: `GET /metrics` (Prometheus text format), `/healthz` (the process is
 * alive), `/readyz` (200 only when every listener is bound and the configuration in force is
 * valid), `/status` (JSON: listeners, TLS configurations with their certificates, the last reload
 * and live connection counts). `HEAD` answers as `GET` without the body; any other method or
 * path is a 404 with an empty body.
 *
 * It binds `admin.listen` (default 127.0.0.1:9464): loopback by default, because `/status` shows
 * certificate details and there is no authentication on this endpoint.
 *
 * Served by `node:http` directly, inside an Effect scope (bound on acquire, closed on release):
 * four fixed GET routes need no router, and Effect's HTTP server stack (with
 * @effect/platform-node's and its `ws` dependency) cost `sleeve run` about 4 MiB of resident
 * memory and 40 ms of start-up for nothing these routes use.
 */
import type { ConfigFile } from "@sleeve/core"
import type { Metrics } from "@sleeve/metrics"
import { Data, Effect, type Scope } from "effect"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"

/** What the endpoint reads: synchronous snapshots, but for `/status` (with several workers, it asks each). */
export interface Sources {
  readonly metrics: Metrics.Recorder
  /** `/readyz`: every listener bound and the configuration valid. */
  readonly ready: () => boolean
  /** `/status` body. */
  readonly status: () => unknown | Promise<unknown>
  /**
   * An error of the bound server (an `accept()` failure: out of descriptors or socket memory):
   * reported here instead of crashing the process; the endpoint keeps serving.
   */
  readonly onServerError?: (error: Error) => void
}

/** The endpoint, once bound. */
export interface Bound {
  /** `http://host:port` as bound (the real port when `admin.listen` asked for port 0). */
  readonly url: string
}

/** The endpoint could not bind its address. */
export class StatusServerError extends Data.TaggedError("StatusServerError")<{
  readonly message: string
  readonly cause: unknown
}> {}

interface Reply {
  readonly status: number
  readonly contentType?: string
  readonly body: string
}

const text = (body: string, status = 200): Reply => ({ status, contentType: "text/plain", body })

/** The answer to `GET path`, or `undefined` for a path that is not served. */
export const route = (sources: Sources, path: string): Reply | Promise<Reply> | undefined => {
  switch (path) {
    case "/healthz":
      return text("ok\n")
    case "/readyz":
      return sources.ready() ? text("ready\n") : text("not ready\n", 503)
    case "/status":
      // A promise either way (with several workers it asks each); a throw becomes a 500.
      return Promise.resolve()
        .then(sources.status)
        .then((body) => ({
          status: 200,
          contentType: "application/json",
          body: `${JSON.stringify(body, null, 2)}\n`
        }))
    case "/metrics":
      return Effect.runPromise(sources.metrics.metricsText).then((body) => ({
        status: 200,
        contentType: sources.metrics.contentType,
        body
      }))
  }
  return undefined
}

const send = (res: Http.ServerResponse, head: boolean, reply: Reply): void => {
  const headers: Record<string, string | number> = { "content-length": Buffer.byteLength(reply.body) }
  if (reply.contentType !== undefined) headers["content-type"] = reply.contentType
  res.writeHead(reply.status, headers)
  res.end(head ? undefined : reply.body)
}

const handle = (sources: Sources) => (req: Http.IncomingMessage, res: Http.ServerResponse) => {
  const head = req.method === "HEAD"
  const path = (req.url ?? "/").split("?", 1)[0] as string
  const reply = req.method === "GET" || head ? route(sources, path) : undefined
  if (reply === undefined) {
    res.writeHead(404, { "content-length": 0 })
    res.end()
  } else if (reply instanceof Promise) {
    reply.then(
      (r) => send(res, head, r),
      () => send(res, head, text("internal error\n", 500))
    )
  } else send(res, head, reply)
}

/** Serves the admin endpoint on `address` for the lifetime of the scope. */
export const serve = (
  address: Extract<ConfigFile.Address, { _tag: "Tcp" }>,
  sources: Sources
): Effect.Effect<Bound, StatusServerError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.callback<Http.Server, StatusServerError>((resume) => {
      const server = Http.createServer(handle(sources))
      // Short limits: the clients are probes and scrapers on a trusted network.
      server.headersTimeout = 10_000
      server.requestTimeout = 10_000
      const onError = (cause: unknown) =>
        resume(Effect.fail(new StatusServerError({ message: (cause as Error).message, cause })))
      server.once("error", onError)
      server.listen(address.port, address.host, () => {
        server.off("error", onError)
        server.on("error", (e: Error) => sources.onServerError?.(e))
        resume(Effect.succeed(server))
      })
    }),
    (server) =>
      Effect.callback<void>((resume) => {
        server.close(() => resume(Effect.void))
        server.closeAllConnections()
      })
  ).pipe(
    Effect.map((server) => {
      const bound = server.address() as AddressInfo
      const host = bound.family === "IPv6" ? `[${bound.address}]` : bound.address
      return { url: `http://${host}:${bound.port}` }
    })
  )
