/**
 * The admin HTTP endpoint: `GET /metrics` (Prometheus text format), `/healthz` (the process is
 * alive), `/readyz` (200 only when every listener is bound and the configuration in force is
 * valid), `/status` (JSON: listeners, TLS configurations with their certificates, the last reload
 * and live connection counts). Served by @effect/platform-node's HTTP server.
 *
 * It binds `admin.listen` (default 127.0.0.1:9464): loopback by default, because `/status` shows
 * certificate details and there is no authentication on this endpoint.
 */
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import type { ConfigFile } from "@sleeve/core"
import type { Metrics } from "@sleeve/metrics"
import { Context, Effect, Layer, type Scope } from "effect"
import { HttpRouter, HttpServer, HttpServerResponse } from "effect/http"
import { NetAddress } from "effect/net"
import { createServer } from "node:http"

/** What the endpoint reads: synchronous snapshots, but for `/status` (with several workers, it asks each). */
export interface Sources {
  readonly metrics: Metrics.Recorder
  /** `/readyz`: every listener bound and the configuration valid. */
  readonly ready: () => boolean
  /** `/status` body. */
  readonly status: () => unknown | Promise<unknown>
}

const json = (body: unknown, status = 200) =>
  HttpServerResponse.text(`${JSON.stringify(body, null, 2)}\n`, { status, contentType: "application/json" })

/** The routes, as a layer needing an `HttpRouter`. */
export const routes = (sources: Sources) =>
  HttpRouter.use(
    Effect.fnUntraced(function* (router) {
      yield* router.add("GET", "/healthz", HttpServerResponse.text("ok\n"))
      yield* router.add(
        "GET",
        "/readyz",
        Effect.sync(() =>
          sources.ready() ? HttpServerResponse.text("ready\n") : HttpServerResponse.text("not ready\n", { status: 503 })
        )
      )
      yield* router.add(
        "GET",
        "/status",
        Effect.promise(async () => json(await sources.status()))
      )
      yield* router.add(
        "GET",
        "/metrics",
        Effect.map(sources.metrics.metricsText, (text) =>
          HttpServerResponse.text(text, { contentType: sources.metrics.contentType })
        )
      )
    })
  )

/** Serves the admin endpoint on `address` for the lifetime of the layer. */
export const layer = (address: Extract<ConfigFile.Address, { _tag: "Tcp" }>, sources: Sources) =>
  HttpRouter.serve(routes(sources), { disableLogger: true, disableListenLog: true }).pipe(
    Layer.provideMerge(NodeHttpServer.layer(createServer, { port: address.port, host: address.host }))
  )

/** Serves the admin endpoint for the lifetime of the current scope; succeeds with its URL. */
export const serve = (
  address: Extract<ConfigFile.Address, { _tag: "Tcp" }>,
  sources: Sources
): Effect.Effect<string | undefined, unknown, Scope.Scope> =>
  Effect.map(Layer.build(layer(address, sources)), (context) => {
    const bound = Context.get(context, HttpServer.HttpServer).address
    return bound._tag === "UnixPathAddress" ? undefined : NetAddress.formatUrlUnsafe(bound, "http")
  })
