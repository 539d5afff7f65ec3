// A Node parent driving a C++ child (ipc_helper) over spawn(..., {stdio: [..., 'ipc']}).
// Usage: node node_parent.js <ipc_helper> <mode>
//   echo    send assorted messages, expect them back, then disconnect
//   handle  send a message carrying a handle (a net.Server), which a C++ child cannot
//           take: it must answer NODE_HANDLE_NACK so Node goes on with later messages
// Prints one JSON line with what happened; exits 0 when all was as expected.
'use strict';
const { spawn } = require('child_process');
const net = require('net');

const [helper, mode = 'echo'] = process.argv.slice(2);
const child = spawn(helper, ['print-env', 'connect', 'print-env', 'print-cloexec', 'echo'],
                    { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
let childOut = '';
child.stdout.on('data', (d) => { childOut += d; });

const sent = [
  { hello: 'world' },
  'just a string',
  42,
  true,
  [1, { deep: { er: [true, null, 'x'] } }],
  { unicode: 'héllo ✓ 日本語 🎉 \u2028 "quoted" \\ tab\t' },
  { big: 'y'.repeat(1 << 20) },
];
const got = [];
const expected = mode === 'handle' ? [{ after: 'handle' }] : sent;
process.on('warning', () => {});  // SentHandleNotReceivedWarning is expected in 'handle'

child.on('message', (m) => {
  got.push(m);
  if (got.length === expected.length) child.disconnect();
});

if (mode === 'handle') {
  const server = net.createServer();
  server.listen(0, '127.0.0.1', () => {
    child.send({ with: 'handle' }, server);
    child.send({ after: 'handle' });
    server.close();
  });
} else {
  for (const m of sent) child.send(m);
}

const timer = setTimeout(() => {
  console.log(JSON.stringify({ ok: false, reason: 'timeout', got: got.length }));
  child.kill('SIGKILL');
  process.exit(1);
}, 20000);

child.on('exit', (code, signal) => {
  clearTimeout(timer);
  const ok = JSON.stringify(got) === JSON.stringify(expected);
  console.log(JSON.stringify({ ok, code, signal, received: got.length, childOut }));
  process.exit(ok && code === 0 ? 0 : 1);
});
