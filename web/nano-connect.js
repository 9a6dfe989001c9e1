// nano-connect for web pages: a Nano node's RPC from the nano-connect mesh, over
// WebTransport, with no server of the page's own. An ES module with no build step and no
// dependencies; docs/protocol.md §9 describes what it speaks.
//
//   import { connect } from './nano-connect.js';
//   const mesh = await connect('https://203.0.113.7:40001/nano-connect#sha256=9f86…,6030…');
//   const { count } = await mesh.request({ action: 'block_count' });
//
// How it works:
//
// 1. `connect(bootstrap)` opens a WebTransport session to the first grape of the bootstrap
//    string that answers, accepting only the certificates whose SHA-256 the string gives
//    (W3C WebTransport `serverCertificateHashes`).
// 2. `request(body)` looks the service key up at the grape (`nano-connect/lookup`): the
//    grape answers with the workers' signed records (BEP 44 items, Ed25519). Each record is
//    checked here again (signature, service key, expiry): a grape can leave workers out,
//    never forge one.
// 3. It opens a session to a worker at the address its record gives, accepting only the
//    certificate hashes its record lists: a host that is not the worker fails the
//    handshake. One bidirectional stream per request carries one request frame and one
//    response frame (u32 big-endian length, then a MessagePack map), as native clients do.
//    A worker behind a NAT (its record lists no public address, only brokers) cannot be
//    dialled from a browser: its requests go to the grape instead (`nano-connect/relay`),
//    which reaches the worker by the native route and passes its answer back unchanged.
//    Such answers are as trustworthy as that grape (`requestDetailed` says `relayed`);
//    `quorum` over several workers is the defence.
// 4. Read-only actions fail over to another worker when one cannot be reached, is busy or
//    its node does not answer; other actions are sent once. `quorum: N` asks N distinct
//    workers and resolves only when a strict majority gave the same answer, byte for byte.
//
// Errors: every failure rejects with a `NanoConnectError` whose `code` is the one
// `nano-connect call` prints and whose `exitCode` is `call`'s exit status for it:
//
//   | code                                       | exitCode | when                           |
//   |--------------------------------------------|----------|--------------------------------|
//   | a worker's wire code (`action_not_allowed`, `invalid_request`, `busy`, ...) | 3 | the worker refused |
//   | `upstream_unreachable`, `upstream_timeout` | 7        | the worker's node did not answer |
//   | `no_worker`                                | 5        | no worker with a web face found |
//   | `timeout`                                  | 6        | no answer within `timeoutMs`    |
//   | `unreachable`                              | 7        | no grape, or no worker, reached |
//   | `disagreement`, `no_quorum`                | 8        | `quorum`: no majority / too few |
//   | `frame`                                    | 1        | an answer could not be read     |
//   | `usage`                                    | 2        | bad bootstrap string or options |
//
// A node's own error (`{"error": "Account not found"}`) is an answer: `request` resolves
// to it, as `call` prints it.

/** The service key of a Nano node's RPC. */
export const NANO_RPC = 'nano_rpc';

/** The path of every WebTransport session of the mesh. */
export const WEB_PATH = '/nano-connect';

/** The grape's lookup service (request body: a service key; answer: JSON records). */
export const LOOKUP_SERVICE = 'nano-connect/lookup';

/** The grape's relay to workers behind NATs (request body: MessagePack {node, key, body}). */
export const RELAY_SERVICE = 'nano-connect/relay';

/**
 * Actions that may be sent again to another worker: they only read. The same list as the
 * Rust client's (`src/nano/actions.rs`, READ_ONLY_ACTIONS; a test keeps them equal).
 */
