// Shared by server.mjs and client.mjs: env var contract, transport options,
// pattern names and a logger that keeps stdout machine-readable.
import 'reflect-metadata';
import { ConsoleLogger } from '@nestjs/common';
import { Transport } from '@nestjs/microservices';

// Anything written through console.* goes to stderr: stdout carries only the
// lines this harness prints on purpose (READY, event lines, the client result).
for (const name of ['log', 'info', 'warn', 'debug', 'trace']) {
  console[name] = (...args) => console.error(...args);
}

/** Nest's ConsoleLogger, but every level is written to stderr. */
export class StderrLogger extends ConsoleLogger {
  constructor(options = {}) {
    // No ANSI colours unless NEST_LOG_COLORS=1: stderr ends up in test failure messages.
    super({ colors: process.env.NEST_LOG_COLORS === '1', ...options });
  }

  printMessages(messages, context, logLevel, _writeStreamType, ...rest) {
    return super.printMessages(messages, context, logLevel, 'stderr', ...rest);
  }
}

/** Writes one line to stdout and resolves once it has been flushed. */
export function writeLine(obj) {
  const text = typeof obj === 'string' ? obj : JSON.stringify(obj);
  return new Promise((resolve) => process.stdout.write(`${text}\n`, () => resolve()));
}

const env = process.env;
// Silence kafkajs' v2 partitioner notice (stderr noise only).
env.KAFKAJS_NO_PARTITIONER_WARNING ??= '1';

export const TRANSPORT_NAME = (env.NEST_TRANSPORT ?? 'TCP').toUpperCase();
export const PREFIX = env.NEST_PREFIX ?? '';
export const IS_KAFKA = TRANSPORT_NAME === 'KAFKA';

if (!['TCP', 'REDIS', 'NATS', 'RMQ', 'KAFKA', 'MQTT'].includes(TRANSPORT_NAME)) {
  throw new Error(`NEST_TRANSPORT must be TCP|REDIS|NATS|RMQ|KAFKA|MQTT, got ${TRANSPORT_NAME}`);
}
if (IS_KAFKA && !/^[a-zA-Z0-9._-]*$/.test(PREFIX)) {
  throw new Error(`NEST_PREFIX must match [a-zA-Z0-9._-]* on Kafka, got ${PREFIX}`);
}

/**
 * The patterns, as given to the decorators / ClientProxy.send (`none` and `ticks` only
 * with NEST_PARITY=1).
 * Kafka: dotted string topics; elsewhere `sum` is an object pattern.
 */
export const PATTERNS = IS_KAFKA
  ? {
      sum: `${PREFIX}.sum`,
      stream: `${PREFIX}.stream`,
      fail: `${PREFIX}.fail`,
      event: `${PREFIX}.order_placed`,
      none: `${PREFIX}.none`,
      ticks: `${PREFIX}.ticks`,
    }
  : {
      sum: { cmd: `${PREFIX}sum` },
      stream: `${PREFIX}stream`,
      fail: `${PREFIX}fail`,
      event: `${PREFIX}order_placed`,
      none: `${PREFIX}none`,
      ticks: `${PREFIX}ticks`,
    };

/** Milliseconds between the items of the `ticks` stream (NEST_PARITY=1). */
export const TICK_MS = 100;

/**
 * With NEST_WILDCARD=W the server also handles the wildcard pattern W (a string, in the
 * transport's wildcard syntax) and answers `{wild: <data>}`; with NEST_WILDCARD_SEND=S the
 * client also sends 'w' to the concrete pattern S and reports the answer as `wild`.
 */
export const WILDCARD = env.NEST_WILDCARD;
export const WILDCARD_SEND = env.NEST_WILDCARD_SEND;

/** NEST_OPTIONS: a JSON object merged over the transport options (e.g. RMQ `exchange`). */
const EXTRA_OPTIONS = env.NEST_OPTIONS ? JSON.parse(env.NEST_OPTIONS) : {};

function redisOptions(url) {
  const u = new URL(url);
  const opts = { host: u.hostname || '127.0.0.1', port: Number(u.port || 6379) };
  if (u.username) opts.username = decodeURIComponent(u.username);
  if (u.password) opts.password = decodeURIComponent(u.password);
  const db = u.pathname.replace(/^\//, '');
  if (db) opts.db = Number(db);
  return opts;
}

/**
 * Transport options for `createMicroservice` / `ClientProxyFactory.create`.
 * `role` is 'server' or 'client' (only used for Kafka client/group ids).
 */
export function transportConfig(role) {
  const config = baseConfig(role);
  return { ...config, options: { ...config.options, ...EXTRA_OPTIONS } };
}

function baseConfig(role) {
  switch (TRANSPORT_NAME) {
    case 'TCP':
      return {
        transport: Transport.TCP,
        options: {
          host: env.NEST_HOST ?? '127.0.0.1',
          port: Number(env.NEST_PORT ?? 3000),
        },
      };
    case 'REDIS':
      return {
        transport: Transport.REDIS,
        options: redisOptions(env.NEST_URL ?? 'redis://127.0.0.1:6379'),
      };
    case 'NATS':
      return {
        transport: Transport.NATS,
        options: { servers: [env.NEST_URL ?? 'nats://127.0.0.1:4222'] },
      };
    case 'RMQ':
      return {
        transport: Transport.RMQ,
        options: {
          urls: [env.NEST_URL ?? 'amqp://guest:guest@127.0.0.1:5672'],
          queue: env.NEST_QUEUE ?? `${PREFIX}queue`,
        },
      };
    case 'MQTT':
      return {
        transport: Transport.MQTT,
        options: { url: env.NEST_URL ?? 'mqtt://127.0.0.1:1883' },
      };
    case 'KAFKA': {
      // Nest appends '-server' / '-client' to both ids. A per-prefix base keeps
      // concurrent tests out of each other's consumer groups; NEST_KAFKA_CLIENT_ID
      // / NEST_KAFKA_GROUP_ID override the base (e.g. 'nestjs-consumer' /
      // 'nestjs-group' to get Nest's defaults).
      const base = PREFIX ? `nestjs-${PREFIX}` : 'nestjs';
      return {
        transport: Transport.KAFKA,
        options: {
          client: {
            brokers: (env.NEST_BROKERS ?? '127.0.0.1:19092').split(',').map((b) => b.trim()).filter(Boolean),
            clientId: env.NEST_KAFKA_CLIENT_ID ?? `${base}-consumer`,
          },
          // Test-speed tuning (no effect on the wire format): kafkajs' defaults
          // (sessionTimeout 30 s, maxWaitTimeInMs 5 s) make a group join take
          // ~15 s and every reply up to 5 s on tansu. 6000 is Kafka's minimum
          // session timeout (group.min.session.timeout.ms).
          consumer: {
            groupId: env.NEST_KAFKA_GROUP_ID ?? `${base}-group`,
            sessionTimeout: Number(env.NEST_KAFKA_SESSION_TIMEOUT_MS ?? 6000),
            heartbeatInterval: 1000,
            maxWaitTimeInMs: Number(env.NEST_KAFKA_MAX_WAIT_MS ?? 100),
          },
        },
      };
    }
  }
  throw new Error(`unreachable: ${role}`);
}
