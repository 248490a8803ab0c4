'use strict';
// Preloaded into the Socket.IO stand-in (`node -r <this> server.js`, run from the stand-in's
// folder): adds one event to it, unchanged otherwise, so `lanes.js` can put a large History
// fetch on the same socket as typing — what Quaver's `lanes` scenario does with a fetch
// stream beside the typing lane.
//
//   history  (query, ack)   ack(page): 100 messages of 4,000 random CJK characters (1.2 MB
//                           of content), built once — like Quaver's page in that scenario.

const path = require('path');
const sio = require(require.resolve('socket.io', { paths: [process.cwd(), path.join(process.cwd(), 'node_modules')] }));

let x = 0x9e3779b97f4a7c15n;
function next() {
  x ^= (x << 13n) & 0xffffffffffffffffn;
  x ^= x >> 7n;
  x ^= (x << 17n) & 0xffffffffffffffffn;
  return Number(x % 0x5000n);
}
const PAGE = Array.from({ length: 100 }, (_, i) => ({
  id: i + 1,
  author: 'u-owner',
  content: Array.from({ length: 4000 }, () => String.fromCharCode(0x4e00 + next())).join(''),
}));

const on = sio.Server.prototype.on;
sio.Server.prototype.on = function (ev, fn) {
  if (ev === 'connection') {
    const original = fn;
    fn = (socket) => {
      socket.on('history', (_query, ack) => {
        if (typeof ack === 'function') ack(PAGE);
      });
      return original(socket);
    };
  }
  return on.call(this, ev, fn);
};