export const READ_ONLY_ACTIONS = [
  'account_balance', 'account_block_count', 'account_get', 'account_history',
  'account_info', 'account_key', 'account_representative', 'account_weight',
  'accounts_balances', 'accounts_frontiers', 'accounts_receivable',
  'accounts_representatives', 'block_account', 'block_count', 'block_hash', 'block_info',
  'blocks', 'blocks_info', 'chain', 'successors', 'available_supply', 'delegators',
  'delegators_count', 'frontier_count', 'representatives', 'representatives_online',
  'confirmation_quorum', 'active_difficulty', 'telemetry', 'receivable', 'pending',
  'receivable_exists', 'pending_exists', 'validate_account_number', 'version', 'uptime',
  'work_validate', 'nano_to_raw', 'raw_to_nano',
];

/** Exit status of `nano-connect call` for each error code (see the table above). */
export const EXIT_CODES = {
  no_worker: 5, timeout: 6, unreachable: 7, relay_closed: 7, upstream_unreachable: 7,
  upstream_timeout: 7, disagreement: 8, no_quorum: 8, frame: 1, usage: 2, failure: 1,
};

/**
 * Failures after which a read-only request moves on to another worker: refusals that say
 * "not now", and a worker that took longer than an attempt may.
 */
const FAILOVER_CODES = new Set(['busy', 'upstream_unreachable', 'upstream_timeout', 'timeout', 'frame']);

/** Record rules (docs/protocol.md §6): the longest a record may live, the clock skew allowed. */
const MAX_RECORD_TTL_MS = 3600_000;
const MAX_CLOCK_SKEW_MS = 60_000;

/** Largest response frame read, bytes (the workers' default limit). */
const MAX_RESPONSE_BYTES = 8 * 1024 * 1024;

/**
 * Why a request got no answer. `code` is one of the codes in the module comment,
 * `exitCode` the matching `nano-connect call` exit status, `worker` the node id that
 * refused (when one did), `tried` the workers tried with their failures.
 */
export class NanoConnectError extends Error {
  /**
   * @param {string} code short machine-readable reason
   * @param {string} message one human-readable line
   * @param {{worker?: string, tried?: Array<[string, string]>}} [detail]
   */
  constructor(code, message, detail = {}) {
    super(message);
    this.name = 'NanoConnectError';
    this.code = code;
    this.exitCode = EXIT_CODES[code] ?? 3;
    this.worker = detail.worker;
    this.tried = detail.tried ?? [];
  }
}

// ---------------------------------------------------------------------------------------
// Bootstrap strings: `https://IP:PORT/nano-connect#sha256=HEX[,HEX]`, separated by spaces.

/**
 * Reads a bootstrap string into endpoints `{addr, url, sha256: [hex...]}`.
 * @param {string} text
 * @returns {Array<{addr: string, url: string, sha256: string[]}>}
 * @throws {NanoConnectError} `usage` when an entry is malformed or there is none
 */
export function parseBootstrap(text) {
  const entries = String(text ?? '').split(/\s+/).filter(Boolean);
  if (entries.length === 0) throw new NanoConnectError('usage', 'the bootstrap string lists no grape');
  return entries.map(parseEndpoint);
}

