/**
 * A throwaway PKI for the STARTTLS integration tests, made with the `openssl` CLI in a temp dir:
 * a self-signed EC CA and a `localhost` / 127.0.0.1 server leaf. Test-only; nothing is committed.
 */
import { execFile } from "node:child_process"
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as tls from "node:tls"
import { promisify } from "node:util"

const run = promisify(execFile)

/** The files and contexts of the test PKI. */
export interface Pki {
  readonly dir: string
  readonly caFile: string
  readonly caPem: string
  readonly certPem: string
  readonly keyPem: string
  /** A server context presenting the leaf. */
  readonly serverContext: tls.SecureContext
  readonly cleanup: () => Promise<void>
}

/** Make the CA and the localhost leaf (about 50 ms). */
export const makePki = async (): Promise<Pki> => {
  const dir = await mkdtemp(join(tmpdir(), "sleeve-starttls-"))
  const openssl = (args: ReadonlyArray<string>) => run("openssl", args, { cwd: dir })
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
  await openssl(
    ["req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1"].concat(
      ["-subj", "/CN=Sleeve STARTTLS Test CA", "-addext", "basicConstraints=critical,CA:TRUE"],
      ["-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    )
  )
  await openssl(["req", ...ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost"])
  await writeFile(
    join(dir, "leaf.ext"),
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n" +
      "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
  )
  await openssl(
    ["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"].concat([
      "-out",
      "leaf.pem",
      "-days",
      "1",
      "-extfile",
      "leaf.ext"
    ])
  )
  const [caPem, certPem, keyPem] = await Promise.all(
    ["ca.pem", "leaf.pem", "leaf.key"].map((f) => readFile(join(dir, f), "utf8"))
  )
  return {
    dir,
    caFile: join(dir, "ca.pem"),
    caPem: caPem!,
    certPem: certPem!,
    keyPem: keyPem!,
    serverContext: tls.createSecureContext({ key: keyPem!, cert: certPem! }),
    cleanup: () => rm(dir, { recursive: true, force: true })
  }
}
