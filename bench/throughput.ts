/**
 * Throughput and memory benchmark of a `terminate` listener, against a baseline proxy that is
 * nothing but `tls.createServer` + `pipe()` both ways (the floor any Node TLS proxy pays).
 *
 *   node_modules/.bin/node bench/throughput.ts [MiB per run=512] [rounds=3] [idle connections=1000]
 *
 * Path: TLS client → proxy (terminate) → plaintext echo backend → proxy → TLS client. The client,
 * the proxy and the backend are separate processes; the proxy's CPU time comes from
 * /proc/PID/stat (utime+stime) around each run, which is far less noisy than wall time on a small
 * shared machine. Rounds interleave Sleeve and the baseline. Memory: RSS of the proxy process
 * before and after opening N idle mutual-TLS connections through it.
 *
 * Results are recorded in bench/README.md. Never part of `test`.
 */
import * as TestPki from "@sleeve/testing/TestPki"
import { type ChildProcess, spawn } from "node:child_process"
import { createHash, randomBytes } from "node:crypto"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"
import * as Tls from "node:tls"

const mib = Number(process.argv[2] ?? 512)
const rounds = Number(process.argv[3] ?? 3)
const idleConnections = Number(process.argv[4] ?? 1000)
const root = Path.resolve(import.meta.dirname, "..")
const node = process.execPath

const freePort = (): Promise<number> =>
  new Promise((resolve) => {
    const s = Net.createServer().listen(0, "127.0.0.1", () => {
      const p = (s.address() as Net.AddressInfo).port
      s.close(() => resolve(p))
    })
  })

const cpuSeconds = (pid: number): number => {
  const fields = Fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
  return (Number(fields[11]) + Number(fields[12])) / 100 // utime + stime, in clock ticks (100 Hz)
}
const rssKiB = (pid: number): number => {
  const m = /VmRSS:\s+(\d+)/.exec(Fs.readFileSync(`/proc/${pid}/status`, "utf8"))
  return Number(m?.[1] ?? 0)
}

const waitForPort = async (port: number) => {
  for (let i = 0; i < 200; i++) {
    const ok = await new Promise<boolean>((r) => {
      const s = Net.connect(port, "127.0.0.1", () => {
        s.destroy()
        r(true)
      })
      s.on("error", () => r(false))
    })
    if (ok) return
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`port ${port} never opened`)
}

/** Pushes `bytes` through a TLS connection and reads the echo back; returns seconds. */
const pushThrough = (port: number, ca: string, cert: TestPki.Identity, bytes: number): Promise<number> =>
  new Promise((resolve, reject) => {
    const chunk = randomBytes(64 * 1024)
    const started = performance.now()
    const socket = Tls.connect({
      port,
      host: "127.0.0.1",
      ca,
      cert: cert.certPem,
      key: cert.keyPem,
      servername: "localhost"
    })
    const sent = createHash("sha256")
    const got = createHash("sha256")
    let received = 0
    socket.on("data", (d: Buffer) => {
      got.update(d)
      received += d.length
      if (received >= bytes) {
        socket.destroy()
        if (sent.digest("hex") !== got.digest("hex")) reject(new Error("echo differs from what was sent"))
        else resolve((performance.now() - started) / 1000)
      }
    })
    socket.on("error", reject)
    socket.once("secureConnect", () => {
      let written = 0
      const write = () => {
        while (written < bytes) {
          sent.update(chunk)
          written += chunk.length
          if (!socket.write(chunk)) return socket.once("drain", write)
        }
      }
      write()
    })
  })

const pki = await TestPki.make()
const ca = await pki.ca()
const server = await pki.leaf(ca, { name: "server", subject: [{ CN: "server" }] })
const client = await pki.leaf(ca, { name: "client", subject: [{ CN: "client" }] })
const children: Array<ChildProcess> = []
const start = (args: ReadonlyArray<string>, env: Record<string, string> = {}) => {
  const c = spawn(node, args, { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, ...env } })
  children.push(c)
  return c
}

