/**
 * Connection event log: one JSON line per event (accepted, handshake ok/failed, peer rejected,
 * closed with bytes and duration), each with the listener and a connection id, as ghostunnel and
 * Envoy access logs do. Events are emitted from Node socket callbacks on the data path, so the
 * sink is a plain synchronous function, not an Effect.
 *
 * Never log a secret: callers pass only names, DNs, codes and counts; key material never reaches
 * this module.
 */
import { Context, Layer } from "effect"

/** Severity of an event. */
export type Level = "debug" | "info" | "warn" | "error"

/** Writes one event. `fields` must be JSON-serialisable. */
export type EventSink = (level: Level, event: string, fields: Readonly<Record<string, unknown>>) => void

/** A sink that writes JSON lines to a stream (stdout by default). */
export const makeJson =
  (write: (line: string) => void = (line) => process.stdout.write(line)): EventSink =>
  (level, event, fields) =>
    write(`${JSON.stringify({ time: new Date().toISOString(), level, event, ...fields })}\n`)

/** A sink that keeps events in memory (for tests and embedding). */
export const makeMemory = (): {
  readonly sink: EventSink
  readonly events: Array<{ level: Level; event: string } & Record<string, unknown>>
} => {
  const events: Array<{ level: Level; event: string } & Record<string, unknown>> = []
  return { sink: (level, event, fields) => events.push({ level, event, ...fields }), events }
}

/** The event sink as a service. */
export class EventLog extends Context.Service<EventLog, EventSink>()("@sleeve/proxy/EventLog") {
  /** JSON lines on stdout. */
  static readonly layerJson = Layer.sync(EventLog)(() => makeJson())
  /** Discards every event. */
  static readonly layerSilent = Layer.succeed(EventLog)(() => {})
}