function parseEndpoint(entry) {
  const m = /^https:\/\/([^/#]+)\/nano-connect\/?#sha256=([0-9a-f,]+)$/i.exec(entry);
  const hashes = m ? m[2].split(',').filter(Boolean).map((h) => h.toLowerCase()) : [];
  if (!m || hashes.length === 0 || hashes.length > 4 || hashes.some((h) => !/^[0-9a-f]{64}$/.test(h))) {
    throw new NanoConnectError('usage',
      `${entry.slice(0, 120)} is not https://IP:PORT/nano-connect#sha256=HEX[,HEX]`);
  }
  return { addr: m[1], url: `https://${m[1]}${WEB_PATH}`, sha256: hashes };
}

/**
 * Writes endpoints back into a bootstrap string.
 * @param {Array<{url: string, sha256: string[]}>} endpoints
 * @returns {string}
 */
export function formatBootstrap(endpoints) {
  return endpoints.map((e) => `${e.url}#sha256=${e.sha256.join(',')}`).join(' ');
}

// ---------------------------------------------------------------------------------------
// Bytes.

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder('utf-8', { fatal: true });

function hexToBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  return out;
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

const Z32 = 'ybndrfg8ejkmcpqxot1uwisza345h769';

/** A node id's text form: the Ed25519 public key in z-base-32 (as pkarr and the CLI write it). */
export function nodeId(keyBytes) {
  let bits = 0, value = 0, out = '';
  for (const byte of keyBytes) {
    value = (value << 8) | byte; bits += 8;
    while (bits >= 5) { out += Z32[(value >>> (bits - 5)) & 31]; bits -= 5; }
  }
  if (bits > 0) out += Z32[(value << (5 - bits)) & 31];
  return out;
}

// ---------------------------------------------------------------------------------------
// MessagePack: the subset the frames use (maps with string keys, unsigned integers,
// strings, binary, nil, booleans), written with named fields as rmp-serde's
// `to_vec_named` does.

function packValue(v, out) {
  if (v === null || v === undefined) out.push(0xc0);
  else if (v === true || v === false) out.push(v ? 0xc3 : 0xc2);
  else if (typeof v === 'number') {
    if (!Number.isSafeInteger(v) || v < 0) throw new NanoConnectError('frame', `cannot encode ${v}`);
    if (v < 0x80) out.push(v);
    else if (v < 0x100) out.push(0xcc, v);
    else if (v < 0x10000) out.push(0xcd, v >> 8, v & 0xff);
    else if (v < 0x100000000) out.push(0xce, v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff);
    else {
      const hi = Math.floor(v / 0x100000000), lo = v >>> 0;
      out.push(0xcf, hi >>> 24, (hi >>> 16) & 0xff, (hi >>> 8) & 0xff, hi & 0xff,
        lo >>> 24, (lo >>> 16) & 0xff, (lo >>> 8) & 0xff, lo & 0xff);
    }
  } else if (typeof v === 'string') {
    const b = utf8.encode(v);
    if (b.length < 32) out.push(0xa0 | b.length);
    else if (b.length < 0x100) out.push(0xd9, b.length);
    else out.push(0xda, b.length >> 8, b.length & 0xff);
    for (const x of b) out.push(x);
  } else if (v instanceof Uint8Array) {
    if (v.length < 0x100) out.push(0xc4, v.length);
    else if (v.length < 0x10000) out.push(0xc5, v.length >> 8, v.length & 0xff);
    else out.push(0xc6, v.length >>> 24, (v.length >>> 16) & 0xff, (v.length >>> 8) & 0xff, v.length & 0xff);
    for (const x of v) out.push(x);
  } else if (typeof v === 'object') {
    const keys = Object.keys(v);
    if (keys.length >= 16) throw new NanoConnectError('frame', 'map too large');
    out.push(0x80 | keys.length);
    for (const k of keys) { packValue(k, out); packValue(v[k], out); }
  } else throw new NanoConnectError('frame', `cannot encode a ${typeof v}`);
}

function unpack(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  const need = (n) => { if (at + n > bytes.length) throw new NanoConnectError('frame', 'truncated MessagePack'); };
  const u = (n) => {
    need(n);
    let v = 0;
    for (let i = 0; i < n; i++) v = v * 256 + bytes[at + i];
    at += n;
    return v;
  };
  const raw = (n) => { need(n); const b = bytes.subarray(at, at + n); at += n; return b; };
  const str = (n) => fromUtf8.decode(raw(n));
  const map = (n) => { const o = {}; for (let i = 0; i < n; i++) { const k = value(); o[k] = value(); } return o; };
  const arr = (n) => { const a = []; for (let i = 0; i < n; i++) a.push(value()); return a; };
  function value() {
    const t = u(1);
    if (t < 0x80) return t;
    if (t >= 0xe0) return t - 0x100;
    if ((t & 0xf0) === 0x80) return map(t & 0x0f);
    if ((t & 0xf0) === 0x90) return arr(t & 0x0f);
    if ((t & 0xe0) === 0xa0) return str(t & 0x1f);
    switch (t) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return raw(u(1));
      case 0xc5: return raw(u(2));
      case 0xc6: return raw(u(4));
      case 0xcc: return u(1);
      case 0xcd: return u(2);
      case 0xce: return u(4);
      case 0xcf: return u(8);
      case 0xd0: need(1); at += 1; return view.getInt8(at - 1);
      case 0xd1: need(2); at += 2; return view.getInt16(at - 2);
      case 0xd2: need(4); at += 4; return view.getInt32(at - 4);
      case 0xd3: need(8); at += 8; return Number(view.getBigInt64(at - 8));
      case 0xd9: return str(u(1));
      case 0xda: return str(u(2));
      case 0xdb: return str(u(4));
      case 0xdc: return arr(u(2));
      case 0xdd: return arr(u(4));
      case 0xde: return map(u(2));
      case 0xdf: return map(u(4));
      default: throw new NanoConnectError('frame', `unsupported MessagePack byte 0x${t.toString(16)}`);
    }
  }
  const v = value();
  if (at !== bytes.length) throw new NanoConnectError('frame', 'trailing bytes after the frame');
  return v;
}

/** A request frame: length prefix, then {v, id, key, body}. */
function requestFrame(id, key, body) {
  const out = [];
  packValue({ v: 1, id, key, body }, out);
  const prefix = [out.length >>> 24, (out.length >>> 16) & 0xff, (out.length >>> 8) & 0xff, out.length & 0xff];
  return new Uint8Array([...prefix, ...out]);
}

/** Reads a response frame `{v, id, status, body, error}` from a whole stream's bytes. */
function responseFrame(bytes) {
  if (bytes.length < 4) throw new NanoConnectError('frame', `answer of ${bytes.length} bytes has no length prefix`);
  const len = ((bytes[0] << 24) >>> 0) + (bytes[1] << 16) + (bytes[2] << 8) + bytes[3];
  if (len !== bytes.length - 4) throw new NanoConnectError('frame', `length prefix says ${len} bytes, the stream had ${bytes.length - 4}`);
  const frame = unpack(bytes.subarray(4));
  if (typeof frame !== 'object' || frame === null || typeof frame.status !== 'number') {
    throw new NanoConnectError('frame', 'the answer is not a response frame');
  }
  return frame;
}

// ---------------------------------------------------------------------------------------
// Sessions and streams.

function withTimeout(promise, ms, onTimeout) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(onTimeout()), ms); }),
  ]).finally(() => clearTimeout(timer));
}

