/**
 * Certificate rotation under reload (issue 12, faults): a real `sleeve run` whose certificate
 * chain (leaf + intermediate) and key are replaced while SIGHUP storms arrive and the file watcher
 * polls, first atomically (write a temporary file, rename it over), then in place (truncate, then
 * write in several pieces with pauses, as `cat leaf.pem inter.pem > server.crt` or an editor
 * does). Throughout, clients that trust only the root connect back to back, and:
 *
 * - every connection completes a verified TLS 1.3 handshake (the root-only client proves the
 *   intermediate was sent; the handshake's signature proves the key matched the certificate) and
 *   an echo round trip, and presents one of the complete pairs: never a half-read chain, never a
 *   mismatched pair;
 * - the pairs follow each other in order (no reload goes back to an older pair);
 * - each rotation ends with the new certificate seen by `openssl s_client` (its SHA-256
 *   fingerprint) and on `/status`;
 * - a reload that reads a certificate that does not match the key yet is refused and logged
 *   (`reload_failed` naming the field and the rule), and counted; the old pair keeps serving.
 *
 * The in-place writer cuts the chain exactly after the leaf's END line and in the middle of the
 * intermediate's BEGIN line: both cuts leave a file that holds one complete certificate, which a
 * reader could take for the whole chain.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Exposition from "@sleeve/testing/Exposition"
import { close, listen, makeConnections } from "@sleeve/testing/Net"
import * as Process from "@sleeve/testing/Process"
import * as TestPki from "@sleeve/testing/TestPki"
import { sleep, waitUntil } from "@sleeve/testing/Wait"
import { X509Certificate } from "node:crypto"
import * as Fs from "node:fs"
import * as Net from "node:net"
import { join } from "node:path"
import * as Tls from "node:tls"
import { request } from "undici"
import { type SleeveDaemon, startSleeve } from "../support/Prometheus.ts"

let pki: TestPki.TestPki
let root: TestPki.Identity
const pairs: Array<TestPki.Identity> = []
let echo: Net.Server
const echoSockets = makeConnections()
let sleeve: SleeveDaemon

const fingerprint = (id: TestPki.Identity): string => new X509Certificate(id.certPem).fingerprint256

beforeAll(async () => {
  pki = await TestPki.make()
  root = await pki.ca({ name: "root", subject: [{ CN: "Rotation Root" }] })
  const inter = await pki.intermediate(root, { name: "inter", subject: [{ CN: "Rotation Intermediate" }] })
  for (const n of ["a", "b", "c", "d"]) {
    pairs.push(
      await pki.leaf(inter, {
        name: `server-${n}`,
        subject: [{ CN: "localhost", O: `Pair ${n}` }],
        san: { dns: ["localhost"], ip: ["127.0.0.1"] }
      })
    )
  }
  echo = Net.createServer((s) => {
    echoSockets.track(s)
    s.pipe(s)
  })
  const echoPort = await listen(echo)
  await pki.write("server.crt", pairs[0]!.chainPem)
  await pki.write("server.key", pairs[0]!.keyPem)
  await pki.write(
    "sleeve.yaml",
    `
admin: { listen: "127.0.0.1:0" }
tls:
  Server:
    type: server
    certificateFile: server.crt
    privateKeyFile: server.key
listeners:
  - { name: in, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:${echoPort}", tls: Server }
`
  )
  sleeve = await startSleeve("sleeve.yaml", { cwd: pki.dir })
}, 60_000)

afterAll(async () => {
  await sleeve?.stop("SIGTERM")
  if (echo !== undefined) await close(echo, echoSockets.sockets)
  await pki?.cleanup()
})

/** One probe: a verified handshake (root-only trust) and an echo round trip. */
interface Probe {
  readonly ok: boolean
  readonly fingerprint?: string
  readonly error?: string
  readonly startedAt: number
}

const probeOnce = (port: number): Promise<Probe> =>
  new Promise((resolve) => {
    const startedAt = performance.now()
    const s = Tls.connect({ host: "127.0.0.1", port, ca: root.certPem, servername: "localhost", minVersion: "TLSv1.3" })
    const fail = (e: Error) => {
      s.destroy()
      resolve({ ok: false, error: e.message, startedAt })
    }
    s.setTimeout(15_000, () => fail(new Error("probe timed out")))
    s.once("error", fail)
    s.once("secureConnect", () => {
      const fp = s.getPeerCertificate().fingerprint256
      s.write("ping\n")
      s.once("data", (d: Buffer) => {
        s.end()
        s.off("error", fail)
        s.on("error", () => {})
        resolve(
          d.toString() === "ping\n"
            ? { ok: true, fingerprint: fp, startedAt }
            : { ok: false, error: `echo ${JSON.stringify(d.toString())}`, startedAt }
        )
      })
    })
  })

