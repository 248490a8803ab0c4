// @quaver/server against a real server (target/debug/quaver, or QUAVER_BIN): calls, typed
// errors, and retries that stay safe — a 429 or a lost answer is retried with the same
// Idempotency-Key, and the change happens once.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServerWithKey } from '../../../web/test/server.mjs';
import { Quaver, QuaverApiError } from '../index.mjs';

let server, api, key;

before(async () => { ({ server, api, key } = await startServerWithKey()); });
after(() => server?.child.kill('SIGTERM'));

test('calls answer their JSON; refusals are typed errors naming the field', async () => {
  const q = new Quaver({ url: api, key });
  assert.deepEqual(await q.whoami(), { key_id: 'tests', scopes: ['admin'] });
  await q.users.put('900', { name: 'Deploy bot' });
  const g = await q.guilds.create({ owner_id: '1', name: 'Ops' });
  assert.match(g.id, /^\d+$/);
  await assert.rejects(q.guilds.get('77'), (e) => e instanceof QuaverApiError && e.status === 404 && e.codeName === 'NOT_FOUND');
  await assert.rejects(q.users.put('5', { name: '' }), (e) => e.status === 400 && e.field === 'name');
  const wrong = new Quaver({ url: api, key: `${key.slice(0, -1)}${key.endsWith('0') ? '1' : '0'}`, retries: 0 });
  await assert.rejects(wrong.whoami(), (e) => e.status === 401 && e.codeName === 'UNAUTHORIZED');
});

test('roles in order, deleted; a member timed out and lifted; an avatar', async () => {
  const q = new Quaver({ url: api, key });
  const me = await q.users.put('901', { name: 'Pictured', avatar_url: 'https://cdn.example/901.png' });
  assert.equal(me.avatar_url, 'https://cdn.example/901.png');
  const g = await q.guilds.create({ owner_id: '1', name: 'Order' });
  await q.guilds.addMember(g.id, '901');
  const a = await q.guilds.createRole(g.id, { name: 'a' });
  const b = await q.guilds.createRole(g.id, { name: 'b' });
  assert.equal((await q.guilds.updateRole(g.id, b.id, { position: 9 })).position, 2);
  await q.guilds.deleteRole(g.id, a.id);
  assert.deepEqual((await q.guilds.get(g.id)).roles.map((r) => r.name).sort(), ['@everyone', 'b']);
  await q.guilds.timeout(g.id, '901', 60, 'calm down');
  const member = (await q.guilds.members(g.id)).members.find((m) => m.user_id === '901');
  assert.equal(member.avatar_url, 'https://cdn.example/901.png');
  assert.ok(member.timed_out_until_ms > Date.now(), JSON.stringify(member));
  await assert.rejects(q.guilds.timeout(g.id, '901', 0), (e) => e.status === 400 && e.field === 'seconds');
  await q.guilds.liftTimeout(g.id, '901');
  assert.equal((await q.guilds.members(g.id)).members.find((m) => m.user_id === '901').timed_out_until_ms, null);
});

test('a 429 and a lost answer are retried with the same Idempotency-Key: one message', async () => {
  const seen = [];
  let n = 0;
  // In front of the real fetch: the first try is refused with 429, the second one's answer is
  // lost after the server acted on it (a timeout), the third goes through.
  const flaky = async (url, init) => {
    n++;
    seen.push(init.headers['idempotency-key']);
    if (n === 1) {
      return new Response(JSON.stringify({ status: 429, code: 5, code_name: 'RATE_LIMITED', detail: 'slow down', retry_after_ms: 20 }),
        { status: 429, headers: { 'content-type': 'application/problem+json' } });
    }
    const r = await fetch(url, init);
    if (n === 2) { await r.text(); throw new TypeError('fetch failed (the answer was lost)'); }
    return r;
  };
  const q = new Quaver({ url: api, key, fetch: flaky });
  const g = await q.guilds.create({ owner_id: '1', name: 'Retries' });
  const general = (await new Quaver({ url: api, key }).guilds.get(g.id)).channels.find((c) => c.kind === 'text');
  await new Quaver({ url: api, key }).guilds.addMember(g.id, '900');
  n = 0; seen.length = 0;
  const m = await q.messages.create(general.id, { author_id: '900', content: 'exactly once' });
  assert.equal(n, 3);
  assert.equal(new Set(seen).size, 1, 'the same key on every try');
  assert.equal(m.content, 'exactly once');
  const page = await new Quaver({ url: api, key }).messages.history(general.id, { limit: 10 });
  assert.equal(page.messages.filter((x) => x.content === 'exactly once').length, 1);
});

test('batch, events, presence and revocations through the SDK', async () => {
  const q = new Quaver({ url: api, key });
  const r = await q.batch([{ method: 'GET', path: '/users/900' }, { method: 'GET', path: '/users/77' }]);
  assert.deepEqual(r.results.map((x) => x.status), [200, 404]);
  assert.deepEqual(await q.events.send({ name: 'order.shipped', data: { order: 1 }, user_ids: ['1'] }), { to: 'users' });
  const p = await q.users.presence(['1', '900']);
  assert.equal(p.presences.length, 2);
  const rev = await q.sessions.revoke('42', { jti: 'stolen' });
  assert.equal(rev.jti, 'stolen');
  assert.deepEqual(await q.sessions.list('42'), { sessions: [], complete: true });
  const dm = await q.guilds.openDm(['1', '900']);
  assert.equal(dm.kind, 'dm');
  await q.users.befriend('1', '900');
  await q.users.unfriend('900', '1');
  await assert.rejects(q.users.unfriend('900', '1'), (e) => e.codeName === 'NO_RELATIONSHIP');
  await q.users.block('1', '900');
  await assert.rejects(q.users.befriend('900', '1'), (e) => e.codeName === 'BLOCKED');
  await q.users.unblock('1', '900');
  await assert.rejects(q.users.unblock('1', '900'), (e) => e.codeName === 'NO_RELATIONSHIP');
});
