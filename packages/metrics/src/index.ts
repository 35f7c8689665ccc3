/**
 * @sleeve/metrics: Sleeve's Prometheus metrics behind an Effect service (see `Metrics`).
 */
export * as Metrics from "./Metrics.ts"
