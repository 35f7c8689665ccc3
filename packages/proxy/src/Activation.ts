/**
 * Activating a configuration file: read it, decode it and load every TLS configuration a
 * listener uses, all checked before anything changes (see `ProxyRuntime` for what is done with
 * the result). Opens no socket and loads nothing of the data path, so a supervising process
 * (`sleeve run` with several workers) can validate without loading the proxy.
 *
 * Files are read through `ActivateOptions.readFile`. `recordingReader` keeps what was read and
 * `snapshotReader` serves those same bytes again: a configuration validated in one process is
 * activated identically in others, even if the files change on disk in between.
 */
import { ConfigFile, TlsMaterial } from "@sleeve/core"
import { Data, Result } from "effect"
import * as Fs from "node:fs"

/** A configuration that could not be activated; `problems` lists every error (and warning) found. */
export class ActivationError extends Data.TaggedError("ActivationError")<{
  readonly file: string
  readonly problems: ReadonlyArray<ConfigFile.Problem>
}> {
  override get message(): string {
    return this.problems
      .filter((p) => p.severity === "error")
      .map(ConfigFile.formatProblem)
      .join("\n")
  }
}

/** A decoded configuration with the material of every TLS configuration its listeners use. */
export interface Activated {
  readonly config: ConfigFile.SleeveConfig
  readonly materials: ReadonlyMap<string, TlsMaterial.Material>
  /** Warnings found while activating (errors make activation fail). */
  readonly warnings: ReadonlyArray<ConfigFile.Problem>
  /** Every file read: the configuration file and all certificate, key, CA, CRL and password files. */
  readonly files: ReadonlyArray<string>
}

/** Options of {@link activate}. */
export interface ActivateOptions {
  readonly now?: Date
  readonly env?: Readonly<Record<string, string | undefined>>
  readonly prompt?: TlsMaterial.Prompter
  /** How files are read (UTF-8 text); `fs.readFileSync` by default. */
  readonly readFile?: TlsMaterial.FileReader
}

/**
 * Reads, decodes and loads a configuration file: everything is checked before any socket opens.
 * Only TLS configurations used by a listener are loaded (an unused broken one is not an error
 * here; `sleeve check` reports it).
 */
export const activate = (path: string, options: ActivateOptions = {}): Result.Result<Activated, ActivationError> => {
  let text: string
  try {
    text = (options.readFile ?? readFileSync)(path)
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    return Result.fail(
      new ActivationError({
        file: path,
        problems: [
          {
            file: path,
            path: "",
            rule: code === "ENOENT" ? "configuration file not found" : `cannot read: ${(e as Error).message}`,
            severity: "error"
          }
        ]
      })
    )
  }
  const decoded = ConfigFile.decode(text, path)
  if (Result.isFailure(decoded)) {
    return Result.fail(new ActivationError({ file: path, problems: decoded.failure.problems }))
  }
  const config = decoded.success
  const problems: Array<ConfigFile.Problem> = []
  const materials = new Map<string, TlsMaterial.Material>()
  const files = new Set<string>([config.file])
  const used = new Set(config.listeners.map((l) => l.tls))
  for (const name of used) {
    const tls = config.tls.get(name)!
    const loaded = TlsMaterial.load(tls, {
      file: path,
      now: options.now ?? new Date(),
      expiryWarningMs: config.expiryWarningMs,
      ...(options.env === undefined ? {} : { env: options.env }),
      ...(options.prompt === undefined ? {} : { prompt: options.prompt }),
      ...(options.readFile === undefined ? {} : { readFile: options.readFile })
    })
    problems.push(...loaded.problems)
    for (const f of [tls.caFile, tls.certificateFile, tls.privateKeyFile, tls.crlFile])
      if (f !== undefined) files.add(f)
    if (loaded.material !== undefined) {
      materials.set(name, loaded.material)
      for (const f of loaded.material.files) files.add(f)
    }
  }
  if (problems.some((p) => p.severity === "error")) {
    return Result.fail(new ActivationError({ file: path, problems }))
  }
  return Result.succeed({ config, materials, warnings: problems, files: [...files] })
}

const readFileSync: TlsMaterial.FileReader = (path) => Fs.readFileSync(path, "utf8")

/** The bytes an activation read, by path, and the time it judged validity at (JSON-serialisable). */
export interface Snapshot {
  readonly files: Readonly<Record<string, string>>
  /** Milliseconds since the epoch. */
  readonly now: number
}

/**
 * A reader that reads from disk and records what it read. `take()` returns the record and
 * forgets it (it holds key files: keep it no longer than needed).
 */
export const recordingReader = (now: Date = new Date()) => {
  let files: Record<string, string> = {}
  const readFile: TlsMaterial.FileReader = (path) => {
    const text = readFileSync(path)
    files[path] = text
    return text
  }
  const take = (): Snapshot => {
    const taken = files
    files = {}
    return { files: taken, now: now.getTime() }
  }
  return { readFile, now, take }
}

/**
 * Options that activate from a snapshot, never from disk: a file the snapshot does not hold
 * fails as a missing file would.
 */
export const snapshotOptions = (snapshot: Snapshot): ActivateOptions => ({
  now: new Date(snapshot.now),
  readFile: (path) => {
    const text = snapshot.files[path]
    if (text === undefined) {
      throw Object.assign(new Error(`ENOENT: not in the configuration snapshot: ${path}`), { code: "ENOENT" })
    }
    return text
  }
})
