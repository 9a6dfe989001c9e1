// The Grenache tutorial's fibonacci worker on a chosen transport (ws, http or utp).
// Usage: node worker.js TRANSPORT GRAPE_URL PORT
// The key is fibonacci_worker_TRANSPORT: workers of two transports under one key would
// get each other's clients.
// Prints {"event":"listening",...} once it has announced; serves until SIGTERM.
'use strict'
const Link = require('grenache-nodejs-link')
const [transport, grape, port] = process.argv.slice(2)
const { PeerRPCServer } = require(`grenache-nodejs-${transport}`)

function fibonacci (length) {
  const out = []
  let a = 0
  let b = 1
  for (let i = 0; i < length; i++) {
    out.push(a)
    const next = a + b
    a = b
    b = next
  }
  return out
}

const link = new Link({ grape })
link.start()
const peer = new PeerRPCServer(link, { timeout: 300000 })
peer.init()
const service = peer.transport('server')
service.listen(Number(port))
service.on('request', (rid, key, payload, handler) => {
  if (!payload || typeof payload.length !== 'number') return handler.reply(new Error('expected {"length": N}'))
  handler.reply(null, fibonacci(payload.length))
})
const announce = () => link.announce(`fibonacci_worker_${transport}`, service.port, {}, (err) => {
  if (err) console.error('announce failed:', err.message)
})
announce()
setInterval(announce, 1000)
console.log(JSON.stringify({ event: 'listening', port: service.port, transport }))
process.on('SIGTERM', () => { service.stop(); link.stop(); process.exit(0) })
