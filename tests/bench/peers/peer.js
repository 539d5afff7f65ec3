// Node peer server for subprocess_bench (see tests/bench/bench.hpp for the protocol).
//
// Requests arrive on fd 3, replies leave on fd 4, one line each. Started with
// --touch-mib N it first fills N MiB of its own memory, so a "2 GiB parent" is a
// 2 GiB Node process. Run with --expose-gc so captures do not pile up garbage.
'use strict';
const fs = require('fs');
const readline = require('readline');
const { spawn, execFileSync } = require('child_process');
const { Transform } = require('stream');

const REQ_FD = 3;
const REP_FD = 4;

function statusBytes(field) {
  const m = fs.readFileSync('/proc/self/status', 'utf8').match(new RegExp('^' + field + ':\\s+(\\d+) kB', 'm'));
  return m ? Number(m[1]) * 1024 : 0;
}

function resetPeakRss() {
  try { fs.writeFileSync('/proc/self/clear_refs', '5'); } catch (e) { /* not available */ }
}

function onceExit(child) {
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code, signal) => resolve({ code, signal }));
  });
}

// spawn, one at a time, each awaited to its 'exit' event (not spawnSync).
async function spawnBench(iterations) {
  const samples = [];
  for (let i = 0; i < iterations; i++) {
    const t0 = process.hrtime.bigint();
    const { code } = await onceExit(spawn('/bin/true', [], { stdio: 'inherit' }));
    samples.push(String(process.hrtime.bigint() - t0));
    if (code !== 0) throw new Error('/bin/true failed');
  }
  return samples;
}

// stdout and stderr piped; 'data' events collect Buffers; one Buffer at the end.
async function captureBench(iterations, n) {
  const samples = [];
  for (let i = 0; i < iterations; i++) {
    if (global.gc) global.gc();
    resetPeakRss();
    const before = statusBytes('VmRSS');
    const t0 = process.hrtime.bigint();
    const child = spawn('head', ['-c', String(n), '/dev/zero'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out = [], err = [];
    child.stdout.on('data', (b) => out.push(b));
    child.stderr.on('data', (b) => err.push(b));
    const closed = new Promise((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (code) => resolve(code));
    });
    const code = await closed;
    let result = Buffer.concat(out);
    const ns = process.hrtime.bigint() - t0;
    const growth = Math.max(statusBytes('VmHWM') - before, 1);
    const got = result.length;
    result = null;
    out.length = 0;
    if (code !== 0) throw new Error('head failed');
    if (got !== n) throw new Error(`captured ${got} bytes, expected ${n}`);
    samples.push(`${ns}:${growth}`);
  }
  return samples;
}

// ---- ipc: fork() IPC in json mode, one message in flight.

class Skipped extends Error {}

// [parent CPU, child CPU] for "split" (the first two CPUs allowed) or "same".
function affinity(pid) {
  const out = execFileSync('taskset', ['-p', '-c', String(pid)], { encoding: 'utf8' });
  return out.slice(out.lastIndexOf(':') + 1).trim();  // "0,1" or "0-3"
}
function cpuList(list) {
  const cpus = [];
  for (const part of list.split(',')) {
    const [a, b] = part.split('-').map(Number);
    for (let c = a; c <= (b === undefined ? a : b); c++) cpus.push(c);
  }
  return cpus;
}
function placement(arg) {
  const cpus = cpuList(affinity(process.pid));
  if (arg === 'same') return [cpus[0], cpus[0]];
  if (arg === 'split') {
    if (cpus.length < 2) throw new Skipped('needs 2 CPUs');
    return [cpus[0], cpus[1]];
  }
  throw new Error('unknown placement ' + arg);
}
// Pins every thread of this process (V8's and libuv's too).
function pinSelf(list) {
  execFileSync('taskset', ['-a', '-p', '-c', String(list), String(process.pid)], { stdio: 'ignore' });
}

// The child: node peer.js --ipc-child. Echoes, or answers a big message's length.
function ipcChild() {
  process.on('message', (m) => {
    if (m.data !== undefined) process.send({ got: m.data.length });
    else process.send(m);
  });
}

function forkPinned(cpu) {
  const child = spawn('taskset', ['-c', String(cpu), process.execPath, __filename, '--ipc-child'],
                      { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const exited = new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code, signal) => resolve({ code, signal }));
  });
  return { child, exited };
}

function roundTrips(child, n) {
  return new Promise((resolve) => {
    let i = 0;
    const payload = '0123456789abcdef';
    const on = () => {
      if (++i === n) {
        child.off('message', on);
        resolve();
      } else {
        child.send({ s: i, p: payload });
      }
    };
    child.on('message', on);
    child.send({ s: 0, p: payload });
  });
}

async function withPlacement(arg, fn) {
  const [parentCpu, childCpu] = placement(arg);
  const old = affinity(process.pid);
  pinSelf(parentCpu);
  try {
    return await fn(childCpu);
  } finally {
    pinSelf(old);
  }
}

async function ipcFork(iterations, perBatch, arg) {
  return withPlacement(arg, async (childCpu) => {
    const { child, exited } = forkPinned(childCpu);
    try {
      await roundTrips(child, 200);
      const samples = [];
      for (let k = 0; k < iterations; k++) {
        const t0 = process.hrtime.bigint();
        await roundTrips(child, perBatch);
        samples.push(String(process.hrtime.bigint() - t0));
      }
      return samples;
    } finally {
      child.disconnect();
      await exited;
    }
  });
}

