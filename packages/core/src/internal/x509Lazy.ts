/**
 * @peculiar/x509, loaded on first use: only a TLS configuration with a `crlFile` needs it, and
 * loading it (with its ASN.1 schemas, tsyringe and the reflect-metadata polyfill) costs about
 * 10 MiB of resident memory and a tenth of a second that `sleeve run` without CRLs never repays.
 *
 * The callers (CRL parsing in `Crl.ts`, inside the synchronous `TlsMaterial.load`) stay
 * synchronous: the module is loaded with `require()`, which in Node ≥ 22.12 loads an ES module
 * synchronously (x509.ts has no top-level await). It is `./x509.ts` beside this file when running
 * from source or under vitest, `./x509.js` in the compiled library (tsc keeps the layout) and in
 * the sidecar's bundle (rolldown.config.ts makes `x509.js` an entry of its own, beside `main.js`).
 */
import { createRequire } from "node:module"
import type * as X509Module from "./x509.ts"

let loaded: typeof X509Module.x509 | undefined

/** The @peculiar/x509 namespace (crypto provider set), loading it on the first call. */
export const x509 = (): typeof X509Module.x509 => {
  if (loaded === undefined) {
    const here = import.meta.url
    const file = here.endsWith(".ts") ? "./x509.ts" : "./x509.js"
    loaded = (createRequire(here)(file) as typeof X509Module).x509
  }
  return loaded
}
