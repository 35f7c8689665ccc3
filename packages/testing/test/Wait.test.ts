import { describe, expect, it } from "@effect/vitest"
import * as Wait from "../src/Wait.ts"

describe("Wait", () => {
  it("waitUntil resolves with the first defined value and fails with what it waited for", async () => {
    let n = 0
    expect(await Wait.waitUntil("n to reach 3", () => (++n >= 3 ? n : undefined), { everyMs: 1 })).toBe(3)
    await expect(
      Wait.waitUntil("never", () => undefined, { timeoutMs: 30, everyMs: 5, detail: () => "saw nothing" })
    ).rejects.toThrow("timed out waiting for never\nsaw nothing")
    await expect(
      Wait.waitUntil("a check that throws", () => {
        throw new Error("the process died")
      })
    ).rejects.toThrow("the process died")
  })

  it("eventually polls a condition; settle hands back the last reading, met or not", async () => {
    let ready = false
    setTimeout(() => {
      ready = true
    }, 20)
    await Wait.eventually("ready", () => ready)
    await expect(Wait.eventually("never true", () => false, 30)).rejects.toThrow("timed out waiting for never true")

    let reads = 0
    expect(
      await Wait.settle(
        () => ++reads,
        (v) => v === 4,
        { everyMs: 1 }
      )
    ).toBe(4)
    const last = await Wait.settle(
      () => 7,
      (v) => v === 8,
      { timeoutMs: 30, everyMs: 5 }
    )
    expect(last).toBe(7)
  })

  it("within bounds a promise in time and passes its outcome through", async () => {
    expect(await Wait.within("fast", 1000, Promise.resolve("done"))).toBe("done")
    await expect(Wait.within("slow", 20, new Promise(() => {}))).rejects.toThrow("slow: nothing within 20 ms")
    await expect(Wait.within("failing", 1000, Promise.reject(new Error("boom")))).rejects.toThrow("boom")
  })
})