async function ipcBig(iterations, n) {
  return withPlacement('split', async (childCpu) => {
    const { child, exited } = forkPinned(childCpu);
    try {
      const data = 'x'.repeat(n);
      const samples = [];
      for (let k = 0; k < iterations; k++) {
        const t0 = process.hrtime.bigint();
        const answer = await new Promise((resolve) => {
          child.once('message', resolve);
          child.send({ data });
        });
        samples.push(String(process.hrtime.bigint() - t0));
        if (answer.got !== n) throw new Error(`the child got ${answer.got} bytes, expected ${n}`);
      }
      return samples;
    } finally {
      child.disconnect();
      await exited;
    }
  });
}

// ---- pipeline: head | cat | [identity Transform here] | cat | cat, counted here.
async function pipelineTransform(iterations, n) {
  const samples = [];
  const closed = (child, ev) => new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on(ev, (code, signal) => resolve({ code, signal }));
  });
  for (let i = 0; i < iterations; i++) {
    if (global.gc) global.gc();
    resetPeakRss();
    const before = statusBytes('VmRSS');
    const t0 = process.hrtime.bigint();
    const head = spawn('head', ['-c', String(n), '/dev/zero'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const cat1 = spawn('cat', [], { stdio: [head.stdout, 'pipe', 'inherit'] });
    head.stdout.destroy();  // cat1 has its own copy of the pipe
    const cat2 = spawn('cat', [], { stdio: ['pipe', 'pipe', 'inherit'] });
    const cat3 = spawn('cat', [], { stdio: [cat2.stdout, 'pipe', 'inherit'] });
    cat2.stdout.destroy();
    const done = [closed(head, 'exit'), closed(cat1, 'close'), closed(cat2, 'close'), closed(cat3, 'close')];
    const identity = new Transform({ transform(chunk, encoding, callback) { callback(null, chunk); } });
    cat1.stdout.pipe(identity).pipe(cat2.stdin);
    let count = 0;
    cat3.stdout.on('data', (b) => { count += b.length; });
    const statuses = await Promise.all(done);
    const ns = process.hrtime.bigint() - t0;
    const growth = Math.max(statusBytes('VmHWM') - before, 1);
    if (statuses.some((s) => s.code !== 0)) throw new Error('a stage failed: ' + JSON.stringify(statuses));
    if (count !== n) throw new Error(`counted ${count} bytes, expected ${n}`);
    samples.push(`${ns}:${growth}`);
  }
  return samples;
}

// A pool worker: squares {id, n}, answers {id, result}.
function poolWorker() {
  process.on('message', (m) => process.send({ id: m.id, result: m.n * m.n }));
}

// 2 fork()ed workers; all n tasks sent up front, round robin; answers matched by id.
async function poolBench(iterations, n) {
  const { fork } = require('child_process');
  const workers = [0, 1].map(() => fork(__filename, ['--pool-worker'], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] }));
  const run = (count) => new Promise((resolve, reject) => {
    const pending = new Map();
    let total = 0;
    const onMessage = (m) => {
      if (!pending.delete(m.id)) return reject(new Error('unexpected answer ' + m.id));
      total += m.result;
      if (pending.size === 0) {
        for (const w of workers) w.off('message', onMessage);
        resolve(total);
      }
    };
    for (const w of workers) w.on('message', onMessage);
    for (let i = 0; i < count; i++) {
      pending.set(i, true);
      workers[i % 2].send({ id: i, n: i });
    }
  });
  try {
    await run(1000);  // warm up
    let expected = 0;
    for (let i = 0; i < n; i++) expected += i * i;
    const samples = [];
    for (let it = 0; it < iterations; it++) {
      const t0 = process.hrtime.bigint();
      const total = await run(n);
      samples.push(String(process.hrtime.bigint() - t0));
      if (total !== expected) throw new Error('wrong sum of squares');
    }
    return samples;
  } finally {
    for (const w of workers) w.disconnect();
  }
}

const impls = {
  'spawn/spawn': spawnBench,
  'pool/fork2': poolBench,
  'capture/data_events': captureBench,
  'ipc/fork': ipcFork,
  'ipc/big': ipcBig,
  'pipeline/transform': pipelineTransform,
};

async function main() {
  const args = process.argv.slice(2);
  if (args[0] === '--ipc-child') return ipcChild();
  const touchMib = args[0] === '--touch-mib' ? Number(args[1]) : 0;
  // Fill the memory for real, in 256 MiB pieces outside the V8 heap.
  const held = [];
  for (let left = touchMib; left > 0; left -= 256) {
    held.push(Buffer.allocUnsafeSlow(Math.min(left, 256) * 1024 * 1024).fill(1));
  }
  const reply = (s) => fs.writeSync(REP_FD, s.replace(/\n/g, ' ') + '\n');
  reply(`ready ${process.pid} Node ${process.version}`);
  const rl = readline.createInterface({ input: fs.createReadStream(null, { fd: REQ_FD }) });
  for await (const line of rl) {
    const parts = line.trim().split(/\s+/);
    if (parts.length < 3) continue;
    const fn = impls[parts[0]];
    if (!fn) {
      reply('fail unknown implementation ' + parts[0]);
      continue;
    }
    try {
      reply('ok ' + (await fn(Number(parts[1]), Number(parts[2]), parts[3])).join(' '));
    } catch (e) {
      reply((e instanceof Skipped ? 'skip ' : 'fail ') + e.message);
    }
  }
  held.length = 0;
}

if (process.argv[2] === '--pool-worker') {
  poolWorker();
} else {
  main().catch((e) => { process.stderr.write(String(e.stack) + '\n'); process.exit(1); });
}