/** Opens a WebTransport session to `url`, accepting only certificates with these hashes. */
async function openSession(url, sha256, timeoutMs) {
  let session;
  try {
    session = new WebTransport(url, {
      serverCertificateHashes: sha256.map((h) => ({ algorithm: 'sha-256', value: hexToBytes(h) })),
    });
  } catch (e) {
    throw new NanoConnectError('unreachable', `${url}: ${e.message}`);
  }
  session.closed.catch(() => {});
  try {
    await withTimeout(session.ready, timeoutMs,
      () => new NanoConnectError('unreachable', `${url}: no WebTransport handshake within ${timeoutMs} ms`));
  } catch (e) {
    try { session.close(); } catch { /* already closed */ }
    if (e instanceof NanoConnectError) throw e;
    throw new NanoConnectError('unreachable',
      `${url}: ${e.message} (the certificate is not one of the hashes given, or nothing listens there)`);
  }
  return session;
}

/** One exchange on a new bidirectional stream: writes the frame, reads the whole answer. */
async function exchange(session, frame) {
  const stream = await session.createBidirectionalStream();
  const writer = stream.writable.getWriter();
  await writer.write(frame);
  await writer.close();
  const reader = stream.readable.getReader();
  const chunks = [];
  let total = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > MAX_RESPONSE_BYTES + 4) {
      reader.cancel().catch(() => {});
      throw new NanoConnectError('frame', `answer over ${MAX_RESPONSE_BYTES} bytes`);
    }
    chunks.push(value);
  }
  return responseFrame(concat(chunks));
}

