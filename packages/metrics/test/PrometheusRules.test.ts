/**
 * infra/prometheus/sleeve.rules.yml: valid for Prometheus (`promtool check rules`), passing its
 * unit tests (`promtool test rules sleeve.rules.test.yml`), and written against the metric names
 * this package actually registers. promtool comes from Debian's `prometheus` package; without it
 * this suite fails (it never skips).
 */
import { assert, describe, it } from "@effect/vitest"
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import { fileURLToPath } from "node:url"
import * as Metrics from "../src/Metrics.ts"

const rulesDir = fileURLToPath(new URL("../../../infra/prometheus/", import.meta.url))
const rulesFile = "sleeve.rules.yml"
const testFile = "sleeve.rules.test.yml"

const promtool = (...args: ReadonlyArray<string>) => {
  const run = spawnSync("promtool", args, { cwd: rulesDir, encoding: "utf8", timeout: 60_000 })
  if (run.error !== undefined && (run.error as NodeJS.ErrnoException).code === "ENOENT") {
    assert.fail(
      "promtool is not on PATH: install Debian's `prometheus` package " +
        "(apt-get install -y --no-install-recommends prometheus); .ci/debian-deps should do it"
    )
  }
  if (run.error !== undefined) throw run.error
  return { status: run.status, output: `${run.stdout}${run.stderr}` }
}

const alertNames = [
  "SleeveCertificateExpiringSoon",
  "SleevePeerCertificateExpiringSoon",
  "SleeveDnRejectionsRising",
  "SleeveHandshakeFailureRatioHigh",
  "SleeveNotReady",
  "SleeveConfigReloadFailing",
  "SleeveCrlStale",
  "SleeveProxyProtocolRefusals",
  "SleeveResourceExhaustion"
]

/** `sleeve_*` names used in a file, with histogram/summary suffixes removed. */
const metricNamesIn = (text: string): ReadonlySet<string> =>
  new Set([...text.matchAll(/\bsleeve_[a-z0-9_]+/g)].map(([name]) => name.replace(/_(bucket|sum|count)$/, "")))

// promtool takes seconds (4.5 s for `test rules` alone on the 2-core machine): the runner's
// default 5 s timeout is too short under load; promtool's own run is bounded at 60 s.
describe("Prometheus alert rules", { timeout: 90_000 }, () => {
  it("promtool check rules accepts the rules file", () => {
    const { status, output } = promtool("check", "rules", rulesFile)
    assert.strictEqual(status, 0, output)
    assert.include(output, `SUCCESS: ${alertNames.length} rules found`)
  })

  it("promtool test rules passes the unit tests (firing and not firing)", () => {
    const { status, output } = promtool("test", "rules", testFile)
    assert.strictEqual(status, 0, output)
    assert.include(output, "SUCCESS")
  })

  it("defines exactly the documented alerts, and the unit tests cover each of them", () => {
    const rules = fs.readFileSync(`${rulesDir}${rulesFile}`, "utf8")
    const tests = fs.readFileSync(`${rulesDir}${testFile}`, "utf8")
    const defined = [...rules.matchAll(/^\s*- alert: (\S+)$/gm)].map(([, name]) => name)
    assert.deepStrictEqual(defined, alertNames)
    const tested = new Set([...tests.matchAll(/^\s*alertname: (\S+)$/gm)].map(([, name]) => name))
    assert.deepStrictEqual([...tested].sort(), [...alertNames].sort())
    // Each alert is also tested in a case where it must not fire.
    for (const name of alertNames) {
      const notFiring = new RegExp(`alertname: ${name}\\n\\s*exp_alerts: \\[\\]`)
      assert.match(tests, notFiring, `${name} has no not-firing case`)
    }
  })

  it("uses only metric names and label values that @sleeve/metrics registers", () => {
    const known = new Set<string>(Object.values(Metrics.MetricName))
    for (const file of [rulesFile, testFile]) {
      const used = metricNamesIn(fs.readFileSync(`${rulesDir}${file}`, "utf8"))
      assert.isAbove(used.size, 0)
      for (const name of used) assert.isTrue(known.has(name), `${file} uses unknown metric ${name}`)
    }
    const rules = fs.readFileSync(`${rulesDir}${rulesFile}`, "utf8")
    for (const [, values] of rules.matchAll(/result=~"([^"]+)"/g)) {
      for (const value of values!.split("|")) {
        assert.include(Metrics.handshakeResults as ReadonlyArray<string>, value, `unknown result "${value}"`)
      }
    }
  })
})
