/**
 * The process's file-descriptor budget, and the reserve Sleeve keeps in it.
 *
 * Node 24's libuv hides `accept()` failing with `EMFILE`/`ENFILE`: it closes a spare descriptor,
 * accepts and closes every pending connection, and reopens the spare, without telling the
 * program (measured; docs/metrics.md, "Accept errors"). To count and log those losses, and to
 * keep descriptors for the connections it already accepted, Sleeve refuses a connection itself
 * once the process is within `reserve` descriptors of its limit. The kernel always hands out the
 * lowest free descriptor number, so an accepted socket whose descriptor is `>= limit - reserve`
 * proves that every lower number is in use: an exact, constant-time test on each accept.
 *
 * Linux only (the limit is read from `/proc/self/limits`); elsewhere there is no reserve.
 */
import * as Fs from "node:fs"

/** The soft `RLIMIT_NOFILE` of this process, or `undefined` when it cannot be read (or is unlimited). */
export const readLimit = (limitsFile = "/proc/self/limits"): number | undefined => {
  try {
    const line = Fs.readFileSync(limitsFile, "utf8")
      .split("\n")
      .find((l) => l.startsWith("Max open files"))
    const soft = line?.slice("Max open files".length).trim().split(/\s+/)[0]
    const n = soft === undefined ? Number.NaN : Number(soft)
    return Number.isSafeInteger(n) && n > 0 ? n : undefined
  } catch {
    return undefined
  }
}

/** The reserve for a limit: 1/16 of it, at least 16 and at most 256 descriptors. */
export const reserveFor = (limit: number): number => Math.min(256, Math.max(16, Math.floor(limit / 16)))

/** A descriptor budget: accepted sockets on `threshold` or above are refused. */
export interface Budget {
  readonly limit: number
  readonly reserve: number
  /** The first descriptor number inside the reserve. */
  readonly threshold: number
}

/** The budget for `limit` (by default this process's), or `undefined` without a known limit. */
export const makeBudget = (limit: number | undefined = readLimit()): Budget | undefined => {
  if (limit === undefined) return undefined
  const reserve = reserveFor(limit)
  return { limit, reserve, threshold: Math.max(0, limit - reserve) }
}

/** The descriptor number of a Node socket (`undefined` when it has none, e.g. on Windows). */
export const fdOf = (socket: object): number | undefined => {
  const fd = (socket as { readonly _handle?: { readonly fd?: unknown } | null })._handle?.fd
  return typeof fd === "number" && fd >= 0 ? fd : undefined
}
