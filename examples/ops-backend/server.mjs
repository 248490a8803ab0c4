// An example backend on Quaver's server API: the "ops" side of a product. It owns a guild
// for its operators (made at start for OWNER_ID, with a deploy bot), and offers its own
// HTTP endpoints that turn into Quaver actions:
//
//   POST /deploys          {"version": "4711"}            the bot says it in #general
//   POST /bans             {"user_id": "…", "reason": ""} banned from the guild
//   POST /standup          {"user_id": "…"}               moved into the Standup voice channel
//   POST /members          {"user_id": "…"}               added to the guild (no invite)
//   GET  /guild                                           the guild and its channels
//
// Run (with a key made by `quaver api-key --id ops --scopes admin`):
//   QUAVER_API_URL=http://127.0.0.1:8081 QUAVER_API_KEY=qk_ops_… OWNER_ID=… node examples/ops-backend/server.mjs
// It prints `ops-backend listening on http://127.0.0.1:PORT` (PORT: $PORT, default any free).
import { createServer } from 'node:http';
import { Quaver, QuaverApiError } from '../../sdk/node/index.mjs';

const need = (name) => process.env[name] ?? (() => { throw new Error(`${name} is required`); })();
const quaver = new Quaver({ url: need('QUAVER_API_URL'), key: need('QUAVER_API_KEY') });
const OWNER = need('OWNER_ID');
const BOT = process.env.BOT_ID ?? '900';

// The guild, its channels and the bot, made once at start.
await quaver.users.put(BOT, { name: 'Deploy bot' });
const guild = await quaver.guilds.create({ owner_id: OWNER, name: 'Operations' });
await quaver.guilds.addMember(guild.id, BOT);
const standup = await quaver.guilds.createChannel(guild.id, { kind: 'voice', name: 'Standup' });
const lobby = await quaver.guilds.createChannel(guild.id, { kind: 'voice', name: 'Lobby' });
const general = (await quaver.guilds.get(guild.id)).channels.find((c) => c.kind === 'text');

const routes = {
  'GET /guild': async () => ({ guild, general: general.id, standup: standup.id, lobby: lobby.id }),
  'POST /deploys': async ({ version }) => {
    if (!/^[\w.-]{1,32}$/.test(version ?? '')) throw Object.assign(new Error('version: 1–32 of letters, digits, . _ -'), { status: 400 });
    // The deploy id makes the post idempotent: a retried deploy hook posts once.
    return quaver.messages.create(general.id, { author_id: BOT, content: `Deploy ${version} is live` }, { idempotencyKey: `deploy-${version}` });
  },
  'POST /bans': async ({ user_id, reason }) => { await quaver.guilds.ban(guild.id, user_id, reason ?? ''); return { banned: user_id }; },
  'POST /standup': async ({ user_id }) => quaver.voice.move(guild.id, user_id, standup.id),
  'POST /members': async ({ user_id }) => { await quaver.guilds.addMember(guild.id, user_id); return { added: user_id }; },
};

const server = createServer(async (req, res) => {
  const send = (status, body) => { res.writeHead(status, { 'content-type': 'application/json' }); res.end(JSON.stringify(body)); };
  const route = routes[`${req.method} ${new URL(req.url, 'http://x').pathname}`];
  if (!route) return send(404, { error: 'no such route' });
  let body = {};
  try {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    if (chunks.length) body = JSON.parse(Buffer.concat(chunks).toString());
  } catch { return send(400, { error: 'the body is not JSON' }); }
  try {
    send(200, await route(body));
  } catch (e) {
    // Quaver's refusal, passed on with its machine code; anything else is ours.
    if (e instanceof QuaverApiError) return send(e.status, { error: e.detail, code: e.codeName, field: e.field });
    console.error('ops-backend:', e);
    send(e.status ?? 500, { error: e.message });
  }
});
server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  console.log(`ops-backend listening on http://127.0.0.1:${server.address().port}`);
});
