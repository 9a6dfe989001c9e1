// A load generator for Grenache, with the same rules as `nano-connect bench`: C
// requests in flight, stop after N requests or D seconds, warm-up not counted.
// Usage: node client.js TRANSPORT GRAPE_URL CONCURRENCY REQUESTS SECONDS
// Prints one JSON object: ok, errors, requests_per_s, latency.{p50,p99,p999}_us.
'use strict'
const Link = require('grenache-nodejs-link')
const [transport, grape, c, n, d] = process.argv.slice(2)
const { PeerRPCClient } = require(`grenache-nodejs-${transport}`)
const concurrency = Number(c)
const requests = Number(n)
const seconds = Number(d)

const link = new Link({ grape })
link.start()
const peer = new PeerRPCClient(link, {})
peer.init()

const payload = { length: 10 }
const request = () => new Promise((resolve) => {
  peer.request(`fibonacci_worker_${transport}`, payload, { timeout: 10000 }, (err, data) => resolve(!err && Array.isArray(data)))
})

function percentile (sorted, q) {
  if (sorted.length === 0) return 0
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
}

async function main () {
  // Warm-up: wait (bounded) until the key is found, then ten requests.
  const warmDeadline = Date.now() + 20000
  while (!(await request())) {
    if (Date.now() > warmDeadline) { console.error('worker not found'); process.exit(1) }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  for (let i = 0; i < 10; i++) await request()

  let remaining = requests
  let errors = 0
  const latencies = []
  const started = process.hrtime.bigint()
  const deadline = started + BigInt(Math.round(seconds * 1e9))
  async function lane () {
    while (remaining > 0) {
      remaining--
      const sent = process.hrtime.bigint()
      if (sent >= deadline) break
      if (await request()) latencies.push(Number(process.hrtime.bigint() - sent) / 1000)
      else errors++
    }
  }
  await Promise.all(Array.from({ length: concurrency }, lane))
  const elapsed = Number(process.hrtime.bigint() - started) / 1e9
  latencies.sort((a, b) => a - b)
  console.log(JSON.stringify({
    ok: latencies.length,
    errors,
    elapsed_s: elapsed,
    requests_per_s: latencies.length / elapsed,
    concurrency,
    latency: {
      p50_us: Math.round(percentile(latencies, 0.5)),
      p99_us: Math.round(percentile(latencies, 0.99)),
      p999_us: Math.round(percentile(latencies, 0.999))
    }
  }))
  link.stop()
  process.exit(0)
}
main()
