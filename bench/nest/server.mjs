// NestJS microservice: `${prefix}.sum` → sum of data.a, `${prefix}.ev` counted.
// Prints `READY <control port>`; the control port answers `wait <n> <ms>` with the
// number of events counted once it reaches n (or after ms) and `cpu` with the process's
// CPU seconds, like bench/common.py.
import net from 'node:net';
import { cfg, EVENT, RPC, require, transportConfig } from './common.mjs';

const { Controller, Module } = require('@nestjs/common');
const { NestFactory } = require('@nestjs/core');
const { EventPattern, MessagePattern } = require('@nestjs/microservices');

let count = 0;
let target = -1;
let notify = null;

class BenchController {
  sum(data) {
    return data.a.reduce((x, y) => x + y, 0);
  }

  counted() {
    count += 1;
    if (count === target && notify) notify();
  }
}

function decorate(cls, name, decorator) {
  const descriptor = Object.getOwnPropertyDescriptor(cls.prototype, name);
  Reflect.decorate([decorator], cls.prototype, name, descriptor);
}
decorate(BenchController, 'sum', MessagePattern(RPC));
decorate(BenchController, 'counted', EventPattern(EVENT));
Reflect.decorate([Controller()], BenchController);
class AppModule {}
Reflect.decorate([Module({ controllers: [BenchController] })], AppModule);

function waitFor(n, ms) {
  if (count >= n) return Promise.resolve(count);
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      notify = null;
      target = -1;
      resolve(count);
    };
    const timer = setTimeout(done, ms);
    target = n;
    notify = done;
  });
}

const control = net.createServer((socket) => {
  let buffer = '';
  socket.on('data', async (chunk) => {
    buffer += chunk;
    let index;
    while ((index = buffer.indexOf('\n')) >= 0) {
      const [command, n, ms] = buffer.slice(0, index).split(' ');
      buffer = buffer.slice(index + 1);
      if (command === 'cpu') {
        const { user, system } = process.cpuUsage();
        socket.write(`${(user + system) / 1e6}\n`);
      } else {
        socket.write(`${await waitFor(Number(n), Number(ms))}\n`);
      }
    }
  });
  socket.on('error', () => {});
});

const app = await NestFactory.createMicroservice(AppModule, {
  ...transportConfig(),
  logger: ['error', 'warn'],
});
await app.listen();
await new Promise((resolve) => control.listen(0, '127.0.0.1', resolve));
process.stdout.write(`READY ${control.address().port}\n`);

let closing = false;
async function shutdown() {
  if (closing) return;
  closing = true;
  setTimeout(() => process.exit(0), 5000).unref();
  control.close();
  await app.close().catch(() => {});
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
