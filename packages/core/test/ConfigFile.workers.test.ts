import { describe, expect, it } from "@effect/vitest"
import { Result } from "effect"
import * as ConfigFile from "../src/ConfigFile.ts"

const base = `
tls:
  S: { type: server, certificateFile: s.crt, privateKeyFile: s.key }
listeners:
  - { name: in, mode: terminate, listen: "127.0.0.1:0", target: "127.0.0.1:9", tls: S }
`

const decode = (extra: string) => ConfigFile.decode(`${base}${extra}`, "sleeve.yaml")

describe("ConfigFile: workers", () => {
  it("defaults to 1 (one process)", () => {
    const r = decode("")
    expect(Result.isSuccess(r) && r.success.workers).toBe(1)
  })

  it("takes a count or auto", () => {
    for (const [text, value] of [
      ["workers: 2", 2],
      ["workers: 64", 64],
      ["workers: auto", "auto"]
    ] as const) {
      const r = decode(text)
      expect(Result.isSuccess(r) && r.success.workers).toBe(value)
    }
  })

  it("rejects a count out of range, a fraction and other strings, naming the rule", () => {
    const message = (text: string) => {
      const r = decode(text)
      return Result.isFailure(r) ? r.failure.message : "decoded"
    }
    expect(message("workers: 0")).toBe('sleeve.yaml: workers: expected 1 to 64 or "auto", got 0')
    expect(message("workers: 65")).toBe('sleeve.yaml: workers: expected 1 to 64 or "auto", got 65')
    expect(message("workers: 1.5")).toMatch(/^sleeve\.yaml: workers: expected .*got 1\.5$/)
    expect(message("workers: all")).toMatch(/^sleeve\.yaml: workers: expected .*"auto".*got "all"$/)
  })
})
