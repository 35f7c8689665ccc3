/**
 * The one place that loads @peculiar/x509: it needs the Reflect metadata polyfill (tsyringe)
 * before it is imported, and a WebCrypto provider (Node's own).
 */
import "reflect-metadata"
import * as x509 from "@peculiar/x509"
import { webcrypto } from "node:crypto"

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0])

export { x509 }
