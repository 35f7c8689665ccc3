import { describe, expect, it } from "@effect/vitest"
import * as Process from "../src/Process.ts"

const node = process.execPath

describe("Process", () => {
  it("run collects output and the exit code, feeds stdin, and kills at the deadline", async () => {
    const echo = await Process.run(node, ["-e", "process.stdin.pipe(process.stdout); console.error('err')"], {
      input: "hello"
    })
    expect(echo).toEqual({ code: 0, signal: null, stdout: "hello", stderr: "err\n" })
    expect((await Process.run(node, ["-e", "process.exit(3)"])).code).toBe(3)
    const hung = await Process.run(node, ["-e", "setInterval(() => {}, 1000)"], { timeoutMs: 200 })
    expect(hung).toMatchObject({ code: null, signal: "SIGKILL" })
    await expect(Process.run("/nonexistent/program", [])).rejects.toThrow(/ENOENT/)
  })

  it("a daemon is waited on by its output and stopped by a signal, then SIGKILL", async () => {
    const polite = Process.startDaemon(node, [
      "-e",
      "console.log('ready'); process.on('SIGTERM', () => { console.log('bye'); process.exit(0) }); setInterval(() => {}, 1000)"
    ])
    expect(await polite.waitForOutput("ready")).toBe("ready\n")
    expect(await polite.stop()).toEqual({ code: 0, signal: null })
    expect(polite.stdout()).toBe("ready\nbye\n")
    expect(await polite.stop()).toEqual({ code: 0, signal: null })

    const stubborn = Process.startDaemon(node, [
      "-e",
      "process.on('SIGTERM', () => {}); console.log('ready'); setInterval(() => {}, 1000)"
    ])
    await stubborn.waitForOutput(/^ready$/m)
    expect(await stubborn.stop("SIGTERM", 100)).toEqual({ code: null, signal: "SIGKILL" })
  })

  it("waitForOutput fails as soon as the process exits without printing it; a missing program ends at once", async () => {
    const quitter = Process.startDaemon(node, ["-e", "console.log('something else')"])
    await expect(quitter.waitForOutput("ready", { timeoutMs: 5000 })).rejects.toThrow(/exited .* first/)
    const missing = Process.startDaemon("/nonexistent/program", [])
    expect(await missing.exited).toEqual({ code: null, signal: null })
    expect(missing.stderr()).toMatch(/^spawn failed: .*ENOENT/)
  })
})
