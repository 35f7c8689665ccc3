/**
 * PostgreSQL STARTTLS (SSLRequest) through `mode: starttls` listeners, with real PostgreSQL 15
 * servers and `psql` on loopback.
 *
 * Server side: a PostgreSQL with `ssl = off` sits behind Sleeve; `psql` with `sslmode=require`
 * and with `sslmode=verify-full` (test CA, host name `localhost`) connects through Sleeve and
 * runs queries, while the server itself sees a plaintext connection; `sslmode=disable` is refused
 * with PostgreSQL's own "SSL required" error and never reaches the server. Client side: a
 * PostgreSQL with `ssl = on` that admits TCP clients only over SSL (`hostssl`) is reached by a
 * legacy `psql` with `sslmode=disable` through Sleeve, and reports the session as SSL.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import * as Metrics from "@sleeve/metrics/Metrics"
import * as TestPki from "@sleeve/testing/TestPki"
import * as Postgres from "./support/Postgres.ts"
import * as ProxyUnderTest from "./support/ProxyUnderTest.ts"

let pki: TestPki.TestPki
let ca: TestPki.Identity
let otherCa: TestPki.Identity
let plainServer: Postgres.Server | undefined
let tlsServer: Postgres.Server | undefined
let proxy: ProxyUnderTest.ProxyUnderTest | undefined

beforeAll(async () => {
  pki = await TestPki.make()
  ca = await pki.ca({ name: "ca", subject: [{ CN: "Sleeve PostgreSQL Test CA" }] })
  otherCa = await pki.ca({ name: "other-ca", subject: [{ CN: "Another CA" }] })
  const [front, database] = await Promise.all([
    pki.leaf(ca, { name: "front", subject: [{ CN: "localhost" }] }),
    pki.leaf(ca, { name: "database", subject: [{ CN: "db.test" }] })
  ])
  ;[plainServer, tlsServer] = await Promise.all([Postgres.start(), Postgres.start({ ssl: database, requireSsl: true })])
  const file = await pki.write(
    "sleeve.yaml",
    [
      "tls:",
      "  PgFront:",
      "    type: server",
      `    certificateFile: ${front.certFile}`,
      `    privateKeyFile: ${front.keyFile}`,
      "  PgOut:",
      "    type: client",
      `    caFile: ${ca.certFile}`,
      "    authorizedPeers: ['CN=db.test']",
      "listeners:",
      "  - name: pg-in",
      "    mode: starttls",
      "    protocol: postgres",
      "    side: server",
      "    requireTls: true",
      '    listen: "127.0.0.1:0"',
      `    target: "127.0.0.1:${plainServer.port}"`,
      "    tls: PgFront",
      "  - name: pg-out",
      "    mode: starttls",
      "    protocol: postgres",
      "    side: client",
      '    listen: "127.0.0.1:0"',
      `    target: "127.0.0.1:${tlsServer.port}"`,
      "    tls: PgOut",
      ""
    ].join("\n")
  )
  proxy = await ProxyUnderTest.start(file)
}, 60_000)

afterAll(async () => {
  await proxy?.running.drain(0)
  await Promise.all([plainServer?.stop(), tlsServer?.stop()])
  await pki?.cleanup()
}, 30_000)

const port = (listener: string): number => proxy!.port(listener)

/** `host=127.0.0.1 port=… user=postgres dbname=postgres` plus `extra`. */
const conninfo = (port: number, extra: string) => `host=127.0.0.1 port=${port} user=postgres dbname=postgres ${extra}`

/** What the server says about the session that runs the query: SSL or not. */
const sslOfThisSession = "select ssl, coalesce(version, '-') from pg_stat_ssl where pid = pg_backend_pid()"

/** "connection authorized" lines in a server log: sessions that got past authentication. */
const authorized = (server: Postgres.Server) =>
  server
    .log()
    .split("\n")
    .filter((l) => l.includes("connection authorized")).length