// ---------------------------------------------------------------------------------------
// Records (BEP 44 mutable items, signed with the worker's Ed25519 node key).

/**
 * Checks a record as the grape passed it (`{k, salt, seq, v, sig}`) and reads it.
 * @returns {Promise<{node: string, exp: number, urls: string[], sha256: string[], relayed: boolean}>}
 *   `relayed`: the worker is behind a NAT (no public address, registered with brokers) and
 *   is reached through the grape; `urls` and `sha256` are then empty
 * @throws {Error} when the signature, the service key, the times or the body are wrong
 */
export async function verifyRecord(record, key, nowMs = Date.now()) {
  if (record.salt !== key) throw new Error(`record is for ${record.salt}, not ${key}`);
  const k = hexToBytes(record.k);
  const salt = utf8.encode(record.salt);
  const v = utf8.encode(record.v);
  // BEP 44: the signature covers 4:salt<len>:<salt>3:seqi<seq>e1:v<len>:<v>.
  const signable = concat([
    utf8.encode(`4:salt${salt.length}:`), salt,
    utf8.encode(`3:seqi${record.seq}e1:v${v.length}:`), v,
  ]);
  const publicKey = await crypto.subtle.importKey('raw', k, { name: 'Ed25519' }, false, ['verify']);
  const ok = await crypto.subtle.verify({ name: 'Ed25519' }, publicKey, hexToBytes(record.sig), signable);
  if (!ok) throw new Error('record signature does not verify (altered or forged)');
  const body = JSON.parse(record.v);
  if (body.v !== 1) throw new Error(`record body version ${body.v}`);
  if (record.seq > nowMs + MAX_CLOCK_SKEW_MS) throw new Error('record signed in the future');
  if (body.exp - record.seq > MAX_RECORD_TTL_MS) throw new Error('record claims to live too long');
  if (body.exp < nowMs) throw new Error('record expired');
  const relayed = !(Array.isArray(body.addrs) && body.addrs.length > 0)
    && Array.isArray(body.via) && body.via.length > 0;
  if (relayed) return { node: nodeId(k), exp: body.exp, urls: [], sha256: [], relayed };
  const web = body.web;
  if (!web || !Array.isArray(web.addrs) || !Array.isArray(web.sha256) || web.sha256.length === 0) {
    throw new Error('record lists no web face');
  }
  return {
    node: nodeId(k),
    exp: body.exp,
    urls: web.addrs.map((a) => `https://${a}${WEB_PATH}`),
    sha256: web.sha256,
    relayed,
  };
}

// ---------------------------------------------------------------------------------------
// The mesh.

function actionOf(body) {
  return body && typeof body === 'object' && typeof body.action === 'string' ? body.action : null;
}

/** Whether `body` may be sent again to another worker (its action only reads). */
export function failoverSafe(body) {
  return READ_ONLY_ACTIONS.includes(actionOf(body));
}

/**
 * A connection to the mesh: a grape session for lookups and worker sessions for requests.
 * Made by {@link connect}.
 */
export class Mesh {
  constructor(endpoints, options) {
    this.endpoints = endpoints;
    this.options = options;
    this.key = options.key;
    this.grape = null;
    this.workers = null;
    this.lookedUpAt = 0;
    this.sessions = new Map();
    this.dead = new Map();
    this.nextId = 1;
  }

  /**
   * The bootstrap string as this mesh knows it now: the grapes it was given, with the
   * certificate hashes their latest answers listed (a page keeps it, in localStorage say,
   * to reach the grapes after their certificates rotate).
   */
  get bootstrap() {
    return formatBootstrap(this.endpoints);
  }

  /** Opens the grape session (the first grape of the bootstrap string that answers). */
  async openGrape() {
    if (this.grape) return this.grape;
    const tried = [];
    for (const e of this.endpoints) {
      try {
        const session = await openSession(e.url, e.sha256, this.options.connectTimeoutMs);
        this.grape = { session, endpoint: e };
        session.closed.finally(() => { if (this.grape?.session === session) this.grape = null; });
        return this.grape;
      } catch (err) {
        tried.push([e.url, err.message]);
      }
    }
    throw new NanoConnectError('unreachable',
      `no grape of the bootstrap string could be reached: ${tried.map((t) => t.join(': ')).join('; ')}`,
      { tried });
  }

