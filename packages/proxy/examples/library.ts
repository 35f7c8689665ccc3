/**
 * Using named TLS configurations from a program, with Promises and with Effect (type-checked
 * with the package; the STARTTLS example next to it is the runnable one).
 *
 *   import { TlsConfigs } from "@sleeve/proxy"
 */
import { Metrics } from "@sleeve/metrics"
import { Effect, Layer } from "effect"
import type * as Net from "node:net"
import { TlsConfigs } from "../src/index.ts"

/** Promises: OPEN dev:("node1.example.com":2188:/TLS="MirrorClient"), then USE dev:(::/TLS="MirrorServer"). */
export const withPromises = async (accepted: Net.Socket): Promise<void> => {
  const sleeve = await TlsConfigs.open("sleeve.yaml")
  const out = await sleeve.connect("MirrorClient", "node1.example.com:2188") // TLS from the first byte
  out.end("hello\n")
  const secured = await sleeve.upgradeServer(accepted, "MirrorServer") // STARTTLS, server side
  secured.end(`hello ${secured.getPeerCertificate().subject.CN}\n`)
}

/** Effect: the same verbs as a service; the connection is closed with the scope. */
export const withEffect = Effect.gen(function* () {
  const sleeve = yield* TlsConfigs.TlsConfigs
  const { socket, peer } = yield* sleeve.connect("MirrorClient", "node1.example.com:2188")
  socket.write(`hello ${peer?.subjectString}\n`)
}).pipe(
  Effect.scoped,
  Effect.provide(TlsConfigs.TlsConfigs.layerFromFile("sleeve.yaml").pipe(Layer.provide(Metrics.Metrics.layerNoop)))
)
