/** @sleeve/proxy — listeners, TLS sessions (both roles, at any point of a connection), STARTTLS, the bytes path. */
export * as EventLog from "./EventLog.ts"
export * as Listener from "./Listener.ts"
export * as Pipe from "./Pipe.ts"
export * as Starttls from "./Starttls.ts"
export * as StarttlsSession from "./StarttlsSession.ts"
export * as TlsSession from "./TlsSession.ts"
export * as ProxyRuntime from "./ProxyRuntime.ts"
export * as TlsConfigs from "./TlsConfigs.ts"
