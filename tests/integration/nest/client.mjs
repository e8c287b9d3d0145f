// A real NestJS 12 ClientProxy that calls a server implementing sum, stream,
// fail and the order_placed event (see server.mjs), configured by the same env
// vars. Prints exactly one JSON line on stdout, then exits:
//   {"sum":<reply>,"stream":[<items>],"fail":<err value>,"emitted":true}   exit 0
//   (plus "wild" with NEST_WILDCARD_SEND, "none" and "ticks" with NEST_PARITY=1)
//   {"error":"<message>"}                                                  exit 1
// Nest's logs go to stderr.
import { Logger } from '@nestjs/common';
import { ClientProxyFactory } from '@nestjs/microservices';
import { firstValueFrom, lastValueFrom, map, timeout, toArray, TimeoutError } from 'rxjs';
import { IS_KAFKA, PATTERNS, StderrLogger, WILDCARD_SEND, transportConfig, writeLine } from './common.mjs';

Logger.overrideLogger(new StderrLogger());

const TIMEOUT_MS = Number(process.env.NEST_TIMEOUT_MS ?? 10000);
const SUM_DATA = [1, 2, 3, 4];
const EVENT_DATA = { orderId: 'ord_42', amount: 1999 };

function describe(err) {
  if (err instanceof Error) return err.name === 'Error' ? err.message : `${err.name}: ${err.message}`;
  try {
    return JSON.stringify(err);
  } catch {
    return String(err);
  }
}

function withStep(step, promise) {
  return promise.catch((err) => {
    throw new Error(`${step}: ${describe(err)}`);
  });
}

/** The err value a failing request produced, as JSON-serializable data. */
function errValue(err) {
  if (err instanceof TimeoutError) throw new Error(`fail: timed out after ${TIMEOUT_MS} ms`);
  if (err instanceof Error) return { name: err.name, message: err.message };
  return err;
}

const client = ClientProxyFactory.create(transportConfig('client'));

async function main() {
  if (IS_KAFKA) {
    const parity = process.env.NEST_PARITY === '1' ? [PATTERNS.none, PATTERNS.ticks] : [];
    for (const pattern of [PATTERNS.sum, PATTERNS.stream, PATTERNS.fail, ...parity]) {
      client.subscribeToResponseOf(pattern);
    }
  }
  await withStep('connect', client.connect());

  const sum = await withStep(
    'sum',
    lastValueFrom(client.send(PATTERNS.sum, SUM_DATA).pipe(timeout(TIMEOUT_MS))),
  );
  const stream = await withStep(
    'stream',
    lastValueFrom(client.send(PATTERNS.stream, {}).pipe(toArray(), timeout(TIMEOUT_MS))),
  );

  let fail;
  try {
    const value = await lastValueFrom(client.send(PATTERNS.fail, {}).pipe(timeout(TIMEOUT_MS)), {
      defaultValue: undefined,
    });
    throw new Error(`fail: expected an error, got ${describe(value)}`);
  } catch (err) {
    if (err instanceof Error && err.message.startsWith('fail: ')) throw err;
    fail = errValue(err);
  }

  // emit() is hot; defaultValue because it completes without emitting on some transports.
  await withStep(
    'emit',
    lastValueFrom(client.emit(PATTERNS.event, EVENT_DATA).pipe(timeout(TIMEOUT_MS)), {
      defaultValue: undefined,
    }),
  );

  const result = { sum, stream, fail, emitted: true };
  if (WILDCARD_SEND) {
    result.wild = await withStep(
      'wild',
      firstValueFrom(client.send(WILDCARD_SEND, 'w').pipe(timeout(TIMEOUT_MS))),
    );
  }
  if (process.env.NEST_PARITY !== '1') return result;

  // What a caller that moves to polybus one service at a time would notice: a handler
  // returning nothing (firstValueFrom must get a value, not EmptyError), and when each item
  // of a slow stream arrives (epoch ms, compared with when the server yielded it).
  const none = await withStep(
    'none',
    firstValueFrom(client.send(PATTERNS.none, {}).pipe(timeout(TIMEOUT_MS))),
  );
  const ticks = await withStep(
    'ticks',
    lastValueFrom(
      client.send(PATTERNS.ticks, {}).pipe(
        map((item) => ({ item, at: Date.now() })),
        toArray(),
        timeout(TIMEOUT_MS),
      ),
    ),
  );
  return { ...result, none, ticks };
}

let result;
let code = 0;
try {
  result = await main();
} catch (err) {
  result = { error: describe(err) };
  code = 1;
}
try {
  await Promise.race([client.close(), new Promise((resolve) => setTimeout(resolve, 5000).unref())]);
} catch (err) {
  console.error('client.mjs: error while closing', err);
}
await writeLine(result);
process.exit(code);
