// Webhooks checked by an independent verifier: the Standard Webhooks library from npm
// (`standardwebhooks`), inside the README's example receiver (examples/webhook-receiver).
// A backend makes an endpoint through the API, things happen, and every delivery verifies
// with the secret it was given; after a rotation a redelivery verifies with the old secret
// and with the new one; a tampered body does not verify.
//
// Needs the built server (QUAVER_BIN, default ../target/debug/quaver) and `npm ci` in web/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createServer } from 'node:http';
import { randomBytes } from 'node:crypto';
import { Webhook } from 'standardwebhooks';
import { BIN, startServerWithKey, apiCaller } from './server.mjs';
import { receive } from '../../examples/webhook-receiver/receiver.mjs';

let server, api, key;

const call = (method, path, body) => apiCaller(api, key).call(method, path, body);
const ok = (status, method, path, body) => apiCaller(api, key).ok(status, method, path, body);

async function until(what, f, ms = 10000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const v = await f();
    if (v) return v;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out: ${what}`);
}

before(async () => {
  assert.ok(existsSync(BIN), `server binary ${BIN} missing: build it first (cargo build)`);
  ({ server, api, key } = await startServerWithKey(['admin']));
});

after(() => server?.child.kill());

test('every delivery verifies with the standardwebhooks package, across a rotation', async () => {
  // A receiver of its own that records each request and verifies it with a fresh verifier.
  let secret;
  const got = [];
  const raw = [];
  const rx = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      raw.push({ body, headers: { ...req.headers } });
      try {
        got.push(new Webhook(secret).verify(body, req.headers));
        res.writeHead(204).end();
      } catch (e) {
        res.writeHead(400).end(String(e));
      }
    });
  });
  await new Promise((r) => rx.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${rx.address().port}/hook`;
  const made = await ok(201, 'POST', '/webhooks', { id: 'app', url, events: ['message.*', 'member.*', 'reaction.*'] });
  secret = made.secret;
  await ok(200, 'PUT', '/users/1', { name: 'Ada' });
  await ok(200, 'PUT', '/users/2', { name: 'Bob' });
  const guild = await ok(201, 'POST', '/guilds', { owner_id: '1', name: 'Verified' });
  await ok(201, 'PUT', `/guilds/${guild.id}/members/2`);
  const details = await ok(200, 'GET', `/guilds/${guild.id}`);
  const channel = details.channels.find((c) => c.kind === 'text').id;
  const m = await ok(201, 'POST', `/channels/${channel}/messages`, { author_id: '2', content: 'héllo 👋 "quoted"' });
  await ok(204, 'PUT', `/channels/${channel}/messages/${m.id}/reactions/${encodeURIComponent('👍')}/1`);
  await until('three events verified', () => got.length >= 3);
  assert.deepEqual(got.map((e) => e.type), ['member.joined', 'message.created', 'reaction.added']);
  const created = got[1];
  assert.equal(created.data.message.content, 'héllo 👋 "quoted"');
  assert.equal(created.key, `channel:${channel}`);
  assert.match(created.id, /^evt_\d+$/);
  assert.equal(raw[1].headers['webhook-id'], created.id);

  // A tampered body does not verify: the check can fail.
  const t = raw[1];
  assert.throws(() => new Webhook(secret).verify(t.body.replace('héllo', 'hello'), t.headers));

  // Rotation: a redelivery is signed by both secrets; each verifies it on its own.
  const old = secret;
  const rot = await ok(200, 'POST', '/webhooks/app/rotate');
  secret = rot.secret;
  await ok(202, 'POST', '/webhooks/app/redeliver', { event_id: created.id });
  await until('the redelivery', () => got.length >= 4);
  const again = raw[3];
  assert.equal(again.headers['webhook-id'], created.id);
  assert.equal(new Webhook(old).verify(again.body, again.headers).id, created.id);
  assert.equal(new Webhook(secret).verify(again.body, again.headers).id, created.id);
  rx.close();
});

test("the README's receiver handles each event once, and refuses a forged one", async () => {
  const handled = [];
  // A secret of the backend's own choosing (the API makes one when none is given).
  const secret = `whsec_${randomBytes(32).toString('base64')}`;
  const rx = await receive(secret, async (e) => handled.push(e));
  const url = `http://127.0.0.1:${rx.address().port}/`;
  await ok(201, 'POST', '/webhooks', { id: 'readme', url, events: ['member.*'], secret });
  const test = await ok(202, 'POST', '/webhooks/readme/test');
  const guild = await ok(201, 'POST', '/guilds', { owner_id: '1', name: 'Once' });
  await ok(201, 'PUT', `/guilds/${guild.id}/members/2`);
  await until('the ping and the join', () => handled.length >= 2);
  // Two ordering keys (the endpoint's ping, the guild's join): delivered in parallel, so in
  // either order (CI saw both).
  assert.deepEqual(handled.map((e) => e.type).sort(), ['member.joined', 'webhook.test']);
  const ping = handled.find((e) => e.type === 'webhook.test');
  const join = handled.find((e) => e.type === 'member.joined');
  assert.equal(ping.id, test.event_id);
  // Delivered again: answered 2xx, handled once.
  await ok(202, 'POST', '/webhooks/readme/redeliver', { event_id: join.id });
  await until('the redelivery answered', async () => {
    const d = await ok(200, 'GET', '/webhooks/readme/deliveries');
    return d.deliveries.every((x) => x.state === 'delivered') && d.deliveries.some((x) => x.attempts >= 1 && x.event_id === join.id);
  });
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(handled.length, 2);
  // A forged delivery (wrong key) is refused with 400.
  const forged = new Webhook('whsec_' + Buffer.alloc(32, 7).toString('base64'));
  const body = JSON.stringify({ id: 'evt_1', type: 'member.joined', data: {} });
  const ts = new Date();
  const r = await fetch(url, {
    method: 'POST',
    headers: { 'webhook-id': 'evt_1', 'webhook-timestamp': String(Math.floor(ts / 1000)), 'webhook-signature': forged.sign('evt_1', ts, body) },
    body,
  });
  assert.equal(r.status, 400);
  rx.close();
});
