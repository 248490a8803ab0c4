// A webhook receiver for Quaver in a few lines of Node: it verifies every delivery with the
// Standard Webhooks library (npm `standardwebhooks`), drops duplicates by event id (Quaver
// delivers at least once), and answers 2xx only once the event is handled — any other
// answer, or none within 10 s, is retried. README "Webhooks and hooks" shows it; the test
// web/test/webhooks.test.mjs runs it.
//
//   QUAVER_WEBHOOK_SECRET=whsec_… node examples/webhook-receiver/receiver.mjs
import { createServer } from 'node:http';
import { Webhook } from 'standardwebhooks';

/** Serves `handle(event)` on `port` (0: any); resolves to the server once listening. */
export function receive(secret, handle, port = 0) {
  const wh = new Webhook(secret);
  const seen = new Set(); // in production: a table with a unique key on the event id
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => (body += chunk));
    req.on('end', async () => {
      let event;
      try {
        event = wh.verify(body, req.headers); // throws unless signed with `secret`, fresh
      } catch {
        res.writeHead(400).end();
        return;
      }
      if (!seen.has(event.id)) {
        await handle(event); // event.type, event.key, event.key_seq, event.data
        seen.add(event.id);
      }
      res.writeHead(204).end();
    });
  });
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)));
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const server = await receive(process.env.QUAVER_WEBHOOK_SECRET, (e) => console.log(e.type, e.key, e.data), Number(process.env.PORT ?? 3000));
  console.log(`listening on http://127.0.0.1:${server.address().port}/`);
}
