// Reads labelled JSON result lines ("LABEL<TAB>{...}") from stdin and prints, per label,
// the median over runs of requests/s, p50 and p99, then the ratios a benchmark script
// asks for with --ratio NAME=A/B:FIELD (FIELD: rps or p50).
// Usage: node summary.js [--ratio NAME=A/B:FIELD ...] < results.tsv
'use strict'
const lines = require('fs').readFileSync(0, 'utf8').split('\n').filter(Boolean)
const byLabel = new Map()
for (const line of lines) {
  const tab = line.indexOf('\t')
  const label = line.slice(0, tab)
  const r = JSON.parse(line.slice(tab + 1))
  if (!byLabel.has(label)) byLabel.set(label, [])
  byLabel.get(label).push(r)
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}
const med = new Map()
console.log('| run | runs | req/s (median) | p50 µs | p99 µs | failed |')
console.log('| --- | ---: | ---: | ---: | ---: | ---: |')
for (const [label, rs] of byLabel) {
  const m = {
    rps: median(rs.map((r) => r.requests_per_s)),
    p50: median(rs.map((r) => r.latency.p50_us)),
    p99: median(rs.map((r) => r.latency.p99_us)),
    errors: rs.reduce((n, r) => n + r.errors, 0)
  }
  med.set(label, m)
  console.log(`| ${label} | ${rs.length} | ${Math.round(m.rps)} | ${m.p50} | ${m.p99} | ${m.errors} |`)
}
const args = process.argv.slice(2)
const ratios = []
for (let i = 0; i < args.length; i++) {
  if (args[i] !== '--ratio') continue
  const [name, spec] = args[++i].split('=')
  const [pair, field] = spec.split(':')
  const [a, b] = pair.split('/')
  if (!med.has(a) || !med.has(b)) continue
  ratios.push(`| ${name} | ${a} / ${b} (${field}) | ${(med.get(a)[field] / med.get(b)[field]).toFixed(2)} |`)
}
if (ratios.length) {
  console.log('\n| ratio | of | value |\n| --- | --- | ---: |')
  for (const r of ratios) console.log(r)
}
