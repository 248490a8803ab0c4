// Starts a `quaver serve` process for the browser tests: on its embedded defaults (SQLite in
// a temporary directory, a dev certificate), with `env` on top of the test's environment
// minus DATABASE_URL, REDIS_URL and JWT_SECRET (pass them in `env` to use them). Resolves
// to { child, quic, http, log } once the server reports its addresses; `log()` is its output
// so far.
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const BIN = process.env.QUAVER_BIN ?? new URL('../../target/debug/quaver', import.meta.url).pathname;

export function startServer(env = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'quaver-browser-'));
  const { DATABASE_URL: _d, REDIS_URL: _r, JWT_SECRET: _j, ...inherited } = process.env;
  const full = {
    ...inherited, QUAVER_LISTEN: '127.0.0.1:0', QUAVER_HTTP_LISTEN: '127.0.0.1:0', QUAVER_API_LISTEN: '127.0.0.1:0',
    QUAVER_DATA_DIR: join(dir, 'data'), QUAVER_CERT_DIR: join(dir, 'certs'), QUAVER_LOG: 'info', NO_COLOR: '1', ...env,
  };
  const child = spawn(BIN, ['serve'], { env: full, stdio: ['ignore', 'ignore', 'pipe'] });
  let text = '';
  const log = () => text.replace(/\x1b\[[0-9;]*m/g, '');
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${log()}`)), 20000);
    child.stderr.on('data', (d) => {
      text += d;
      const h = log().match(/http=(127\.0\.0\.1:\d+)/), q = log().match(/quic=(127\.0\.0\.1:\d+)/);
      if (h && q) { clearTimeout(timer); resolve({ child, quic: q[1], http: h[1], log }); }
    });
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`server exited ${code}:\n${log()}`)); });
  });
}

/**
 * A server as `startServer` makes it, with one API key (`quaver api-key`, as the README
 * says): resolves to { server, api (the /api/v1 base URL), key }.
 */
export async function startServerWithKey(scopes = ['admin'], env = {}) {
  const { execFileSync } = await import('node:child_process');
  const { createHash } = await import('node:crypto');
  const key = execFileSync(BIN, ['api-key', '--id', 'tests', '--scopes', scopes.join(',')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
    .split('\n')[0].trim();
  const secret_sha256 = createHash('sha256').update(key).digest('hex');
  const server = await startServer({ QUAVER_API_KEYS: JSON.stringify([{ id: 'tests', secret_sha256, scopes }]), ...env });
  const end = Date.now() + 10000;
  let m;
  while (!(m = server.log().match(/server API for your backend: (http:\/\/[^ ]+\/api\/v1)/)) && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 50));
  }
  if (!m) throw new Error(`the server did not say its API address:\n${server.log()}`);
  return { server, api: m[1], key };
}

/**
 * Calls of the server API at `api` (its /api/v1 base URL) with `key`: `call(method, path,
 * body)` resolves to { status, body }; `ok(status, method, path, body)` asserts the status and
 * resolves to the body.
 */
export function apiCaller(api, key) {
  const call = async (method, path, body) => {
    const r = await fetch(`${api}${path}`, {
      method,
      headers: { authorization: `Bearer ${key}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await r.text();
    return { status: r.status, body: text ? JSON.parse(text) : null };
  };
  const ok = async (status, method, path, body) => {
    const r = await call(method, path, body);
    if (r.status !== status) throw new Error(`${method} ${path}: ${r.status}, not ${status}: ${JSON.stringify(r.body)}`);
    return r.body;
  };
  return { call, ok };
}

