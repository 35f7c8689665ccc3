/**
 * @sleeve/testing — test-only support shared by every package's tests: a throw-away PKI
 * (`TestPki`), the `openssl` CLI as an oracle (`Openssl`), child processes and daemons
 * (`Process`), loopback ports and servers (`Net`), bounded waits (`Wait`) and the Prometheus
 * text format (`Exposition`). Never imported by product code.
 */
export * as Exposition from "./Exposition.ts"
export * as Net from "./Net.ts"
export * as Openssl from "./Openssl.ts"
export * as Process from "./Process.ts"
export * as TestPki from "./TestPki.ts"
export * as Wait from "./Wait.ts"