  /**
   * Looks the service key up (reusing the last lookup for `lookupTtlMs`): the workers whose
   * records verify, `[{node, exp, urls, sha256}]`.
   * @throws {NanoConnectError} `unreachable` (no grape), or the grape's refusal code
   */
  async lookup(force = false) {
    const now = Date.now();
    if (!force && this.workers && now - this.lookedUpAt < this.options.lookupTtlMs) return this.workers;
    const grape = await this.openGrape();
    let frame;
    try {
      frame = await exchange(grape.session, requestFrame(this.nextId++, LOOKUP_SERVICE, utf8.encode(this.key)));
    } catch (e) {
      this.grape = null;
      if (e instanceof NanoConnectError) throw e;
      throw new NanoConnectError('unreachable', `the grape's session failed: ${e.message}`);
    }
    if (frame.error) throw new NanoConnectError(frame.error.code, `grape: ${frame.error.message}`);
    const answer = JSON.parse(fromUtf8.decode(frame.body));
    if (typeof answer.grape === 'string' && answer.grape) {
      // Learn the grape's current and next hashes: how an open page follows rotations.
      try {
        const fresh = parseEndpoint(answer.grape);
        if (fresh.url === grape.endpoint.url) grape.endpoint.sha256 = fresh.sha256;
      } catch { /* keep what we had */ }
    }
    const workers = [];
    for (const record of answer.records ?? []) {
      try {
        workers.push(await verifyRecord(record, this.key, now));
      } catch (e) {
        this.options.log?.(`record skipped: ${e.message}`);
      }
    }
    this.workers = workers;
    this.lookedUpAt = now;
    return workers;
  }

  /** The open session to `worker`, or a new one (trying each of its addresses). */
  async session(worker) {
    const open = this.sessions.get(worker.node);
    if (open) return open;
    const pending = (async () => {
      const errors = [];
      for (const url of worker.urls) {
        try {
          return await openSession(url, worker.sha256, this.options.connectTimeoutMs);
        } catch (e) {
          errors.push(e.message);
        }
      }
      throw new NanoConnectError('unreachable', errors.join('; ') || 'the record lists no address');
    })();
    this.sessions.set(worker.node, pending);
    try {
      const session = await pending;
      session.closed.finally(() => {
        if (this.sessions.get(worker.node) === pending) this.sessions.delete(worker.node);
      });
      return session;
    } catch (e) {
      this.sessions.delete(worker.node);
      throw e;
    }
  }

  /**
   * Sends `bytes` to one worker within `attemptTimeoutMs`; resolves to
   * `{status, body, node}` or rejects (`unreachable`, `timeout`, `frame`, or the worker's code).
   */
  async ask(worker, bytes) {
    if (worker.relayed) return this.askThroughGrape(worker, bytes);
    const session = await this.session(worker);
    let frame;
    try {
      const ms = this.options.attemptTimeoutMs;
      frame = await withTimeout(exchange(session, requestFrame(this.nextId++, this.key, bytes)), ms,
        () => new NanoConnectError('timeout', `worker ${worker.node} gave no answer within ${ms} ms`));
    } catch (e) {
      this.sessions.delete(worker.node);
      try { session.close(); } catch { /* already closed */ }
      if (e instanceof NanoConnectError) throw e;
      throw new NanoConnectError('unreachable', `${worker.node}: the session failed: ${e.message}`);
    }
    if (frame.error) {
      throw new NanoConnectError(frame.error.code, `worker ${worker.node} refused: ${frame.error.message} (${frame.error.code})`,
        { worker: worker.node });
    }
    return { status: frame.status, body: frame.body, node: worker.node };
  }

