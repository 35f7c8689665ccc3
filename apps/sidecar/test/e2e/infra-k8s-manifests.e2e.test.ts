/**
 * infra/k8s, checked without a cluster: every manifest parses (the `yaml` package), the
 * kustomization lists every file, and the objects agree with each other and with Sleeve —
 * Sleeve is a native sidecar (an init container with `restartPolicy: Always`) beside the app,
 * its probes and the Prometheus scrape (annotations and PodMonitor) point at `admin.listen` of
 * the ConfigMap's sleeve.yaml, which decodes with `ConfigFile.decode` and listens where the
 * kubelet can reach it; the Service exposes the mirror listener and not the admin port; the
 * cert-manager Certificate asks for the four dual-use usages and lands in the Secret the pod
 * mounts where sleeve.yaml looks; every container runs as the image's non-root user with a
 * read-only root filesystem; the grace period outlasts the drain.
 *
 * Then the ConfigMap's sleeve.yaml is checked for real: a certificate made as cert-manager
 * would make it from the Certificate (same DN, SANs, usages; tls.crt, tls.key, ca.crt) passes
 * `sleeve check`'s checks, and a peer certificate with the DN that authorizedPeers names is
 * allowed by `sleeve explain`'s (both in process: the same code the commands run).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import * as ConfigFile from "@sleeve/core/ConfigFile"
import * as TestPki from "@sleeve/testing/TestPki"
import { Effect, Result } from "effect"
import { readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import * as Yaml from "yaml"
import * as Check from "../../src/commands/Check.ts"
import * as Explain from "../../src/commands/Explain.ts"
import { repoRoot } from "../support/Sleeve.ts"

// Loose shapes: the manifests are checked field by field below.
// biome-ignore lint/suspicious/noExplicitAny: parsed YAML documents
type Doc = any

const dir = join(repoRoot, "infra/k8s")
const files = readdirSync(dir).filter((f) => f.endsWith(".yaml"))
const parsed = new Map<string, ReadonlyArray<Doc>>()
for (const f of files) {
  const docs = Yaml.parseAllDocuments(readFileSync(join(dir, f), "utf8"))
  parsed.set(
    f,
    docs.map((d) => {
      if (d.errors.length > 0 || d.warnings.length > 0)
        throw new Error(`${f}: ${[...d.errors, ...d.warnings].join("; ")}`)
      return d.toJS() as Doc
    })
  )
}
const objects = [...parsed.entries()].filter(([f]) => f !== "kustomization.yaml").flatMap(([, docs]) => docs)
const byKind = (kind: string): Doc => {
  const found = objects.filter((o) => o.kind === kind)
  expect(found.length, `one ${kind}`).toBe(1)
  return found[0]
}

const dockerUser = /^USER (\d+):(\d+)$/m.exec(readFileSync(join(repoRoot, "infra/docker/Dockerfile"), "utf8"))
const dockerCmd = /^CMD (\[.*\])$/m.exec(readFileSync(join(repoRoot, "infra/docker/Dockerfile"), "utf8"))

let pki: TestPki.TestPki | undefined

afterAll(async () => {
  await pki?.cleanup()
})

describe("infra/k8s", () => {
  const deployment = () => byKind("Deployment")
  const pod = () => deployment().spec.template
  const sleeve = () => {
    const inits = pod().spec.initContainers as Array<Doc>
    expect(inits.map((c) => c.name)).toEqual(["sleeve"])
    return inits[0]
  }
  const configMap = () => byKind("ConfigMap")
  const config = () => {
    const decoded = ConfigFile.decode(configMap().data["sleeve.yaml"], "configmap.yaml")
    if (Result.isFailure(decoded)) throw new Error(decoded.failure.message)
    return decoded.success
  }
  const adminPort = () => {
    const admin = config().admin?.listen
    expect(admin?._tag).toBe("Tcp")
    return (admin as { port: number }).port
  }
  const portNamed = (name: string | number): number =>
    typeof name === "number" ? name : (sleeve().ports as Array<Doc>).find((p) => p.name === name)?.containerPort

  it("parses, and the kustomization lists every manifest", () => {
    expect(files.length).toBeGreaterThanOrEqual(7)
    const kustomization = parsed.get("kustomization.yaml")?.[0]
    expect(kustomization.kind).toBe("Kustomization")
    expect([...kustomization.resources].sort()).toEqual(files.filter((f) => f !== "kustomization.yaml").sort())
    for (const o of objects) {
      expect(typeof o.apiVersion).toBe("string")
      expect(typeof o.metadata?.name).toBe("string")
    }
    expect(objects.map((o) => o.kind).sort()).toEqual(
      ["Certificate", "ConfigMap", "Deployment", "Issuer", "PodMonitor", "Service"].sort()
    )
  })

  it("runs Sleeve as a native sidecar with probes and scrape on admin.listen, from the ConfigMap's sleeve.yaml", () => {
    const s = sleeve()
    expect(s.restartPolicy).toBe("Always")
    expect(s.args).toEqual(JSON.parse(dockerCmd?.[1] ?? "null"))
    const app = pod().spec.containers as Array<Doc>
    expect(app.length).toBeGreaterThanOrEqual(1)
    expect(app.map((c) => c.name)).not.toContain("sleeve")

    // configuration: a ConfigMap mounted as a folder (so edits reach the pod), named by SLEEVE_CONFIG
    const configVolume = (pod().spec.volumes as Array<Doc>).find((v) => v.configMap?.name === configMap().metadata.name)
    const configMount = (s.volumeMounts as Array<Doc>).find((m) => m.name === configVolume?.name)
    expect(configMount?.subPath).toBeUndefined()
    expect(s.env).toContainEqual({ name: "SLEEVE_CONFIG", value: `${configMount.mountPath}/sleeve.yaml` })
    const cfg = config()
    const port = adminPort()
    // the kubelet and Prometheus come from outside the pod: admin must not listen on loopback only
    const adminListen = cfg.admin?.listen
    expect(adminListen?._tag === "Tcp" ? adminListen.host : "").toMatch(/^(0\.0\.0\.0|::)$/)

    expect(s.readinessProbe.httpGet.path).toBe("/readyz")
    expect(s.livenessProbe.httpGet.path).toBe("/healthz")
    expect(s.startupProbe.httpGet.path).toBe("/healthz")
    for (const probe of [s.readinessProbe, s.livenessProbe, s.startupProbe])
      expect(portNamed(probe.httpGet.port)).toBe(port)

    const annotations = pod().metadata.annotations
    expect(annotations).toMatchObject({
      "prometheus.io/scrape": "true",
      "prometheus.io/port": String(port),
      "prometheus.io/path": "/metrics"
    })
    const monitor = byKind("PodMonitor")
    expect(pod().metadata.labels).toMatchObject(monitor.spec.selector.matchLabels)
    expect(monitor.spec.podMetricsEndpoints.map((e: Doc) => [portNamed(e.port), e.path])).toEqual([[port, "/metrics"]])

    // the Service: the terminate listener's port, never the admin port
    const service = byKind("Service")
    expect(pod().metadata.labels).toMatchObject(service.spec.selector)
    const terminate = cfg.listeners.filter((l) => l.mode === "terminate")
    const targetPorts = (service.spec.ports as Array<Doc>).map((p) => portNamed(p.targetPort))
    expect(targetPorts).toEqual(terminate.map((l) => (l.listen as { port: number }).port))
    expect(targetPorts).not.toContain(port)
    expect(portNamed("mirror")).toBe(targetPorts[0])

    // stopping: the kubelet waits longer than Sleeve drains
    expect(pod().spec.terminationGracePeriodSeconds * 1000).toBeGreaterThan(cfg.drainTimeoutMs)
  })

  it("takes dual-use certificates from cert-manager's Secret, mounted where sleeve.yaml reads them", () => {
    const certificate = byKind("Certificate")
    expect(certificate.spec.usages).toEqual(
      expect.arrayContaining(["digital signature", "key encipherment", "server auth", "client auth"])
    )
    expect(certificate.spec.issuerRef).toEqual({ kind: "Issuer", name: byKind("Issuer").metadata.name })
    const tlsVolume = (pod().spec.volumes as Array<Doc>).find(
      (v) => v.secret?.secretName === certificate.spec.secretName
    )
    expect(tlsVolume).toBeDefined()
    const tlsMount = (sleeve().volumeMounts as Array<Doc>).find((m) => m.name === tlsVolume.name)
    expect(tlsMount.readOnly).toBe(true)
    for (const tls of config().tls.values()) {
      expect([tls.caFile, tls.certificateFile, tls.privateKeyFile]).toEqual(
        ["ca.crt", "tls.crt", "tls.key"].map((k) => `${tlsMount.mountPath}/${k}`)
      )
      expect(tls.requireDualUse).toBe(true)
    }
  })

  it("runs every container as the image's non-root user with a read-only root filesystem", () => {
    const podSecurity = pod().spec.securityContext
    expect(podSecurity).toMatchObject({
      runAsNonRoot: true,
      runAsUser: Number(dockerUser?.[1]),
      runAsGroup: Number(dockerUser?.[2])
    })
    for (const c of [...pod().spec.initContainers, ...pod().spec.containers] as Array<Doc>) {
      expect(c.securityContext, c.name).toMatchObject({
        allowPrivilegeEscalation: false,
        readOnlyRootFilesystem: true,
        runAsNonRoot: true,
        capabilities: { drop: ["ALL"] }
      })
    }
  })

  describe("the ConfigMap's sleeve.yaml with certificates as cert-manager makes them", () => {
    beforeAll(async () => {
      pki = await TestPki.make()
    })

    it("passes sleeve check, and the peer named in authorizedPeers is allowed", async () => {
      const certificate = byKind("Certificate")
      const usage: Record<string, string> = {
        "digital signature": "digitalSignature",
        "key encipherment": "keyEncipherment",
        "server auth": "serverAuth",
        "client auth": "clientAuth"
      }
      const spec = certificate.spec
      const keyUsage = (spec.usages as Array<string>).map((u) => usage[u]).filter((u) => u?.endsWith("Auth") === false)
      const extendedKeyUsage = (spec.usages as Array<string>).map((u) => usage[u]).filter((u) => u?.endsWith("Auth"))
      const p = pki as TestPki.TestPki
      const ca = await p.ca({ name: "ca", subject: [{ CN: "Mirror CA" }] })
      // Go's pkix.Name, which cert-manager fills, prints as CN, OU, O (most specific first).
      const own = await p.leaf(ca, {
        name: "tls",
        subject: [{ CN: spec.commonName }, { OU: spec.subject.organizationalUnits }, { O: spec.subject.organizations }],
        san: { dns: spec.dnsNames },
        keyUsage: keyUsage as Array<TestPki.KeyUsageName>,
        extendedKeyUsage: extendedKeyUsage as Array<TestPki.ExtendedKeyUsageName>
      })
      await p.write("ca.crt", ca.certPem)
      expect(own.subject).toBe("CN=node1.legacy.example.com,OU=Mirror,O=Example Corp")

      const mount = "/etc/sleeve/tls/"
      const text = (configMap().data["sleeve.yaml"] as string).replaceAll(mount, `${p.dir}/`)
      expect(text).not.toBe(configMap().data["sleeve.yaml"])
      const file = await p.write("sleeve.yaml", text)
      const report = Check.makeReport(text, file, { now: new Date() })
      expect(report.problems).toEqual([])
      expect(report.ok).toBe(true)

      // node2, as the other member's Certificate would make it: the DN authorizedPeers names
      const peerDn = config().tls.get("MirrorServer")?.authorizedPeers[0]
      expect(peerDn).toBeDefined()
      const [cn, ou, o] = (peerDn?.rdns ?? []).map((rdn) => rdn[0]?.value as string)
      await p.leaf(ca, {
        name: "node2",
        subject: [{ CN: cn as string }, { OU: ou as string }, { O: o as string }],
        san: { dns: [cn as string] },
        keyUsage: keyUsage as Array<TestPki.KeyUsageName>,
        extendedKeyUsage: extendedKeyUsage as Array<TestPki.ExtendedKeyUsageName>
      })
      const explain = (tlsConfig: string, serverName?: string) =>
        Effect.runPromise(
          Explain.explainFiles({
            config: file,
            tlsConfig,
            peerCert: join(p.dir, "node2.crt"),
            chain: undefined,
            serverName
          }).pipe(Effect.provide(NodeFileSystem.layer))
        )
      const [asServer, asClient] = await Promise.all([
        explain("MirrorServer"),
        explain("MirrorClient", "node2.legacy.example.com")
      ])
      expect(asServer.checks.filter((c) => c.status !== "pass")).toEqual([])
      expect(asServer.decision).toBe("allow")
      expect(asClient.checks.filter((c) => c.status !== "pass")).toEqual([])
      expect(asClient.decision).toBe("allow")
    })
  })
})
