/**
 * `workers: auto`: the CPU quota is the tightest `cpu.max` from the process's own cgroup up to the
 * root (a systemd `CPUQuota=` lives below the root, a Kubernetes limit at the container's root).
 * The file system is given as a table of the files the function reads.
 */
import { describe, expect, it } from "@effect/vitest"
import { cgroupCpuLimit } from "../src/internal/Workers.ts"

const files =
  (table: Record<string, string>) =>
  (path: string): string => {
    const text = table[path]
    if (text === undefined) throw Object.assign(new Error(`ENOENT: ${path}`), { code: "ENOENT" })
    return text
  }

describe("cgroupCpuLimit", () => {
  it("finds a systemd CPUQuota= on the service's own cgroup, below the root", () => {
    const read = files({
      "/proc/self/cgroup": "0::/system.slice/sleeve.service\n",
      "/sys/fs/cgroup/system.slice/sleeve.service/cpu.max": "150000 100000\n",
      "/sys/fs/cgroup/system.slice/cpu.max": "max 100000\n"
    })
    expect(cgroupCpuLimit(read)).toBe(1.5)
  })

  it("takes the tightest quota on the way up, and the root's (a container's namespace root)", () => {
    expect(
      cgroupCpuLimit(
        files({
          "/proc/self/cgroup": "0::/a/b\n",
          "/sys/fs/cgroup/a/b/cpu.max": "400000 100000",
          "/sys/fs/cgroup/a/cpu.max": "200000 100000"
        })
      )
    ).toBe(2)
    expect(cgroupCpuLimit(files({ "/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/cpu.max": "50000 100000" }))).toBe(0.5)
  })

  it("is undefined without any quota: max everywhere, no cpu.max, or no cgroup v2", () => {
    expect(
      cgroupCpuLimit(files({ "/proc/self/cgroup": "0::/x\n", "/sys/fs/cgroup/x/cpu.max": "max 100000" }))
    ).toBeUndefined()
    expect(cgroupCpuLimit(files({ "/proc/self/cgroup": "0::/x\n" }))).toBeUndefined()
    expect(cgroupCpuLimit(files({}))).toBeUndefined()
  })
})
