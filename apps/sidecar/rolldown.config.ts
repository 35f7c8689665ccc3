/**
 * One-file build of the `sleeve` executable: `pnpm --filter @sleeve/sidecar bundle` writes
 * `dist/main.js`, an ES module for Node 24 that holds every npm dependency (effect, yaml,
 * @peculiar/x509 with its reflect-metadata polyfill, …) so that `node dist/main.js` runs from a
 * folder without node_modules, as in a distroless container image.
 *
 * Only Node's built-in modules stay external. CommonJS dependencies that `require()` a built-in
 * get a real ESM import in its place (rolldown's esm-external-require plugin), since an ES module
 * has no `require`.
 */
import { builtinModules } from "node:module"
import { defineConfig } from "rolldown"
import { esmExternalRequirePlugin } from "rolldown/plugins"

/** `node:fs` and the bare `fs` that older CommonJS packages still use. */
const nodeBuiltins = [/^node:/, ...builtinModules.filter((m) => !m.startsWith("_"))]

export default defineConfig({
  input: "src/main.ts",
  platform: "node",
  // The plugin both keeps the built-ins external and rewrites `require()` of them.
  plugins: [esmExternalRequirePlugin({ external: nodeBuiltins })],
  // reflect-metadata is imported for its side effect (it installs `Reflect.metadata`, which
  // @peculiar/x509's decorators need at load time): never let tree-shaking drop it.
  treeshake: { moduleSideEffects: (id) => id.includes("reflect-metadata") || undefined },
  transform: { target: "node24" },
  output: {
    file: "dist/main.js",
    format: "esm",
    codeSplitting: false,
    sourcemap: false,
    banner: "#!/usr/bin/env node"
  }
})