/** Clients connecting back to back until `stop()`; resolves with every probe. */
const startProbing = (port: number, concurrency = 3) => {
  let running = true
  const probes: Array<Probe> = []
  const workers = Array.from({ length: concurrency }, async () => {
    while (running) probes.push(await probeOnce(port))
  })
  return {
    probes,
    stop: async () => {
      running = false
      await Promise.all(workers)
      return probes
    }
  }
}

/** SIGHUP every `everyMs` until stopped. */
const hupStorm = (everyMs: number) => {
  let sent = 0
  const timer = setInterval(() => {
    sleeve.child.kill("SIGHUP")
    sent++
  }, everyMs)
  return {
    stop: () => {
      clearInterval(timer)
      return sent
    }
  }
}

/** `openssl s_client` against the listener (root-only trust): the SHA-256 fingerprint of the leaf it verified. */
const sClientFingerprint = async (port: number): Promise<string> => {
  const r = await Process.run(
    "openssl",
    [
      "s_client",
      "-connect",
      `127.0.0.1:${port}`,
      "-servername",
      "localhost",
      "-CAfile",
      root.certFile,
      "-verify_return_error"
    ],
    { input: "", timeoutMs: 20_000 }
  )
  const pem = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/.exec(r.stdout)
  if (r.code !== 0 || pem === null || !r.stdout.includes("Verify return code: 0 (ok)")) {
    throw new Error(`s_client failed (exit ${r.code}): ${r.stdout.slice(-600)}${r.stderr.slice(-600)}`)
  }
  return new X509Certificate(pem[0]).fingerprint256
}

const statusFingerprint = async (): Promise<string> => {
  const r = await request(`${sleeve.admin}/status`)
  const body = (await r.body.json()) as { tls: ReadonlyArray<{ certificate?: { fingerprint256: string } }> }
  return body.tls[0]!.certificate!.fingerprint256
}

const reloadsFailed = async (): Promise<number> => {
  const r = await request(`${sleeve.admin}/metrics`)
  const samples = Exposition.parse(await r.body.text())
  return samples.get(Exposition.seriesKey("sleeve_config_reloads_total", { result: "failed" })) ?? 0
}

/** Waits until a real client sees `id`'s certificate. */
const waitForServed = (port: number, id: TestPki.Identity) =>
  waitUntil(
    `openssl s_client to see ${id.name}`,
    async () => ((await sClientFingerprint(port)) === fingerprint(id) ? true : undefined),
    { timeoutMs: 20_000, everyMs: 250 }
  )

/** Replaces `name` atomically: a complete temporary file renamed over it. */
const replaceAtomically = (name: string, content: string) => {
  const tmp = join(pki.dir, `.${name}.tmp`)
  Fs.writeFileSync(tmp, content)
  Fs.renameSync(tmp, join(pki.dir, name))
}

/** Rewrites `name` in place: truncated, then `pieces` written one after another with pauses. */
const rewriteInPlace = async (name: string, pieces: ReadonlyArray<string>, pauseMs: number) => {
  const fd = Fs.openSync(join(pki.dir, name), "w") // O_TRUNC: the file is empty from here on
  try {
    for (const p of pieces) {
      await sleep(pauseMs)
      Fs.writeSync(fd, p)
    }
  } finally {
    Fs.closeSync(fd)
  }
}

/** A chain split where a careless reader would take a prefix for a whole file. */
const chainPieces = (id: TestPki.Identity): ReadonlyArray<string> => {
  const leafEnd = id.chainPem.indexOf("-----END CERTIFICATE-----") + "-----END CERTIFICATE-----\n".length
  const midLeaf = Math.floor(leafEnd / 2)
  const midBegin = leafEnd + "-----BEGIN CERT".length
  const midInter = midBegin + Math.floor((id.chainPem.length - midBegin) / 2)
  expect(id.chainPem.slice(leafEnd)).toMatch(/^-----BEGIN CERTIFICATE-----/)
  return [
    id.chainPem.slice(0, midLeaf),
    id.chainPem.slice(midLeaf, leafEnd), // the leaf is complete: the file parses as a one-certificate chain
    id.chainPem.slice(leafEnd, midBegin), // half a BEGIN line after it
    id.chainPem.slice(midBegin, midInter),
    id.chainPem.slice(midInter)
  ]
}

const keyPieces = (id: TestPki.Identity): ReadonlyArray<string> => {
  const k = id.keyPem
  return [
    k.slice(0, 20),
    k.slice(20, Math.floor(k.length / 2)),
    k.slice(Math.floor(k.length / 2), k.length - 3),
    k.slice(k.length - 3)
  ]
}