  /**
   * {@link Mesh#ask} for a worker behind a NAT: the grape carries the request
   * (`nano-connect/relay`) and answers with the worker's own response or refusal.
   */
  async askThroughGrape(worker, bytes) {
    const grape = await this.openGrape();
    const out = [];
    packValue({ node: worker.node, key: this.key, body: bytes }, out);
    let frame;
    try {
      const ms = this.options.attemptTimeoutMs;
      frame = await withTimeout(exchange(grape.session, requestFrame(this.nextId++, RELAY_SERVICE, new Uint8Array(out))), ms,
        () => new NanoConnectError('timeout', `worker ${worker.node} gave no answer through the grape within ${ms} ms`));
    } catch (e) {
      if (e instanceof NanoConnectError) throw e;
      this.grape = null;
      throw new NanoConnectError('unreachable', `the grape's session failed: ${e.message}`);
    }
    if (frame.error) {
      throw new NanoConnectError(frame.error.code,
        `worker ${worker.node} (through the grape) refused: ${frame.error.message} (${frame.error.code})`,
        { worker: worker.node });
    }
    return { status: frame.status, body: frame.body, node: worker.node, relayed: true };
  }

  /** Workers in the order to try: not recently dead first, then at random. */
  order(workers) {
    const now = Date.now();
    const alive = workers.filter((w) => !(this.dead.get(w.node) > now));
    const pool = alive.length ? alive : workers;
    return pool.map((w) => [this.sessions.has(w.node) ? 0 : 1, Math.random(), w])
      .sort((a, b) => a[0] - b[0] || a[1] - b[1]).map((x) => x[2]);
  }

  /**
   * Sends a Nano RPC request and resolves to the node's JSON answer.
   * @param {object} body the RPC body, e.g. `{action: 'account_balance', account: 'nano_…'}`
   * @param {{quorum?: number, timeoutMs?: number, failover?: boolean}} [options]
   *   `quorum`: ask that many distinct workers and need a strict majority (read-only
   *   actions only); `failover`: override the read-only rule; `timeoutMs`: whole deadline
   * @returns {Promise<object>} the node's answer; `answer[NODE]` is not set, see `requestDetailed`
   * @throws {NanoConnectError} see the module comment for the codes
   */
  async request(body, options = {}) {
    return (await this.requestDetailed(body, options)).json;
  }

  /**
   * Like {@link Mesh#request}, and says who answered:
   * `{json, status, node, relayed, failovers, ms}` (`node`: the worker's node id, or the
   * nodes of the majority for a quorum; `relayed`: the answer came through the grape from
   * a worker behind a NAT).
   */
  async requestDetailed(body, options = {}) {
    const timeoutMs = options.timeoutMs ?? this.options.timeoutMs;
    const started = performance.now();
    const run = (options.quorum ?? 1) > 1 && failoverSafe(body)
      ? this.quorum(body, options.quorum)
      : this.failover(body, options.failover ?? failoverSafe(body));
    const result = await withTimeout(run, timeoutMs,
      () => new NanoConnectError('timeout', `no answer within ${timeoutMs} ms`));
    result.ms = performance.now() - started;
    return result;
  }

  async failover(body, mayResend) {
    const bytes = utf8.encode(JSON.stringify(body));
    let workers = await this.lookup();
    if (workers.length === 0) workers = await this.lookup(true);
    if (workers.length === 0) throw new NanoConnectError('no_worker', `no worker of ${this.key} is reachable from web pages`);
    const tried = [];
    let last = null;
    for (const worker of this.order(workers).slice(0, this.options.maxAttempts)) {
      try {
        const answer = await this.ask(worker, bytes);
        return {
          json: parseAnswer(answer), status: answer.status, node: worker.node,
          relayed: worker.relayed, failovers: tried.length,
        };
      } catch (e) {
        tried.push([worker.node, e.message]);
        last = e;
        const unreachable = e.code === 'unreachable';
        if (unreachable) this.dead.set(worker.node, Date.now() + this.options.deadTtlMs);
        // A worker that could not be reached never saw the request: always try another.
        // Any other failure moves on only for requests that may be sent twice.
        if (!(unreachable || (mayResend && FAILOVER_CODES.has(e.code)))) throw e;
      }
    }
    if (last && last.code !== 'unreachable') throw last;
    this.workers = null;
    throw new NanoConnectError('unreachable',
      `no worker of ${this.key} could be reached: ${tried.map((t) => t.join(': ')).join('; ')}`, { tried });
  }

