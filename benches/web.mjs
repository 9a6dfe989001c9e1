// The web figures of docs/benchmarks.md: page load to first answer, and the in-browser
// request time, through headless Chromium (tests/web/browser.mjs) against a running mesh.
//
//   node benches/web.mjs BOOTSTRAP [LOADS] [REQUESTS]
//
// LOADS times (default 10): load web/index.html afresh (new WebTransport sessions to the
// grape and a worker) and read when its first answer (block_count) came, in ms from the
// navigation's start. Then REQUESTS (default 500) `mesh.request({action: 'block_count'})`
// one after another on the last page's open sessions, each timed with performance.now(),
// and as many with `"uncached": "true"` (always relayed to the node stand-in).
// Prints one JSON line. benches/web.sh starts the mesh and runs this.
import { spawn } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const [bootstrap, loads = '10', requests = '500'] = process.argv.slice(2);
if (!bootstrap) {
  process.stderr.write('usage: node benches/web.mjs BOOTSTRAP [LOADS] [REQUESTS]\n');
  process.exit(2);
}
const here = path.dirname(fileURLToPath(import.meta.url));
const driver = spawn('node', [path.join(here, '..', 'tests', 'web', 'browser.mjs')], {
  stdio: ['pipe', 'pipe', 'inherit'],
});
const lines = readline.createInterface({ input: driver.stdout })[Symbol.asyncIterator]();
async function next() {
  const { value, done } = await lines.next();
  if (done) throw new Error('the browser driver stopped');
  return JSON.parse(value);
}
async function ask(command) {
  driver.stdin.write(`${JSON.stringify(command)}\n`);
  const answer = await next();
  if (!answer.ok) throw new Error(`${command.cmd}: ${answer.error}`);
  return answer;
}
const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
const round = (x) => Math.round(x * 10) / 10;

await next(); // {"event":"ready"}
const firsts = [];
for (let i = 0; i < Number(loads); i++) {
  const { results } = await ask({ cmd: 'open', hash: `bootstrap=${encodeURIComponent(bootstrap)}` });
  if (results.error) throw new Error(`page: ${JSON.stringify(results.error)}`);
  firsts.push(results.loadedAt + results.firstAnswerMs);
}
const timed = async (body) => (await ask({
  cmd: 'eval',
  script: `const mesh = window.nanoConnectMesh; const t = [];
    for (let i = 0; i < ${Number(requests)}; i++) {
      const s = performance.now();
      await mesh.request(${JSON.stringify(body)});
      t.push(performance.now() - s);
    }
    return t.sort((a, b) => a - b);`,
})).value;
// Mostly answered from the worker's cache (block_count lives 1 s there), then always
// from the node stand-in.
const times = await timed({ action: 'block_count' });
const uncached = await timed({ action: 'block_count', uncached: 'true' });
driver.stdin.write('{"cmd":"quit"}\n');
firsts.sort((a, b) => a - b);
process.stdout.write(`${JSON.stringify({
  loads: firsts.length,
  first_answer_ms: { p50: round(quantile(firsts, 0.5)), min: round(firsts[0]), max: round(firsts.at(-1)) },
  requests: times.length,
  request_ms: { p50: round(quantile(times, 0.5)), p90: round(quantile(times, 0.9)), p99: round(quantile(times, 0.99)) },
  uncached_ms: { p50: round(quantile(uncached, 0.5)), p90: round(quantile(uncached, 0.9)), p99: round(quantile(uncached, 0.99)) },
})}\n`);
