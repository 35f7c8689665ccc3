/**
 * @sleeve/testing — test-only helpers shared by every package's tests: a throw-away PKI today,
 * echo/sink servers and TLS clients as they are added. Never imported by product code.
 */
export * as TestPki from "./TestPki.ts"
