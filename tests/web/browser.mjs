// Drives Debian's Chromium (playwright-core, no browser download) for tests/web.rs.
//
// It serves the repository's web/ folder on http://127.0.0.1:PORT (a secure context, as
// WebTransport requires), launches a headless Chromium with a fresh profile, background
// networking off and QUIC left on, and then obeys one JSON command per stdin line,
// answering one JSON line on stdout each:
//
//   {"cmd":"open","hash":"bootstrap=...&account=..."}  loads web/index.html#HASH afresh and waits
//        (at most 30 s) for the page to finish: {"ok":true,"results":window.nanoConnectResults}
//   {"cmd":"eval","script":"BODY"}  runs `async () => { BODY }` in the page (which may
//        `await import('./nano-connect.js')`): {"ok":true,"value":...} or {"ok":false,"error":...}
//   {"cmd":"quit"}
//
// The first line it prints is {"event":"ready","origin":"http://127.0.0.1:PORT"}. Chromium's
// console lines go to stderr, where WebTransport's net:: errors show.

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const webRoot = path.resolve(here, '..', '..', 'web');
const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css' };

const server = http.createServer((req, res) => {
  const name = decodeURIComponent(new URL(req.url, 'http://x').pathname).replace(/^\/+/, '') || 'index.html';
  const file = path.resolve(webRoot, name);
  if (!file.startsWith(webRoot + path.sep) || !fs.existsSync(file)) {
    res.writeHead(404).end('not found');
    return;
  }
  res.writeHead(200, { 'content-type': types[path.extname(file)] ?? 'application/octet-stream' });
  fs.createReadStream(file).pipe(res);
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const origin = `http://127.0.0.1:${server.address().port}`;

const profile = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', 'nano-connect-chromium-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-default-apps',
  ],
});
const page = browser.pages()[0] ?? await browser.newPage();
page.on('console', (m) => process.stderr.write(`[chromium ${m.type()}] ${m.text()}\n`));
page.on('pageerror', (e) => process.stderr.write(`[chromium pageerror] ${e.message}\n`));

const say = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);
async function quit(code) {
  await browser.close().catch(() => {});
  server.close();
  fs.rmSync(profile, { recursive: true, force: true });
  process.exit(code);
}

say({ event: 'ready', origin });

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  let command;
  try {
    command = JSON.parse(line);
  } catch {
    say({ ok: false, error: 'not JSON' });
    continue;
  }
  try {
    if (command.cmd === 'open') {
      // Through about:blank, so that a second open with another fragment loads the page
      // again instead of only moving to the fragment.
      await page.goto('about:blank');
      await page.goto(`${origin}/index.html#${command.hash}`);
      await page.waitForFunction(() => window.nanoConnectResults?.done || window.nanoConnectResults?.error,
        null, { timeout: 30000 });
      say({ ok: true, results: await page.evaluate(() => window.nanoConnectResults) });
    } else if (command.cmd === 'eval') {
      // eslint-disable-next-line no-new-func
      const value = await page.evaluate(`(async () => { ${command.script} })()`);
      say({ ok: true, value: value ?? null });
    } else if (command.cmd === 'quit') {
      break;
    } else {
      say({ ok: false, error: `unknown command ${command.cmd}` });
    }
  } catch (e) {
    say({ ok: false, error: String(e.message ?? e) });
  }
}
await quit(0);
