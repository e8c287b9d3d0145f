// NestJS ClientProxy driving the same scenarios as bench/common.py (drive_rpc,
// drive_events): prints one JSON line per scenario.
import net from 'node:net';
import { setImmediate as yieldToLoop, setTimeout as sleep } from 'node:timers/promises';
import { cfg, EVENT, RPC, require, transportConfig } from './common.mjs';

const { Logger } = require('@nestjs/common');
const { ClientProxyFactory } = require('@nestjs/microservices');
const { lastValueFrom } = require('rxjs');

Logger.overrideLogger(['error', 'warn']);
const PAYLOAD = { a: [1, 2, 3] };
const EXPECTED = 6;
const MAX_BACKLOG = 10000;
const clock = () => process.hrtime.bigint();
// Nest's Kafka transport delivers a number reply as its text ("6").
const correct = (result) => result === EXPECTED || (cfg.transport === 'kafka' && result === '6');

function percentile(sorted, q) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))))];
}

function window(latencies, seconds, count = latencies.length) {
  const lat = Float64Array.from(latencies).sort();
  return {
    n: count,
    seconds,
    ops: seconds > 0 ? count / seconds : 0,
    p50_us: percentile(lat, 0.5) / 1000,
    p99_us: percentile(lat, 0.99) / 1000,
  };
}

const cpuSeconds = () => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
};

/** CPU time of this process and of the server over one window (bench/common.py CpuMeter). */
class CpuMeter {
  constructor(control) {
    this.control = control;
  }

  async start() {
    this.client = cpuSeconds();
    this.server = await this.control.cpu();
  }

  async stop(ops) {
    const client = cpuSeconds() - this.client;
    const server = (await this.control.cpu()) - this.server;
    const per = ops ? 1e6 / ops : 0;
    return { client_cpu_us: client * per, server_cpu_us: server * per };
  }
}

class Control {
  constructor(port) {
    this.socket = net.connect(port, '127.0.0.1');
    this.buffer = '';
    this.waiting = [];
    this.socket.setEncoding('utf8');
    this.socket.on('data', (chunk) => {
      this.buffer += chunk;
      let index;
      while ((index = this.buffer.indexOf('\n')) >= 0) {
        const line = this.buffer.slice(0, index);
        this.buffer = this.buffer.slice(index + 1);
        this.waiting.shift()(Number(line));
      }
    });
  }

  wait(n, seconds = 30) {
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      this.socket.write(`wait ${n} ${seconds * 1000}\n`);
    });
  }

  cpu() {
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      this.socket.write('cpu\n');
    });
  }

  close() {
    this.socket.end();
  }
}

const client = ClientProxyFactory.create(transportConfig());
const call = (data) => lastValueFrom(client.send(RPC, data));
// On TCP, NATS and RMQ, emit() completes on a microtask (the write is only buffered):
// without a turn of the event loop per emit, the workers would never let the socket send
// or the timer fire. One setImmediate per emit (all workers' in the same turn) is cheap.
const emit = async (data) => {
  await lastValueFrom(client.emit(EVENT, data), { defaultValue: undefined });
  await yieldToLoop();
};

async function driveRpc(concurrency, plan, control) {
  let bucket = [];
  let stop = false;
  const errors = [];
  async function worker() {
    while (!stop) {
      const t = clock();
      let result;
      try {
        result = await call(PAYLOAD);
      } catch (err) {
        errors.push(String(err?.message ?? err));
        continue;
      }
      bucket.push(Number(clock() - t));
      if (!correct(result)) throw new Error(`bad reply ${JSON.stringify(result)}`);
    }
  }
  const workers = Array.from({ length: concurrency }, worker);
  const runs = [];
  const cpu = new CpuMeter(control);
  await sleep(plan.warmup * 1000);
  for (let i = 0; i < plan.runs; i += 1) {
    await cpu.start();
    const current = (bucket = []);
    const t0 = performance.now();
    await sleep(plan.duration * 1000);
    bucket = [];
    const elapsed = (performance.now() - t0) / 1000;
    runs.push({ ...window(current, elapsed), ...(await cpu.stop(current.length)) });
  }
  stop = true;
  await Promise.all(workers);
  return { runs, errors: errors.length, first_error: errors[0] ?? null };
}

async function driveEvents(concurrency, plan, control) {
  // As bench/common.py drive_events: emitters pause while more than MAX_BACKLOG events
  // are on their way (the server's count is polled every 20 ms).
  let total = await control.wait(0);
  const runs = [];
  const cpu = new CpuMeter(control);
  for (let index = 0; index <= plan.runs; index += 1) {
    const latencies = [];
    let stop = false;
    let open = true;
    let reopen = null;
    let closed = null; // one promise all paused workers wait on
    const gate = () => (closed ??= new Promise((resolve) => (reopen = resolve)));
    const release = () => {
      if (reopen) reopen();
      reopen = null;
      closed = null;
    };
    async function worker() {
      while (!stop) {
        if (!open) {
          await gate();
          continue;
        }
        const t = clock();
        await emit(PAYLOAD);
        latencies.push(Number(clock() - t));
      }
    }
    async function throttle() {
      while (!stop) {
        open = total + latencies.length - (await control.wait(0)) <= MAX_BACKLOG;
        if (open) release();
        await sleep(20);
      }
    }
    await cpu.start();
    const t0 = performance.now();
    const workers = Array.from({ length: concurrency }, worker);
    const throttling = throttle();
    await sleep((index === 0 ? plan.warmup : plan.duration) * 1000);
    stop = true;
    await throttling;
    open = true;
    release();
    await Promise.all(workers);
    const sent = latencies.length;
    total += sent;
    const received = await control.wait(total);
    const elapsed = (performance.now() - t0) / 1000;
    const lost = total - received;
    total = received;
    const usage = await cpu.stop(sent);
    if (index) runs.push({ ...window(latencies, elapsed, sent - lost), ...usage, lost });
  }
  return { runs, errors: runs.reduce((s, r) => s + r.lost, 0), first_error: null };
}

if (cfg.transport === 'kafka') client.subscribeToResponseOf(RPC);
await client.connect();
const control = new Control(cfg.ctl_port);
const check = await call(PAYLOAD);
if (!correct(check)) throw new Error(`bad reply ${JSON.stringify(check)}`);
for (const [scenario, concurrency] of cfg.scenarios) {
  const started = performance.now();
  let result;
  try {
    result =
      scenario === 'rpc'
        ? await driveRpc(concurrency, cfg.plan, control)
        : await driveEvents(concurrency, cfg.plan, control);
  } catch (err) {
    result = { runs: [], errors: 1, first_error: String(err?.message ?? err) };
  }
  const wall_s = Math.round(performance.now() - started) / 1000;
  process.stdout.write(`${JSON.stringify({ ...result, scenario, concurrency, wall_s })}\n`);
}
control.close();
await Promise.race([client.close(), sleep(5000)]);
process.exit(0);
