// A real NestJS 12 microservice with four handlers (sum, stream, fail, event), plus none
// and ticks with NEST_PARITY=1 and a wildcard handler with NEST_WILDCARD (common.mjs).
// Configured by env vars (see README.md / common.mjs). stdout carries exactly:
//   READY                                   once app.listen() has resolved
//   {"event":"<pattern>","data":<data>}     one line per received event
// Nest's logs go to stderr.
import { Controller, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { EventPattern, MessagePattern, RpcException } from '@nestjs/microservices';
import { concat, ignoreElements, interval, map, take, tap, timer } from 'rxjs';
import { PATTERNS, StderrLogger, TICK_MS, WILDCARD, transportConfig, writeLine } from './common.mjs';

function toNumbers(data) {
  // Kafka: the record value goes through KafkaParser (JSON only when it starts
  // with '[' or '{'), so accept a JSON string as well as an array.
  let value = data;
  if (typeof value === 'string') value = JSON.parse(value);
  if (!Array.isArray(value)) throw new RpcException({ code: 'E_BAD_INPUT', message: 'expected an array' });
  return value.map(Number);
}

class InteropController {
  sum(data) {
    return toNumbers(data).reduce((a, b) => a + b, 0);
  }

  stream() {
    // 1, 2, 3 on later ticks, then completion 100 ms later, so the completion
    // travels as its own {"isDisposed":true} packet. (Nest merges it into the
    // last packet if that one is still queued, e.g. behind a slow Kafka send.)
    return concat(
      interval(10).pipe(take(3), map((i) => i + 1)),
      timer(100).pipe(ignoreElements()),
    );
  }

  fail() {
    throw new RpcException({ code: 'E_TEST', message: 'boom' });
  }

  async orderPlaced(data) {
    await writeLine({ event: PATTERNS.event, data });
  }

  none() {
    return null;
  }

  ticks() {
    // 0, 1, 2, one every TICK_MS; each emission is reported as an event line with its time,
    // so that a caller can tell how late it got each item.
    return interval(TICK_MS).pipe(
      take(3),
      tap((item) => void writeLine({ event: PATTERNS.ticks, data: { item, at: Date.now() } })),
    );
  }

  wild(data) {
    return { wild: data };
  }
}

// No decorator syntax in plain Node: apply the decorators by hand.
function decorateMethod(cls, name, ...decorators) {
  const descriptor = Object.getOwnPropertyDescriptor(cls.prototype, name);
  Reflect.decorate(decorators, cls.prototype, name, descriptor);
}
decorateMethod(InteropController, 'sum', MessagePattern(PATTERNS.sum));
decorateMethod(InteropController, 'stream', MessagePattern(PATTERNS.stream));
decorateMethod(InteropController, 'fail', MessagePattern(PATTERNS.fail));
decorateMethod(InteropController, 'orderPlaced', EventPattern(PATTERNS.event));
if (process.env.NEST_PARITY === '1') {
  decorateMethod(InteropController, 'none', MessagePattern(PATTERNS.none));
  decorateMethod(InteropController, 'ticks', MessagePattern(PATTERNS.ticks));
}
if (WILDCARD) decorateMethod(InteropController, 'wild', MessagePattern(WILDCARD));
Reflect.decorate([Controller()], InteropController);

class AppModule {}
Reflect.decorate([Module({ controllers: [InteropController] })], AppModule);

const app = await NestFactory.createMicroservice(AppModule, {
  ...transportConfig('server'),
  logger: new StderrLogger(),
});

let closing = false;
async function shutdown(signal) {
  if (closing) return;
  closing = true;
  console.error(`server.mjs: ${signal}, closing`);
  const force = setTimeout(() => process.exit(0), 5000);
  force.unref();
  try {
    await app.close();
  } catch (err) {
    console.error('server.mjs: error while closing', err);
  }
  process.exit(0);
}
process.on('SIGTERM', () => void shutdown('SIGTERM'));
process.on('SIGINT', () => void shutdown('SIGINT'));

await app.listen();
await writeLine('READY');
