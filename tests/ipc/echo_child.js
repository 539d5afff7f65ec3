// Node child for the ipc tests: started by a C++ parent with command::ipc(). It
// answers every message with process.send(); a few control messages ({op: ...}) make
// it do something else.
'use strict';

process.on('message', (m) => {
  const op = m !== null && typeof m === 'object' && !Array.isArray(m) ? m.op : undefined;
  switch (op) {
    case 'exit':        // die at once with this code
      process.exit(m.code);
      break;
    case 'env':         // what Node left in the environment after opening the channel
      process.send({ fd: process.env.NODE_CHANNEL_FD ?? null,
                     mode: process.env.NODE_CHANNEL_SERIALIZATION_MODE ?? null });
      break;
    case 'stringify':   // how Node itself serializes what it received
      process.send({ text: JSON.stringify(m.value) });
      break;
    case 'internal':    // an internal message (cmd NODE_...), then a normal one
      process.send({ cmd: 'NODE_TEST_INTERNAL', x: 1 });
      process.send({ after: 'internal' });
      break;
    case 'big':         // a big message of n 'x'
      process.send({ big: 'x'.repeat(m.n) });
      break;
    case 'surrogates': {  // strings with lone UTF-16 surrogates (JSON.stringify escapes
                          // them), and how Node itself writes each one as UTF-8
      const s = { hi: '\ud83d', lo: '\ude00', pair: '\ud83d\ude00', mixed: 'a\ud83db\ude00c' };
      const utf8 = {};
      for (const k of Object.keys(s)) utf8[k] = Buffer.from(s[k], 'utf8').toString('hex');
      process.send({ strings: s, utf8 });
      break;
    }
    case 'ordered':     // an object written in this key order
      process.send({ b: 1, a: 2, c: { z: 1, y: 2 } });
      break;
    case 'deep': {      // an array nested n levels deep, or why it could not be sent
      let v = [];
      for (let i = 1; i < m.n; ++i) v = [v];
      try {
        process.send(v);
      } catch (e) {
        process.send({ error: String(e) });
      }
      break;
    }
    case 'depth': {     // how deep m.value nests (iteratively: no stack limit here)
      let deepest = 0;
      const todo = [[m.value, 0]];
      while (todo.length) {
        const [v, d] = todo.pop();
        if (v === null || typeof v !== 'object') continue;
        deepest = Math.max(deepest, d + 1);
        for (const c of Object.values(v)) todo.push([c, d + 1]);
      }
      process.send({ depth: deepest });
      break;
    }
    case 'raw-deep': {  // a line no process.send() can write (n levels), straight on
                        // the channel's socket (fd 3), then a normal message
      const fs = require('fs');
      let buf = Buffer.from('['.repeat(m.n) + ']'.repeat(m.n) + '\n');
      while (buf.length > 0) {  // the socket is non-blocking: retry while it is full
        try {
          buf = buf.subarray(fs.writeSync(3, buf));
        } catch (e) {
          if (e.code !== 'EAGAIN') throw e;
        }
      }
      process.send({ after: 'raw-deep' });
      break;
    }
    default:
      process.send(m);
  }
});