  async quorum(body, n) {
    const bytes = utf8.encode(JSON.stringify(body));
    const workers = this.order(await this.lookup());
    if (workers.length < n) {
      throw new NanoConnectError('no_quorum', `a quorum of ${n} needs ${n} workers; ${workers.length} found`);
    }
    const asked = workers.slice(0, n);
    const votes = await Promise.all(asked.map((w) => this.ask(w, bytes).then(
      (a) => ({ node: w.node, answer: a }), (e) => ({ node: w.node, error: e }))));
    const need = Math.floor(n / 2) + 1;
    const tally = new Map();
    for (const v of votes) {
      if (!v.answer) continue;
      const k = `${v.answer.status}:${fromUtf8.decode(v.answer.body)}`;
      if (!tally.has(k)) tally.set(k, []);
      tally.get(k).push(v);
    }
    for (const group of tally.values()) {
      if (group.length >= need) {
        const a = group[0].answer;
        return { json: parseAnswer(a), status: a.status, node: group.map((g) => g.node), failovers: 0 };
      }
    }
    const failed = votes.filter((v) => v.error).map((v) => [v.node, v.error.message]);
    throw new NanoConnectError('disagreement',
      `no ${need} of ${n} workers agree on the answer (${tally.size} distinct answers, ${failed.length} failed)`,
      { tried: failed });
  }

  /** Closes every session. */
  close() {
    this.grape?.session.close();
    this.grape = null;
    for (const pending of this.sessions.values()) pending.then((s) => s.close(), () => {});
    this.sessions.clear();
  }
}

/** The node's answer as JSON; RsNano's plain-text refusals (HTTP 422) become `{error}`. */
function parseAnswer(answer) {
  const text = fromUtf8.decode(answer.body);
  try {
    return JSON.parse(text);
  } catch {
    return { error: text, status: answer.status };
  }
}

/**
 * Connects to the mesh through the grapes of `bootstrap` and returns a {@link Mesh}.
 * @param {string} bootstrap grapes' endpoints, `https://IP:PORT/nano-connect#sha256=HEX[,HEX]`, space-separated
 * @param {{key?: string, timeoutMs?: number, connectTimeoutMs?: number, attemptTimeoutMs?: number,
 *   lookupTtlMs?: number, maxAttempts?: number, deadTtlMs?: number, log?: (line: string) => void}} [options]
 *   `key` the service key (default `nano_rpc`); `timeoutMs` a request's whole deadline
 *   (default 10000); `connectTimeoutMs` one handshake's (3000); `attemptTimeoutMs` one
 *   worker's time to answer before a read-only request moves on (3000); `lookupTtlMs` how long a
 *   lookup is reused (30000); `maxAttempts` workers tried per request (3); `deadTtlMs` how
 *   long an unreachable worker is skipped (30000)
 * @returns {Promise<Mesh>}
 * @throws {NanoConnectError} `usage` (bad bootstrap string, no WebTransport in this
 *   browser), `unreachable` (no grape answered)
 */
export async function connect(bootstrap, options = {}) {
  if (typeof WebTransport === 'undefined') {
    throw new NanoConnectError('usage', 'this browser has no WebTransport (or the page is not a secure context)');
  }
  const endpoints = parseBootstrap(bootstrap);
  const mesh = new Mesh(endpoints, {
    key: NANO_RPC, timeoutMs: 10000, connectTimeoutMs: 3000, attemptTimeoutMs: 3000, lookupTtlMs: 30000,
    maxAttempts: 3, deadTtlMs: 30000, ...options,
  });
  await mesh.openGrape();
  return mesh;
}
