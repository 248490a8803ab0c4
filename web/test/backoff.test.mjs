// quaver.js `Resilient`'s wait before reconnecting (`retryDelayMs`): full jitter after a
// failure, and after an `overloaded` refusal a second or more, spread over the upper half of
// its window (PROTOCOL.md §1, "Refused at the door").
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { retryDelayMs } from '../quaver.js';

const opts = { backoffMs: 250, maxBackoffMs: 8000 };
const randoms = [0, 0.001, 0.25, 0.5, 0.75, 0.999];

test('after a failure the wait is full jitter up to the doubled, capped backoff', () => {
  for (const [attempt, cap] of [[0, 250], [1, 500], [3, 2000], [5, 8000], [30, 8000]]) {
    const waits = randoms.map((r) => retryDelayMs(attempt, false, opts, r));
    for (const w of waits) assert.ok(w >= 0 && w <= cap, `attempt ${attempt}: ${w} not in [0, ${cap}]`);
    assert.equal(waits[0], 0, 'can come back at once');
  }
});

test('after an overloaded refusal the wait is at least half a window of a second or more', () => {
  for (const [attempt, lo, hi] of [[0, 500, 1000], [1, 1000, 2000], [2, 2000, 4000], [3, 4000, 8000], [30, 4000, 8000]]) {
    const waits = randoms.map((r) => retryDelayMs(attempt, true, opts, r));
    for (const w of waits) assert.ok(w >= lo && w <= hi, `attempt ${attempt}: ${w} not in [${lo}, ${hi}]`);
    assert.ok(Math.min(...waits) < Math.max(...waits), 'spread, not one instant');
  }
  // A ceiling under a second still lets the window be a second.
  assert.ok(retryDelayMs(0, true, { backoffMs: 100, maxBackoffMs: 500 }, 0) >= 500);
});
