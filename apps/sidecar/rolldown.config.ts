/**
 * The production build of the `sleeve` executable: `pnpm --filter @sleeve/sidecar bundle` writes
 * `dist/main.js` and the chunks it imports, minified ES modules for Node ≥ 22.19 that hold every
 * npm dependency (effect, yaml, prom-client, @peculiar/x509 with its reflect-metadata polyfill, …),
 * so that `node dist/main.js` runs from a copy of `dist/` without node_modules, as in a distroless
 * container image. The whole folder is the artefact: ship `dist/`, not one file.
 *
 * Code splitting keeps start-up cheap: a command's implementation is imported when that command
 * runs (commands/*.ts), so `sleeve run` never loads the development PKI, `explain` or `certs`,
 * and `sleeve dn` never loads the proxy or the metrics. @peculiar/x509 (about 10 MiB resident once
 * loaded) is its own entry, `x509.js`, required only when a TLS configuration has a `crlFile`.
 *
 * Node's built-in modules are not bundled: every import or `require()` of one becomes
 * `process.getBuiltinModule(…)` (Node ≥ 22.3). An ES `import … from "node:http"` would make Node
 * build a namespace of every export of the module, reading each lazy getter on the way —
 * `http.WebSocket` loads Node's copy of undici, and with it http2, worker_threads and
 * perf_hooks: about 8 MiB of resident memory that nothing here uses.
 */
import { builtinModules } from "node:module"
import { fileURLToPath } from "node:url"
import { type BuildOptions, defineConfig, type Plugin } from "rolldown"
import * as NodeFlags from "./src/NodeFlags.ts"

/** Paths from this file, so that the build is the same from any working directory. */
const here = (path: string) => fileURLToPath(new URL(path, import.meta.url))

const builtins = new Set(builtinModules.filter((m) => !m.startsWith("_")))
const prefix = "\0sleeve-builtin:"

/** `node:fs`, `fs`, `fs/promises`…: each a CommonJS module exporting `process.getBuiltinModule(id)`. */
const getBuiltinModule: Plugin = {
  name: "sleeve:get-builtin-module",
  resolveId: {
    order: "pre",
    handler: (id, importer) => {
      // rolldown's runtime helper imports `createRequire` from node:module itself; leave it be.
      if (importer?.endsWith("rolldown/runtime.js")) return null
      const name = id.startsWith("node:") ? id.slice(5) : id
      if (id.startsWith("node:") || builtins.has(name)) return { id: `${prefix}${name}`, moduleSideEffects: false }
      return null
    }
  },
  load: (id) =>
    id.startsWith(prefix)
      ? { code: `module.exports = process.getBuiltinModule(${JSON.stringify(`node:${id.slice(prefix.length)}`)})` }
      : null
}

/**
 * effect/cli's CliOutput builds an `Intl.Segmenter` when its module loads, for measuring help
 * text: the first `Intl` object of a process maps ICU data, about 2.5 MiB of resident memory
 * that `sleeve run` would keep for its whole life. This makes it on first use instead. The
 * build fails if the pattern is gone (an effect upgrade), so the saving is never lost silently.
 */
const lazySegmenter: Plugin = {
  name: "sleeve:lazy-intl-segmenter",
  transform: {
    filter: { id: /[\\/]effect[\\/]dist[\\/]cli[\\/]CliOutput\.js$/ },
    handler(code) {
      const eager =
        /const graphemeSegmenter = \/\*#__PURE__\*\/new Intl\.Segmenter\(undefined, \{\s*granularity: "grapheme"\s*\}\);/
      if (!eager.test(code))
        this.error("effect/cli CliOutput.js no longer has the eager Intl.Segmenter this build defers")
      return code.replace(
        eager,
        'let graphemeSegmenterInstance; const graphemeSegmenter = { segment: (text) => (graphemeSegmenterInstance ??= new Intl.Segmenter(undefined, { granularity: "grapheme" })).segment(text) };'
      )
    }
  }
}

/** The build, also run by the e2e tests' global setup (test/support/BuildArtefact.ts). */
export const options: BuildOptions = {
  // x509.js: @peculiar/x509 for CRL parsing, which packages/core/src/internal/x509Lazy.ts
  // `require()`s by that name, beside main.js, the first time a configuration has a crlFile.
  input: { main: here("src/main.ts"), x509: here("../../packages/core/src/internal/x509.ts") },
  platform: "node",
  plugins: [getBuiltinModule, lazySegmenter],
  // reflect-metadata is imported for its side effect (it installs `Reflect.metadata`, which
  // @peculiar/x509's decorators need at load time): never let tree-shaking drop it.
  treeshake: { moduleSideEffects: (id) => id.includes("reflect-metadata") || undefined },
  // The Node floor: @effect/platform-node 4.1 declares engines >= 22.19.
  transform: { target: "node22.19" },
  output: {
    dir: here("dist"),
    format: "esm",
    minify: true,
    // V8 keeps each module's source text for as long as the module lives, and a text with one
    // character beyond Latin-1 is stored at two bytes per character (main.js: 0.8 MB, not 0.4).
    charset: "ascii",
    sourcemap: false,
    cleanDir: true,
    entryFileNames: "[name].js",
    chunkFileNames: "[name]-[hash].js",
    // `#!/usr/bin/env -S node <V8 flags>`: the launcher of every installation (src/NodeFlags.ts).
    banner: (chunk) => (chunk.isEntry && chunk.name === "main" ? NodeFlags.shebang : "")
  }
}

export default defineConfig(options)
