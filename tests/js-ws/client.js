// An unmodified websocket client (npm `ws`, pinned by package-lock.json) as a wallet
// would use it against a Nano node's websocket: here against the nano-connect gateway.
// Usage: node client.js ws://HOST:PORT
// Every line on stdin is sent as one text message; every message received is printed on
// stdout as one line {"received": <message as JSON>} (or {"received_text": "..."} when
// it is not JSON). Prints {"open": true} once connected and {"closed": code} at the end,
// so that tests/confirmations.rs can drive it line by line.
'use strict'

const WebSocket = require('ws')
const readline = require('readline')

const ws = new WebSocket(process.argv[2])
const print = (value) => process.stdout.write(JSON.stringify(value) + '\n')

ws.on('open', () => {
  print({ open: true })
  const input = readline.createInterface({ input: process.stdin })
  input.on('line', (line) => { if (line.trim()) ws.send(line) })
  input.on('close', () => ws.close())
})
ws.on('message', (data) => {
  const text = data.toString()
  try {
    print({ received: JSON.parse(text) })
  } catch (e) {
    print({ received_text: text })
  }
})
ws.on('close', (code) => {
  print({ closed: code })
  process.exit(0)
})
ws.on('error', (e) => {
  print({ error: String(e && e.message ? e.message : e) })
  process.exit(1)
})
