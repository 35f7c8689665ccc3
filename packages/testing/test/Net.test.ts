import { describe, expect, it } from "@effect/vitest"
import * as Node from "node:net"
import * as Net from "../src/Net.ts"
import * as Wait from "../src/Wait.ts"

describe("Net", () => {
  it("freePort gives a port that can be bound; listen resolves with the bound port; close ends live sockets", async () => {
    const port = await Net.freePort()
    expect(port).toBeGreaterThan(0)
    const sockets = new Set<Node.Socket>()
    const server = Node.createServer((s) => sockets.add(s))
    expect(await Net.listen(server, { host: "127.0.0.1", port })).toBe(port)

    const client = Node.connect(port, "127.0.0.1")
    const closed = new Promise<void>((r) => client.once("close", () => r()))
    client.on("error", () => {})
    await new Promise<void>((r) => client.once("connect", () => r()))
    await Net.close(server, sockets)
    await closed
    expect(server.listening).toBe(false)
  })

  it("makeConnections keeps the live sockets and resolves when the n-th has closed", async () => {
    const connections = Net.makeConnections()
    const server = Node.createServer(connections.track)
    const port = await Net.listen(server)
    const connect = () =>
      new Promise<Node.Socket>((resolve) => {
        const c = Node.connect(port, "127.0.0.1", () => resolve(c))
      })
    const [a, b] = await Promise.all([connect(), connect()])
    await Wait.eventually("both accepted", () => connections.sockets.size === 2)
    let second = false
    const bothClosed = connections.closed(2).then(() => (second = true))
    a.destroy()
    await connections.closed(1)
    expect(connections.sockets.size).toBe(1)
    expect(second).toBe(false)
    b.destroy()
    await bothClosed
    expect(connections.sockets.size).toBe(0)
    await Net.close(server, connections.sockets)
  })

  it("listen rejects when the port is taken", async () => {
    const first = Node.createServer()
    const port = await Net.listen(first)
    await expect(Net.listen(Node.createServer(), { host: "127.0.0.1", port })).rejects.toThrow(/EADDRINUSE/)
    await Net.close(first)
  })
})
