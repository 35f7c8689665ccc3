/**
 * The contestants: how each is configured and started. Every proxy gets the same five
 * listeners on its own ports, all pinned to PROXY_CPU, all TLS 1.3 only, all in front of the same
 * backends (bench/loadgen.c on LOAD_CPU):
 *
 *   termEc    terminate, ECDSA P-256 certificate         → plaintext backend
 *   termRsa   terminate, RSA-2048 certificate            → plaintext backend
 *   termMtls  terminate, ECDSA, client certificate required and authorized → plaintext backend
 *   orig      originate: plaintext in → TLS to the TLS backend, verified for "localhost"
 *   smtp      STARTTLS SMTP, server side (Sleeve and stunnel only) → plaintext SMTP backend
 *
 * mTLS authorization: Sleeve `authorizedPeers: ["CN=client"]`; HAProxy `verify required` and a
 * `tcp-request session` rule on the subject DN; nginx `ssl_verify_client on` and a `map` on
 * `$ssl_client_s_dn` that sends any other DN to a closed port; the Node floor compares the
 * subject of the verified certificate; stunnel has no DN check, so `verifyChain = yes` only.
 *
 * The baseline is no proxy at all: the generator talks straight to loadgen servers pinned to
 * PROXY_CPU (TLS with the same certificates for the terminate figures, plaintext for the
 * originate ones, an SMTP server that does STARTTLS itself).
 */
import { spawnSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import type { Artefact } from "./artefact.ts"
import { freePort, LOAD_CPU, NOFILE, PROXY_CPU, type Proc, start } from "./procs.ts"

/** Connections a proxy can hold within NOFILE descriptors (two per proxied connection). */
export const MAX_PROXIED = Math.floor((NOFILE - 100) / 2)

export interface Pki {
  readonly dir: string
  readonly ca: string
  readonly ecCert: string
  readonly ecKey: string
  readonly ecPem: string // cert + key, for HAProxy
  readonly rsaCert: string
  readonly rsaKey: string
  readonly rsaPem: string
  readonly clientCert: string
  readonly clientKey: string
  readonly clientSubject: string
  /** Same CA, another subject DN: must be refused wherever DN authorization is configured. */
  readonly strangerCert: string
  readonly strangerKey: string
}

export interface Env {
  readonly pki: Pki
  readonly node: string
  readonly sleeve: Artefact
  readonly loadgen: string
  readonly floorScript: string
  readonly backend: { readonly plain: number; readonly tls: number; readonly smtp: number }
}

export interface Ports {
  readonly termEc: number
  readonly termRsa: number
  readonly termMtls: number
  readonly orig: number
  readonly smtp: number | undefined
}

export interface Running {
  readonly procs: ReadonlyArray<Proc>
  readonly ports: Ports
  /** Sleeve's `/readyz`. */
  readonly readyUrl: string | undefined
}

export type Kind = "sleeve" | "node" | "c" | "baseline"

export interface Contestant {
  readonly name: string
  readonly kind: Kind
  /** Whether termMtls authorizes the client's subject DN (not only its chain). */
  readonly dnAuthorization: boolean
  /** The CPUs it is pinned to (taskset -c). */
  readonly cpus: string
  /** Why it cannot run with this build (checked once before the run), or undefined when it can. */
  readonly unavailable?: ((env: Env) => string | undefined) | undefined
  readonly start: (env: Env, tag: string) => Promise<Running>
}

const allPorts = async (smtp: boolean): Promise<Ports> => ({
  termEc: await freePort(),
  termRsa: await freePort(),
  termMtls: await freePort(),
  orig: await freePort(),
  smtp: smtp ? await freePort() : undefined
})

const write = (env: Env, name: string, text: string) => {
  const file = Path.join(env.pki.dir, name)
  Fs.writeFileSync(file, text)
  return file
}

/** Sleeve's configuration: the same five listeners, plus the admin endpoint for `/readyz`. */
const sleeveConfig = (env: Env, ports: Ports, admin: number, workers: number | undefined) => {
  const { pki, backend } = env
  const tls13 = "protocols: { min: TLSv1.3 }"
  const l = (name: string, extra: string) => `  - { name: ${name}, maxConnections: 100000, ${extra} }`
  return `${workers === undefined ? "" : `workers: ${workers}\n`}tls:
  EC: { type: server, certificateFile: ${pki.ecCert}, privateKeyFile: ${pki.ecKey}, ${tls13} }
  RSA: { type: server, certificateFile: ${pki.rsaCert}, privateKeyFile: ${pki.rsaKey}, ${tls13} }
  MTLS: { type: server, certificateFile: ${pki.ecCert}, privateKeyFile: ${pki.ecKey}, caFile: ${pki.ca}, verifyPeer: require, authorizedPeers: ["${pki.clientSubject}"], ${tls13} }
  OUT: { type: client, caFile: ${pki.ca}, ${tls13} }
listeners:
${l("term-ec", `mode: terminate, listen: "127.0.0.1:${ports.termEc}", target: "127.0.0.1:${backend.plain}", tls: EC`)}
${l("term-rsa", `mode: terminate, listen: "127.0.0.1:${ports.termRsa}", target: "127.0.0.1:${backend.plain}", tls: RSA`)}
${l("term-mtls", `mode: terminate, listen: "127.0.0.1:${ports.termMtls}", target: "127.0.0.1:${backend.plain}", tls: MTLS`)}
${l("orig", `mode: originate, listen: "127.0.0.1:${ports.orig}", target: "127.0.0.1:${backend.tls}", tls: OUT, serverName: localhost`)}
${l("smtp", `mode: starttls, protocol: smtp, side: server, requireTls: true, listen: "127.0.0.1:${ports.smtp}", target: "127.0.0.1:${backend.smtp}", tls: EC`)}
admin: { listen: "127.0.0.1:${admin}" }
drainTimeout: 1s
`
}

/**
 * Sleeve, started as users start it: `apps/sidecar/dist/main.js run -c FILE`, executed directly
 * (its `#!` line picks Node and the launcher's flags; PATH leads to the repository's Node 24).
 * `workers` adds `workers: N` to the configuration (issue 10's multi-core setting): that
 * contestant is pinned to both cores, so it shares cpu 1 with the generator.
 */
const sleeveWith = (name: string, workers: number | undefined, cpus: string): Contestant => ({
  name,
  dnAuthorization: true,
  kind: "sleeve",
  cpus,
  unavailable:
    workers === undefined
      ? undefined
      : (env) => {
          // `sleeve check` validates the file as `run` would: a build without the setting refuses it.
          const file = write(
            env,
            `sleeve-${name.replace(/\W+/g, "-")}-check.yaml`,
            sleeveConfig(env, dummyPorts, 6, workers)
          )
          const r = spawnSync(env.sleeve.main, ["check", "-c", file], {
            encoding: "utf8",
            env: { ...process.env, PATH: `${env.sleeve.pathPrefix}:${process.env.PATH ?? ""}`, NO_COLOR: "1" }
          })
          if (r.status === 0) return undefined
          const why = `${r.stderr}${r.stdout}`.split("\n").find((x) => /workers/.test(x)) ?? `${r.stderr}${r.stdout}`
          return `this build of Sleeve refuses \`workers: ${workers}\` (sleeve check exited ${r.status}: ${why.trim().slice(0, 200)})`
        },
  start: async (env, tag) => {
    const ports = await allPorts(true)
    const admin = await freePort()
    const config = write(
      env,
      `sleeve-${name.replace(/\W+/g, "-")}-${tag}.yaml`,
      sleeveConfig(env, ports, admin, workers)
    )
    const proc = start("sleeve", cpus, [env.sleeve.main, "run", "-c", config], { pathPrefix: env.sleeve.pathPrefix })
    return { procs: [proc], ports, readyUrl: `http://127.0.0.1:${admin}/readyz` }
  }
})

const dummyPorts: Ports = { termEc: 1, termRsa: 2, termMtls: 3, orig: 4, smtp: 5 }

const sleeve = sleeveWith("Sleeve", undefined, String(PROXY_CPU))
export const SLEEVE_WORKERS = 2
const sleeveWorkers = sleeveWith(`Sleeve workers:${SLEEVE_WORKERS}`, SLEEVE_WORKERS, `${PROXY_CPU},${LOAD_CPU}`)

const floor: Contestant = {
  name: "node:tls+pipe",
  dnAuthorization: true,
  kind: "node",
  cpus: String(PROXY_CPU),
  start: async (env, tag) => {
    const ports = await allPorts(false)
    const { pki, backend } = env
    const t = (port: number, cert: string, key: string) => ({
      mode: "terminate",
      port,
      target: backend.plain,
      cert,
      key
    })
    const config = write(
      env,
      `floor-${tag}.json`,
      JSON.stringify({
        listeners: [
          t(ports.termEc, pki.ecCert, pki.ecKey),
          t(ports.termRsa, pki.rsaCert, pki.rsaKey),
          { ...t(ports.termMtls, pki.ecCert, pki.ecKey), ca: pki.ca, clientSubject: pki.clientSubject },
          { mode: "originate", port: ports.orig, target: backend.tls, ca: pki.ca }
        ]
      })
    )
    return { procs: [start("floor", PROXY_CPU, [env.node, env.floorScript, config])], ports, readyUrl: undefined }
  }
}

const stunnel: Contestant = {
  name: "stunnel",
  dnAuthorization: false,
  kind: "c",
  cpus: String(PROXY_CPU),
  start: async (env, tag) => {
    const ports = await allPorts(true)
    const { pki, backend } = env
    const server = (name: string, port: number, target: number, cert: string, key: string, extra = "") =>
      `[${name}]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${target}\ncert = ${cert}\nkey = ${key}\nsslVersionMin = TLSv1.3\n${extra}`
    const config = write(
      env,
      `stunnel-${tag}.conf`,
      `foreground = yes
pid =
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
${server("term-ec", ports.termEc, backend.plain, pki.ecCert, pki.ecKey)}
${server("term-rsa", ports.termRsa, backend.plain, pki.rsaCert, pki.rsaKey)}
${server("term-mtls", ports.termMtls, backend.plain, pki.ecCert, pki.ecKey, `CAfile = ${pki.ca}\nverifyChain = yes\n`)}
${server("smtp", ports.smtp!, backend.smtp, pki.ecCert, pki.ecKey, "protocol = smtp\n")}
[orig]
client = yes
accept = 127.0.0.1:${ports.orig}
connect = 127.0.0.1:${backend.tls}
CAfile = ${pki.ca}
verifyChain = yes
checkHost = localhost
sni = localhost
sslVersionMin = TLSv1.3
`
    )
    return { procs: [start("stunnel", PROXY_CPU, ["stunnel4", config])], ports, readyUrl: undefined }
  }
}

const haproxy: Contestant = {
  name: "HAProxy",
  dnAuthorization: true,
  kind: "c",
  cpus: String(PROXY_CPU),
  start: async (env, tag) => {
    const ports = await allPorts(false)
    const { pki, backend } = env
    const config = write(
      env,
      `haproxy-${tag}.cfg`,
      `global
  maxconn ${MAX_PROXIED}
  nbthread 1
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-server-options ssl-min-ver TLSv1.3
defaults
  mode tcp
  timeout connect 10s
  timeout client 1h
  timeout server 1h
  maxconn ${MAX_PROXIED}
frontend term-ec
  bind 127.0.0.1:${ports.termEc} ssl crt ${pki.ecPem}
  default_backend plain
frontend term-rsa
  bind 127.0.0.1:${ports.termRsa} ssl crt ${pki.rsaPem}
  default_backend plain
frontend term-mtls
  bind 127.0.0.1:${ports.termMtls} ssl crt ${pki.ecPem} ca-file ${pki.ca} verify required
  tcp-request session reject unless { ssl_c_s_dn(,0,rfc2253) -m str ${pki.clientSubject} }
  default_backend plain
frontend orig
  bind 127.0.0.1:${ports.orig}
  default_backend tls
backend plain
  server b 127.0.0.1:${backend.plain}
backend tls
  server b 127.0.0.1:${backend.tls} ssl verify required ca-file ${pki.ca} sni str(localhost) verifyhost localhost
`
    )
    return { procs: [start("haproxy", PROXY_CPU, ["haproxy", "-db", "-f", config])], ports, readyUrl: undefined }
  }
}

export const NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"

const nginx: Contestant = {
  name: "nginx stream",
  dnAuthorization: true,
  kind: "c",
  cpus: String(PROXY_CPU),
  start: async (env, tag) => {
    const ports = await allPorts(false)
    const { pki, backend } = env
    const prefix = Path.join(pki.dir, `nginx-${tag}`)
    Fs.mkdirSync(prefix, { recursive: true })
    const ssl = (cert: string, key: string) => `ssl_certificate ${cert}; ssl_certificate_key ${key};`
    const config = write(
      env,
      `nginx-${tag}.conf`,
      `load_module ${NGINX_STREAM_MODULE};
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile ${NOFILE};
pid ${prefix}/nginx.pid;
error_log ${prefix}/error.log warn;
events { worker_connections ${NOFILE}; }
stream {
  ssl_protocols TLSv1.3;
  map $ssl_client_s_dn $mtls_target { "${pki.clientSubject}" 127.0.0.1:${backend.plain}; default 127.0.0.1:9; }
  server { listen 127.0.0.1:${ports.termEc} ssl; ${ssl(pki.ecCert, pki.ecKey)} proxy_pass 127.0.0.1:${backend.plain}; }
  server { listen 127.0.0.1:${ports.termRsa} ssl; ${ssl(pki.rsaCert, pki.rsaKey)} proxy_pass 127.0.0.1:${backend.plain}; }
  server { listen 127.0.0.1:${ports.termMtls} ssl; ${ssl(pki.ecCert, pki.ecKey)}
    ssl_verify_client on; ssl_client_certificate ${pki.ca}; proxy_pass $mtls_target; }
  server { listen 127.0.0.1:${ports.orig}; proxy_pass 127.0.0.1:${backend.tls};
    proxy_ssl on; proxy_ssl_protocols TLSv1.3; proxy_ssl_verify on; proxy_ssl_trusted_certificate ${pki.ca};
    proxy_ssl_name localhost; proxy_ssl_server_name on; }
}
`
    )
    return {
      procs: [start("nginx", PROXY_CPU, ["nginx", "-p", prefix, "-e", `${prefix}/error.log`, "-c", config])],
      ports,
      readyUrl: undefined
    }
  }
}

const baseline: Contestant = {
  name: "no proxy",
  dnAuthorization: false,
  kind: "baseline",
  cpus: String(PROXY_CPU),
  start: async (env) => {
    const ports = await allPorts(true)
    const { pki } = env
    const serve = (name: string, port: number, args: ReadonlyArray<string>) =>
      start(`baseline-${name}`, PROXY_CPU, [env.loadgen, "serve", String(port), ...args])
    const ec = ["--cert", pki.ecCert, "--key", pki.ecKey]
    const procs = [
      serve("ec", ports.termEc, ec),
      serve("rsa", ports.termRsa, ["--cert", pki.rsaCert, "--key", pki.rsaKey]),
      serve("mtls", ports.termMtls, [...ec, "--ca", pki.ca]),
      serve("plain", ports.orig, []),
      serve("smtp", ports.smtp!, [...ec, "--smtp", "--starttls"])
    ]
    return { procs, ports, readyUrl: undefined }
  }
}

export const all: ReadonlyArray<Contestant> = [sleeve, sleeveWorkers, floor, stunnel, haproxy, nginx, baseline]
