/**
 * Waiting in tests that drive real sockets and processes: poll a condition until it holds
 * (`waitUntil`, `eventually`), read a value until it is the one expected and hand the last
 * reading to the caller's assertion (`settle`), bound a promise in time (`within`), and `sleep`.
 *
 * Use these where the system under test reports something a moment after the client is done (a
 * counter bumped when a socket closes, a log line, a port that starts listening). Every wait has
 * a deadline and says what it was waiting for, so a test that fails does so with a message
 * rather than at the runner's timeout.
 *
 * What it deliberately does not do: assert. `settle` returns what it read and the test asserts on
 * it with its own expectation, so a wait never decides what counts as right. No fake clocks
 * either: these are for real I/O (for Effect code under test, use `TestClock`).
 */

/** Resolves after `ms` milliseconds. */
export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** Rejects with `what: nothing within <ms> ms` when `promise` has not settled within `ms`. */
export const within = <A>(what: string, ms: number, promise: Promise<A>): Promise<A> =>
  new Promise<A>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms)
    promise.then(
      (a) => {
        clearTimeout(timer)
        resolve(a)
      },
      (e: unknown) => {
        clearTimeout(timer)
        reject(e)
      }
    )
  })

/** Options of {@link waitUntil}. */
export interface WaitOptions {
  /** How long to keep trying (default 10 s). */
  readonly timeoutMs?: number
  /** Pause between two checks (default 50 ms). */
  readonly everyMs?: number
  /** Added to the timeout error: what was seen instead (called once, at the timeout). */
  readonly detail?: () => string
}

/**
 * Calls `check` every `everyMs` until it returns a value other than `undefined`, and resolves
 * with that value; rejects `timed out waiting for <what>` after `timeoutMs`. An error thrown by
 * `check` ends the wait at once (use it for "the process died, stop waiting").
 */
export const waitUntil = async <A>(
  what: string,
  check: () => A | undefined | Promise<A | undefined>,
  options: WaitOptions = {}
): Promise<A> => {
  const deadline = Date.now() + (options.timeoutMs ?? 10_000)
  for (;;) {
    const value = await check()
    if (value !== undefined) return value
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}${options.detail === undefined ? "" : `\n${options.detail()}`}`)
    }
    await sleep(options.everyMs ?? 50)
  }
}

/** {@link waitUntil} for a yes/no condition: polls `check` every 10 ms until it is true, for at most `ms` (default 3 s). */
export const eventually = async (
  what: string,
  check: () => boolean | Promise<boolean>,
  ms = 3000,
  detail?: () => string
): Promise<void> => {
  await waitUntil(what, async () => ((await check()) ? true : undefined), {
    timeoutMs: ms,
    everyMs: 10,
    ...(detail === undefined ? {} : { detail })
  })
}

/** Options of {@link settle}. */
export interface SettleOptions {
  /** How long to keep reading (default 3 s). */
  readonly timeoutMs?: number
  /** Pause between two readings (default 20 ms). */
  readonly everyMs?: number
}

/**
 * Reads `read()` until `done` accepts the reading or `timeoutMs` has passed, and resolves with the
 * last reading either way: the caller asserts on it, so a value that never comes fails the test
 * with the caller's own expectation and the value actually seen.
 */
export const settle = async <A>(
  read: () => A | Promise<A>,
  done: (a: A) => boolean,
  options: SettleOptions = {}
): Promise<A> => {
  const deadline = Date.now() + (options.timeoutMs ?? 3000)
  for (;;) {
    const value = await read()
    if (done(value) || Date.now() > deadline) return value
    await sleep(options.everyMs ?? 20)
  }
}
