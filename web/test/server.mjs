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
