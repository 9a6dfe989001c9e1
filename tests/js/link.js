// Drives nano-connect grapes with Grenache's own client, grenache-nodejs-link, unchanged.
// Usage: node link.js GRAPE_A_URL GRAPE_B_URL PORT
// Prints one JSON line with what it saw; exits non-zero on any failure or after 20 s.
'use strict'

const Link = require('grenache-nodejs-link')

const [grapeA, grapeB, portArg] = process.argv.slice(2)
const port = Number(portArg)
const key = 'grenache_interop'
const result = {}

const fail = (step, err) => {
  console.log(JSON.stringify({ failed: step, error: String(err && err.message ? err.message : err), result }))
  process.exit(1)
}
setTimeout(() => fail('deadline', 'no result within 20 s'), 20000).unref()

const a = new Link({ grape: grapeA }).start()
const b = new Link({ grape: grapeB, lruMaxAgeLookup: 1 }).start()

a.announce(key, port, {}, (err, res) => {
  if (err) return fail('announce', err)
  result.announce = res
  let tries = 0
  const lookup = () => b.lookup(key, {}, (err, found) => {
    if (!err && found.includes(`127.0.0.1:${port}`)) {
      result.lookup = found
      return empty()
    }
    if (++tries >= 100) return fail('lookup', err || found)
    setTimeout(lookup, 100)
  })
  lookup()
})

const empty = () => b.lookup('nobody_announces_this', {}, (err) => {
  result.emptyLookup = err ? err.message : 'no error'
  putGet()
})

const putGet = () => a.put({ v: 'hello grenache' }, (err, hash) => {
  if (err) return fail('put', err)
  result.put = hash
  b.get(hash, (err, item) => {
    if (err) return fail('get', err)
    result.get = item
    a.stop()
    b.stop()
    console.log(JSON.stringify(result))
    process.exit(0)
  })
})