try {
  const echoPort = await freePort()
  const echoScript = Path.join(pki.dir, "echo.mjs")
  Fs.writeFileSync(
    echoScript,
    `import net from "node:net"; net.createServer({ allowHalfOpen: true }, (s) => s.pipe(s).on("error", () => {})).listen(${echoPort}, "127.0.0.1")`
  )
  start([echoScript])

  const sleevePort = await freePort()
  const configPath = Path.join(pki.dir, "sleeve.yaml")
  Fs.writeFileSync(
    configPath,
    `tls:
  S:
    type: server
    caFile: ${pki.caFile}
    certificateFile: ${server.certFile}
    privateKeyFile: ${server.keyFile}
    verifyPeer: require
    authorizedPeers: ["CN=client"]
listeners:
  - { name: bench, mode: terminate, listen: "127.0.0.1:${sleevePort}", target: "127.0.0.1:${echoPort}", tls: S, maxConnections: 100000 }
admin:
  listen: "127.0.0.1:0"
`
  )
  // SLEEVE_NODE_OPTIONS, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof", profiles the proxy.
  const sleeveNodeArgs = (process.env.SLEEVE_NODE_OPTIONS ?? "").split(" ").filter((a) => a !== "")
  const sleeve = start([...sleeveNodeArgs, Path.join(root, "apps/sidecar/src/main.ts"), "run", "--config", configPath])

  const basePort = await freePort()
  const baseScript = Path.join(pki.dir, "baseline.mjs")
  Fs.writeFileSync(
    baseScript,
    `import net from "node:net"; import tls from "node:tls"; import fs from "node:fs"
tls.createServer({ cert: fs.readFileSync(${JSON.stringify(server.certFile)}), key: fs.readFileSync(${JSON.stringify(server.keyFile)}),
  ca: fs.readFileSync(${JSON.stringify(pki.caFile)}), requestCert: true, rejectUnauthorized: true }, (c) => {
  const u = net.connect(${echoPort}, "127.0.0.1"); c.pipe(u); u.pipe(c); c.on("error", () => u.destroy()); u.on("error", () => c.destroy())
}).listen(${basePort}, "127.0.0.1")`
  )
  const baseline = start([baseScript])
  await Promise.all([waitForPort(echoPort), waitForPort(sleevePort), waitForPort(basePort)])

  const caPem = Fs.readFileSync(pki.caFile, "utf8")
  const bytes = mib * 1024 * 1024
  const results: Record<string, Array<{ mbps: number; cpuPerGiB: number }>> = { sleeve: [], baseline: [] }
  for (let r = 0; r < rounds; r++) {
    for (const [name, port, proc] of [
      ["sleeve", sleevePort, sleeve],
      ["baseline", basePort, baseline]
    ] as const) {
      const cpu0 = cpuSeconds(proc.pid!)
      const seconds = await pushThrough(port, caPem, client, bytes)
      const cpu = cpuSeconds(proc.pid!) - cpu0
      results[name]!.push({ mbps: mib / seconds, cpuPerGiB: (cpu / mib) * 1024 })
    }
  }
  const median = (xs: Array<number>) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
  console.log(
    `Node ${process.version}, OpenSSL ${process.versions.openssl}, ${mib} MiB each way per run, ${rounds} rounds`
  )
  for (const [name, rs] of Object.entries(results)) {
    console.log(
      `${name.padEnd(9)} MiB/s ${rs.map((x) => x.mbps.toFixed(1)).join(" / ")}  median ${median(rs.map((x) => x.mbps)).toFixed(1)}` +
        `   proxy CPU-s per GiB ${rs.map((x) => x.cpuPerGiB.toFixed(2)).join(" / ")}  median ${median(rs.map((x) => x.cpuPerGiB)).toFixed(2)}`
    )
  }

  // Memory: idle mutual-TLS connections held open through Sleeve.
  const rss0 = rssKiB(sleeve.pid!)
  const held: Array<Tls.TLSSocket> = []
  for (let i = 0; i < idleConnections; i++) {
    held.push(
      await new Promise<Tls.TLSSocket>((resolve, reject) => {
        const s = Tls.connect(
          {
            port: sleevePort,
            host: "127.0.0.1",
            ca: caPem,
            cert: client.certPem,
            key: client.keyPem,
            servername: "localhost"
          },
          () => resolve(s)
        )
        s.on("error", reject)
      })
    )
  }
  await new Promise((r) => setTimeout(r, 1000))
  const rss1 = rssKiB(sleeve.pid!)
  console.log(
    `memory: RSS ${Math.round(rss0 / 1024)} MiB idle, ${Math.round(rss1 / 1024)} MiB with ${idleConnections} idle mTLS connections` +
      ` (${((rss1 - rss0) / idleConnections).toFixed(1)} KiB per connection, TLS + target socket)`
  )
  for (const s of held) s.destroy()
} finally {
  // SIGTERM first so a profiled proxy can write its profile while draining.
  for (const c of children) c.kill("SIGTERM")
  await new Promise((r) => setTimeout(r, 1500))
  for (const c of children) c.kill("SIGKILL")
  await pki.cleanup()
}
