/** @sleeve/core — models and pure logic of Sleeve: configurations, certificates, DNs, peer policy, IRIS devices. */
export * as Certificate from "./Certificate.ts"
export * as ConfigFile from "./ConfigFile.ts"
export * as Crl from "./Crl.ts"
export * as DistinguishedName from "./DistinguishedName.ts"
export * as PeerPolicy from "./PeerPolicy.ts"
export * as PrivateKey from "./PrivateKey.ts"
export * as TcpDevice from "./TcpDevice.ts"
export * as TlsMaterial from "./TlsMaterial.ts"
