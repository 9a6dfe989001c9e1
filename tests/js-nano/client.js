// Drives the npm package `nano-node-rpc`, unchanged, against a nano-connect gateway.
// Usage: node client.js GATEWAY_URL ACCOUNT
// Prints one JSON line with each call's result (or its error message) for
// tests/nano_client_interop.rs to check.
'use strict'

const NanoClient = require('nano-node-rpc')

async function main () {
  const [url, account] = process.argv.slice(2)
  const client = new NanoClient({ url })
  const out = {}
  const run = async (name, call) => {
    try {
      out[name] = await call()
    } catch (e) {
      out[name] = { thrown: String(e && e.message ? e.message : e) }
    }
  }
  await run('block_count', () => client.block_count())
  await run('account_balance', () => client.account_balance(account))
  await run('account_block_count', () => client.account_block_count(account))
  await run('account_key', () => client.account_key(account))
  // Needs the node's control switch: the relay refuses it, in the node's dialect.
  await run('ledger', () => client.ledger(account))
  console.log(JSON.stringify(out))
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
