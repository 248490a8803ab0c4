'use strict';
// The Socket.IO side of `quaver-bench lanes`: typing latency while large History fetches
// stream down the same socket. Run from the stand-in's folder (for its node_modules),
// against its server.js with `history.js` preloaded:
//
//   quaver-bench netem --rate-mbit 20 --delay-ms 25 \
//     --server-cmd "env HOST=\$NETEM_SERVER_IP PORT=3100 node -r $PWD/bench/socketio/history.js server.js" \
//     -- node $PWD/bench/socketio/lanes.js --receivers 4 --typers 5 --quiet 5 --busy 15
//
// (netem runs both commands in /tmp/sio, a copy of ../shared/peers/socketio with `npm ci`
// done: `cd /tmp/sio` before, as its README says.) Receivers fetch the page back to back
// after `--quiet` seconds; typers emit `typing` 4 times a second each (the stand-in has no
// stop: every emit is broadcast). The k-th typing event a receiver gets from a typer is that
// typer's k-th emit (one socket, in order; one process, one clock).

const path = require('path');
const { io } = require(require.resolve('socket.io-client', { paths: [process.cwd(), path.join(process.cwd(), 'node_modules')] }));

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const RECEIVERS = arg('receivers', 4);
const TYPERS = arg('typers', 5);
const QUIET = arg('quiet', 5) * 1000;
const BUSY = arg('busy', 15) * 1000;
const URL = `http://${process.env.NETEM_SERVER_IP || '127.0.0.1'}:${arg('port', 3100)}`;
const ROOM = 'room-0';

const now = () => Number(process.hrtime.bigint() / 1000n); // µs
function connect(user) {
  return new Promise((resolve, reject) => {
    const s = io(URL, { transports: ['websocket'], forceNew: true, reconnection: false, auth: { user } });
    const t = setTimeout(() => reject(new Error(`connect ${user}: timed out`)), 15000);
    s.once('connect_error', (e) => { clearTimeout(t); reject(e); });
    s.once('connect', () => {
      s.emit('join', ROOM, (r) => {
        clearTimeout(t);
        if (r && r.ok) resolve(s); else reject(new Error(`join ${user}: ${JSON.stringify(r)}`));
      });
    });
  });
}
const pct = (v, q) => {
  if (v.length === 0) return 0;
  const s = [...v].sort((a, b) => a - b);
  return s[Math.min(s.length, Math.max(1, Math.ceil(s.length * q))) - 1];
};

async function main() {
  const receivers = await Promise.all(Array.from({ length: RECEIVERS }, (_, i) => connect(`r${i}`)));
  const typers = await Promise.all(Array.from({ length: TYPERS }, (_, i) => connect(`t${i}`)));
  const sent = new Map(typers.map((_, i) => [`t${i}`, []]));
  const quiet = [], busy = [], fetches = [];
  const t0 = now();
  const end = t0 + (QUIET + BUSY) * 1000;
  const busyFrom = t0 + QUIET * 1000;
  console.log(`connect: ${RECEIVERS} receivers, ${TYPERS} typers, quiet ${QUIET} ms then fetching ${BUSY} ms`);
  let errors = 0;
  for (const r of receivers) {
    const seen = new Map();
    r.on('typing', (m) => {
      const at = now();
      const k = seen.get(m.user) || 0;
      seen.set(m.user, k + 1);
      const sentAt = (sent.get(m.user) || [])[k];
      if (sentAt === undefined) { errors++; return; }
      (sentAt < busyFrom ? quiet : busy).push(at - sentAt);
    });
    r.on('disconnect', (why) => { if (now() < end) { errors++; console.error(`receiver disconnected: ${why}`); } });
  }
  const typing = typers.map((s, i) => new Promise((resolve) => {
    const user = `t${i}`;
    setTimeout(() => {
      const tick = setInterval(() => {
        if (now() >= end) { clearInterval(tick); resolve(); return; }
        sent.get(user).push(now());
        s.emit('typing', { room: ROOM });
      }, 250);
    }, Math.floor((250 * i) / TYPERS));
  }));
  const fetching = receivers.map(async (r) => {
    await new Promise((res) => setTimeout(res, QUIET));
    while (now() < end) {
      const start = now();
      const page = await r.timeout(60000).emitWithAck('history', { limit: 100 });
      if (!Array.isArray(page) || page.length !== 100) throw new Error('a history fetch did not return the whole page');
      fetches.push(now() - start);
    }
  });
  await Promise.all([...typing, ...fetching]);
  await new Promise((res) => setTimeout(res, 5000));
  const expected = RECEIVERS * [...sent.values()].reduce((a, v) => a + v.length, 0);
  const seen = quiet.length + busy.length;
  const ms = (v, q) => (pct(v, q) / 1000).toFixed(1);
  console.log(`lanes (socket.io): ${seen}/${expected} typing events seen; typing ms quiet p50 ${ms(quiet, 0.5)} p99 ${ms(quiet, 0.99)} max ${ms(quiet, 1)} | while fetching p50 ${ms(busy, 0.5)} p99 ${ms(busy, 0.99)} max ${ms(busy, 1)}; ${fetches.length} fetches, ms p50 ${ms(fetches, 0.5)} p99 ${ms(fetches, 0.99)}`);
  const j = (v) => ({ p50: pct(v, 0.5), p90: pct(v, 0.9), p99: pct(v, 0.99), max: pct(v, 1) });
  console.log(JSON.stringify({ scenario: 'lanes', transport: 'socket.io', receivers: RECEIVERS, typers: TYPERS, expected, seen, errors,
    typing_quiet_us: j(quiet), typing_fetching_us: j(busy), fetches: fetches.length, fetch_us: j(fetches) }));
  for (const s of [...receivers, ...typers]) s.close();
  process.exit(seen === expected && errors === 0 ? 0 : 1);
}
main().catch((e) => { console.error(e); process.exit(1); });
