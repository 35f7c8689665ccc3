/**
 * The error of a listener that cannot bind its address, naming the configuration file, the
 * listener's `listen` field, the address and the rule broken. A module of its own so that the
 * workers' primary, which never loads the data path, can report bind failures the same way.
 */
import { ConfigFile } from "@sleeve/core"
import { Data } from "effect"

/**
 * A listener could not bind its address (in use, permission, not on this host): names the
 * configuration file, the listener's `listen` field in it, the address and the rule.
 */
export class ListenError extends Data.TaggedError("ListenError")<{
  readonly file: string
  /** The field in the file, e.g. `listeners[1].listen`. */
  readonly path: string
  readonly address: string
  /** Node's error code (`EADDRINUSE`, `EACCES`, ...), when there is one. */
  readonly code: string | undefined
  readonly rule: string
  readonly cause: unknown
}> {
  override get message(): string {
    return ConfigFile.formatProblem({ file: this.file, path: this.path, rule: this.rule, severity: "error" })
  }
}

/** The rule a bind failure broke, with what to do about it. */
const listenRule = (address: string, cause: unknown): { code: string | undefined; rule: string } => {
  const code = (cause as { readonly code?: unknown } | null)?.code
  const c = typeof code === "string" ? code : undefined
  const what =
    c === "EADDRINUSE"
      ? "the address is already in use (EADDRINUSE): another process or listener holds it; stop it or choose another address"
      : c === "EACCES"
        ? "permission denied (EACCES): a port below 1024 needs CAP_NET_BIND_SERVICE (or root), a Unix socket a writable directory"
        : c === "EADDRNOTAVAIL"
          ? "the address is not one of this host's (EADDRNOTAVAIL)"
          : cause instanceof Error
            ? cause.message
            : String(cause)
  return { code: c, rule: `cannot listen on ${address}: ${what}` }
}

/** The {@link ListenError} of listener `l` of `config` failing to bind with `cause`. */
export const listenError = (config: ConfigFile.SleeveConfig, l: ConfigFile.Listener, cause: unknown): ListenError => {
  const address = ConfigFile.formatAddress(l.listen)
  return new ListenError({
    file: config.file,
    path: `listeners[${config.listeners.indexOf(l)}].listen`,
    address,
    ...listenRule(address, cause),
    cause
  })
}
