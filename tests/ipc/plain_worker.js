// A worker written the way the course writes them: it answers each message with one
// message, and knows nothing of JSON-RPC (run it in a pool with
// worker_protocol::plain). On 'disconnect' it cleans up for 200 ms, writes the marker
// file named by its first argument (if any) and exits 0.
'use strict';
const fs = require('fs');

const fib = (n) => (n < 2 ? n : fib(n - 1) + fib(n - 2));

process.on('message', (n) => process.send(fib(n)));

process.on('disconnect', () => {
  setTimeout(() => {
    if (process.argv[2]) fs.writeFileSync(process.argv[2], 'done\n');
    process.exit(0);
  }, 200);
});
