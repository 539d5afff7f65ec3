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
    default:
      process.send(m);
  }
});
