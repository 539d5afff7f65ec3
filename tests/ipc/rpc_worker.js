// A JSON-RPC 2.0 worker written in plain Node: the shape sp::ipc::client speaks.
// Requests arrive with process.on('message'), answers leave with process.send().
'use strict';

const methods = {
  add: (p) => p.a + p.b,
  divide: (p) => {
    if (p.b === 0) {
      const e = new Error('division by zero');
      e.code = -32602;
      throw e;
    }
    return p.a / p.b;
  },
  echo: (p) => p,
  sleep: (p) => new Promise((resolve) => setTimeout(() => resolve(p.ms), p.ms)),
  exit: (p) => process.exit(p.code),
  'rpc.heartbeat': () => ({ time: Date.now(), pid: process.pid }),
};

process.on('message', async (req) => {
  if (req === null || typeof req !== 'object' || typeof req.method !== 'string') return;
  const reply = { jsonrpc: '2.0', id: req.id };
  const fn = methods[req.method];
  try {
    if (fn === undefined) {
      reply.error = { code: -32601, message: `Method not found: '${req.method}'` };
    } else {
      reply.result = await fn(req.params);
    }
  } catch (e) {
    reply.error = { code: typeof e.code === 'number' ? e.code : -32000, message: e.message };
  }
  if (req.id !== undefined) process.send(reply);  // notifications get no answer
});
