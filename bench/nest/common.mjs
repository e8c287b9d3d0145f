// Shared by server.mjs and client.mjs: the bench config (argv[2], JSON, see
// bench/common.py Config), NestJS loaded from the interop tests' node_modules
// (tests/integration/nest: `npm ci` there; no second install), transport options.
import { createRequire } from 'node:module';

export const require = createRequire(
  new URL('../../tests/integration/nest/package.json', import.meta.url),
);
require('reflect-metadata');
const { Transport } = require('@nestjs/microservices');

// stdout carries only READY / result lines; everything else goes to stderr.
for (const name of ['log', 'info', 'warn', 'debug', 'trace']) {
  console[name] = (...args) => console.error(...args);
}
process.env.KAFKAJS_NO_PARTITIONER_WARNING ??= '1';

export const cfg = JSON.parse(process.argv[2]);
export const RPC = `${cfg.prefix}.sum`;
export const EVENT = `${cfg.prefix}.ev`;

/** Options for createMicroservice / ClientProxyFactory.create, as the interop tests use. */
export function transportConfig() {
  switch (cfg.transport) {
    case 'tcp':
      return { transport: Transport.TCP, options: { host: '127.0.0.1', port: cfg.tcp_port } };
    case 'redis': {
      const url = new URL(cfg.redis_url);
      return {
        transport: Transport.REDIS,
        options: { host: url.hostname, port: Number(url.port || 6379) },
      };
    }
    case 'nats':
      return { transport: Transport.NATS, options: { servers: [cfg.nats_url] } };
    case 'rabbitmq':
      return { transport: Transport.RMQ, options: { urls: [cfg.amqp_url], queue: `${cfg.prefix}.q` } };
    case 'mqtt':
      return { transport: Transport.MQTT, options: { url: cfg.mqtt_url } };
    case 'kafka':
      return {
        transport: Transport.KAFKA,
        options: {
          client: { brokers: [cfg.kafka_bootstrap], clientId: cfg.prefix },
          consumer: {
            groupId: cfg.prefix,
            sessionTimeout: cfg.kafka_session_timeout_ms,
            heartbeatInterval: 1000,
            maxWaitTimeInMs: cfg.kafka_fetch_max_wait_ms,
          },
        },
      };
    default:
      throw new Error(`unknown transport ${cfg.transport}`);
  }
}