describe("sleeve run: certificate files replaced during reload", () => {
  it("every connection is served by one complete pair; each rotation commits the new pair or keeps the old one, logging why", async () => {
    const port = sleeve.listeners.in!.port
    const [a, b, c, d] = pairs as [TestPki.Identity, TestPki.Identity, TestPki.Identity, TestPki.Identity]
    expect(await sClientFingerprint(port)).toBe(fingerprint(a))
    const probing = startProbing(port)
    const failedBefore = await reloadsFailed()

    // 1. Atomic: certificate chain, then key, each renamed over the old file, under a SIGHUP storm.
    let storm = hupStorm(50)
    replaceAtomically("server.crt", b.chainPem)
    await sleep(120)
    replaceAtomically("server.key", b.keyPem)
    await waitForServed(port, b)
    const atomicHups = storm.stop()

    // 2. In place, key first, then the chain: once the key is complete, every prefix of the chain
    //    that holds the whole leaf matches it.
    storm = hupStorm(100)
    const eventsBeforeInPlace = sleeve.events().length
    await rewriteInPlace("server.key", keyPieces(c), 150)
    await rewriteInPlace("server.crt", chainPieces(c), 150)
    await waitForServed(port, c)

    // 3. In place, chain first, then the key after a pause long enough for a reload to run in
    //    between: that reload sees a certificate that does not match the key, and is refused.
    const eventsBeforeMismatch = sleeve.events().length
    await rewriteInPlace("server.crt", chainPieces(d), 150)
    const mismatch = await sleeve.waitForEvent(
      "reload_failed",
      (e) => JSON.stringify(e.problems).includes("tls.Server.privateKeyFile"),
      { after: eventsBeforeMismatch, timeoutMs: 15_000 }
    )
    expect(String((mismatch.problems as ReadonlyArray<string>)[0])).toMatch(
      /sleeve\.yaml: tls\.Server\.privateKeyFile: .*does not belong to certificate .*their public keys differ/
    )
    // Refused: the old pair still serves.
    expect(await sClientFingerprint(port)).toBe(fingerprint(c))
    await rewriteInPlace("server.key", keyPieces(d), 150)
    await waitForServed(port, d)
    const inPlaceHups = storm.stop()

    await sleep(300)
    const probes = await probing.stop()
    expect(await statusFingerprint()).toBe(fingerprint(d))

    // Every connection was served whole, by one of the complete pairs.
    const failures = probes.filter((p) => !p.ok)
    expect(failures.map((p) => p.error)).toEqual([])
    const order = [a, b, c, d].map(fingerprint)
    const seen = probes.map((p) => order.indexOf(p.fingerprint!))
    expect(seen.every((i) => i >= 0)).toBe(true)
    // In order: once a probe started after another had seen pair i, none sees a pair before i - 1
    // (probes run side by side, so one in flight at a switch may still see the previous pair).
    const byStart = probes.map((p, k) => ({ at: p.startedAt, i: seen[k]! })).sort((x, y) => x.at - y.at)
    let highest = 0
    for (const p of byStart) {
      expect(p.i).toBeGreaterThanOrEqual(highest - 1)
      highest = Math.max(highest, p.i)
    }
    expect(new Set(seen)).toEqual(new Set([0, 1, 2, 3]))

    // Each refused reload was logged with its problem and counted; none of them changed anything.
    const failed = sleeve.events().filter((e) => e.event === "reload_failed")
    for (const e of failed) {
      for (const p of e.problems as ReadonlyArray<string>) expect(p).toMatch(/^sleeve\.yaml: tls\.Server\.\w+: /)
    }
    expect((await reloadsFailed()) - failedBefore).toBe(failed.length)
    const inPlace = sleeve.events().slice(eventsBeforeInPlace)
    // The guard at work: reloads asked for while a file was being written waited for it.
    expect(inPlace.filter((e) => e.event === "reload_waiting").length).toBeGreaterThan(0)
    const summary = {
      probes: probes.length,
      sighups: { atomic: atomicHups, inPlace: inPlaceHups },
      reloaded: sleeve.events().filter((e) => e.event === "reloaded").length,
      reloadFailed: failed.length,
      reloadFailedInPlace: inPlace.filter((e) => e.event === "reload_failed").length,
      waited: sleeve.events().filter((e) => e.event === "reload_waiting").length,
      perPair: [0, 1, 2, 3].map((i) => seen.filter((s) => s === i).length)
    }
    console.log(`certificate rotation under reload: ${JSON.stringify(summary)}`)
    expect(summary.reloaded).toBeGreaterThan(0)
  }, 120_000)
})