describe("server side: Sleeve answers SSLRequest for a PostgreSQL with ssl = off", { timeout: 20_000 }, () => {
  it("psql sslmode=require connects through Sleeve and runs a query; the server itself saw plaintext", async () => {
    const result = await Postgres.psql(conninfo(port("pg-in"), "sslmode=require"), `select 42; ${sslOfThisSession}`)
    assert.strictEqual(result.code, 0, result.stderr)
    assert.strictEqual(result.stdout, "42\nf|-\n")
    await proxy!.counted(
      Metrics.MetricName.starttlsUpgradesTotal,
      { listener: "pg-in", protocol: "postgres", result: "ok" },
      1
    )
  })

  it("psql sslmode=verify-full checks the chain against the test CA and the host name localhost", async () => {
    const ok = await Postgres.psql(
      `host=localhost hostaddr=127.0.0.1 port=${port("pg-in")} user=postgres dbname=postgres sslmode=verify-full sslrootcert=${ca.certFile}`,
      "select current_user"
    )
    assert.strictEqual(ok.code, 0, ok.stderr)
    assert.strictEqual(ok.stdout, "postgres\n")

    // The same with a CA that did not issue Sleeve's certificate: psql refuses to go on.
    const wrongCa = await Postgres.psql(
      `host=localhost hostaddr=127.0.0.1 port=${port("pg-in")} user=postgres dbname=postgres sslmode=verify-full sslrootcert=${otherCa.certFile}`,
      "select 1"
    )
    assert.strictEqual(wrongCa.code, 2)
    assert.include(wrongCa.stderr, "certificate verify failed")
  })

  it("psql sslmode=disable is refused with PostgreSQL's SSL-required error and never reaches the server", async () => {
    const before = authorized(plainServer!)
    const result = await Postgres.psql(conninfo(port("pg-in"), "sslmode=disable"), "select 1")
    assert.strictEqual(result.code, 2)
    assert.include(result.stderr, "FATAL:  SSL required: this server only accepts SSL connections")
    await proxy!.counted(
      Metrics.MetricName.connectionsRefusedTotal,
      { listener: "pg-in", reason: "starttls_required" },
      1
    )
    await proxy!.counted(Metrics.MetricName.starttlsUpgradesTotal, { listener: "pg-in", result: "refused" }, 1)
    // A session that got through would be logged as authorized (log_connections = on).
    const check = await Postgres.psql(conninfo(plainServer!.port, "sslmode=disable"), "select 1")
    assert.strictEqual(check.code, 0, check.stderr)
    assert.strictEqual(authorized(plainServer!), before + 1, "only the direct check session was authorized")
  })
})

describe("client side: Sleeve sends SSLRequest for a legacy psql", { timeout: 20_000 }, () => {
  it("the server admits only SSL clients: psql sslmode=disable directly is refused", async () => {
    const result = await Postgres.psql(conninfo(tlsServer!.port, "sslmode=disable"), "select 1")
    assert.strictEqual(result.code, 2)
    assert.include(result.stderr, "no encryption")
  })

  it("psql sslmode=disable reaches it through Sleeve, and the server sees an SSL session", async () => {
    const result = await Postgres.psql(conninfo(port("pg-out"), "sslmode=disable"), `select 42; ${sslOfThisSession}`)
    assert.strictEqual(result.code, 0, result.stderr)
    assert.strictEqual(result.stdout, "42\nt|TLSv1.3\n")
    await proxy!.counted(
      Metrics.MetricName.starttlsUpgradesTotal,
      { listener: "pg-out", protocol: "postgres", result: "ok" },
      1
    )
    await proxy!.counted(Metrics.MetricName.handshakesTotal, { listener: "pg-out", role: "client", result: "ok" }, 1)
  })

  it("psql with its default sslmode=prefer: Sleeve answers its SSLRequest N and secures the session itself", async () => {
    const result = await Postgres.psql(conninfo(port("pg-out"), ""), `${sslOfThisSession}; show ssl`)
    assert.strictEqual(result.code, 0, result.stderr)
    assert.strictEqual(result.stdout, "t|TLSv1.3\non\n")
    await proxy!.counted(
      Metrics.MetricName.starttlsUpgradesTotal,
      { listener: "pg-out", protocol: "postgres", result: "ok" },
      2
    )
  })
})
