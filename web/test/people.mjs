// Helpers for the web app's browser tests: people signed in on their own browser contexts,
// driving the page only through what it shows, and an accessibility check with axe-core.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
export const AXE = require.resolve('axe-core/axe.min.js');

export const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', '--autoplay-policy=no-user-gesture-required',
  '--allow-loopback-in-peer-connection'];

/** Polls `f` until it returns something truthy (returned) or `ms` pass (a failure naming `what`). */
export async function until(what, f, ms = 10000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await f();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

/**
 * `name` signed in on a new context of `browser` at `http`: the page, with every page error
 * and console error kept in `page.problems` (a test asserts it stays empty).
 */
export async function person(browser, http, name, { viewport = { width: 1280, height: 800 }, colorScheme = 'light', before = null } = {}) {
  const context = await browser.newContext({ viewport, colorScheme });
  const page = await context.newPage();
  page.problems = [];
  page.on('pageerror', (e) => { page.problems.push(`page error: ${e}`); console.error(`[${name}] page error:`, e); });
  page.on('console', (m) => {
    const t = m.text();
    if (t.startsWith('quaver:')) console.error(`[${name}] ${t} at ${new Date().toISOString()}`);
    if (m.type() === 'error') page.problems.push(`console error: ${t}`);
  });
  if (before) await before(page);
  await page.goto(`http://${http}/`);
  await signIn(page, name);
  return page;
}

export async function signIn(page, name) {
  await page.fill('#name', name);
  await page.click('#signin-dev');
  await page.waitForFunction(() => ['ready', 'resumed'].includes(document.getElementById('conn').dataset.state), null, { timeout: 10000 });
}

/** The texts of the open channel's messages, in display order. */
export const shown = (page) => page.$$eval('#messages .msg', (els) => els.map((e) => ({
  id: e.dataset.id, seq: Number(e.dataset.seq), text: e.querySelector('.content')?.textContent ?? '',
})));

export async function sendText(page, text) {
  await page.fill('#composer', text);
  await page.press('#composer', 'Enter');
}

/** Creates a guild from the "+" on the guild rail; resolves once its general channel is open. */
export async function createGuild(page, name) {
  await page.click('#add-guild');
  await page.fill('#new-guild', name);
  await page.click('#create-guild');
  await page.waitForSelector('#channels .channel[data-name="general"].selected');
}

/** An invite code from the guild menu's "Invite people". */
export async function inviteCode(page) {
  await page.click('#guild-menu-button');
  await page.click('#create-invite');
  const code = await (await page.waitForSelector('#invite-value')).textContent();
  await page.click('#dialog-buttons button');
  return code;
}

/** Opens the invite link in `page` and accepts "Join …?" in one click. */
export async function joinByLink(page, http, code) {
  await page.goto(`http://${http}/#invite=${code}`);
  await page.click('#join-invite');
  await page.waitForSelector('#channels .channel[data-name="general"].selected');
}

/** Creates a channel of `kind` through its "+"; resolves to its id. */
export async function createChannel(page, name, kind) {
  await page.click(`#channels button[aria-label="Create a ${kind.toLowerCase()} channel"]`);
  await page.fill('#new-channel-name', name);
  await page.selectOption('#new-channel-kind', kind);
  await page.click('#create-channel');
  return (await page.waitForSelector(`#channels .channel[data-kind="${kind}"][data-name="${name}"]`)).getAttribute('data-id');
}

/** `a` creates voice channel `name`, both pages join it, and each decodes the other with
 * energy (within 15 s); resolves to the channel's id, both still in it. */
export async function voiceBothWays(a, b, name) {
  const stats = (p) => p.evaluate(() => ({ ...window.quaverApp.voiceStats }));
  const channel = await createChannel(a, name, 'Voice');
  await until('the other page sees the voice channel', () => b.$(`#channels .channel[data-id="${channel}"]`));
  await a.click(`#channels .channel[data-id="${channel}"]`);
  await b.click(`#channels .channel[data-id="${channel}"]`);
  // Joining takes the microphone, the voice lane and the other page's view of it: over the
  // emulated link of the UDP-blocked test (debug server, two browsers on two cores) it once
  // took more than 10 s in CI — a slow join is said, not failed, up to 20 s.
  const joined = Date.now();
  await until('both are in the channel', async () => (await a.$$('#channels .voice-user')).length === 2, 20000);
  if (Date.now() - joined > 5000) console.error(`# both were in the voice channel only after ${Date.now() - joined} ms`);
  await until('each decodes the other with energy', async () => {
    const [x, y] = [await stats(a), await stats(b)];
    return x.decodedFrames > 20 && y.decodedFrames > 20 && x.decodedEnergy > 0 && y.decodedEnergy > 0 && [x, y];
  }, 15000);
  return channel;
}

/** Opens settings, runs `f(page)` on them, closes them. */
export async function inSettings(page, f) {
  await page.click('#settings-button');
  await f(page);
  await page.click('#dialog-buttons button.primary');
}

/** axe-core on the page as it is: fails on any serious or critical violation. */
export async function accessible(page, what) {
  if (!(await page.evaluate(() => !!window.axe))) await page.addScriptTag({ path: AXE });
  const r = await page.evaluate(async () => {
    const res = await window.axe.run(document, { resultTypes: ['violations'] });
    return res.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) }));
  });
  const bad = r.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert.deepEqual(bad, [], `${what}: ${JSON.stringify(bad, null, 1)}`);
  return r;
}
