// Preloaded by harness.otel_env() (`node --import <this file>`): the OpenTelemetry JS SDK
// with the kafkajs and amqplib instrumentations, the ones that carry W3C `traceparent` in
// message headers. Each span that ends is appended to the file NEST_OTEL_SPANS as one JSON
// line {traceId, spanId, parentSpanId, name, kind, attributes}.
import { appendFileSync } from 'node:fs';
import { register } from 'node:module';
import { SpanKind } from '@opentelemetry/api';
import { registerInstrumentations } from '@opentelemetry/instrumentation';
import { AmqplibInstrumentation } from '@opentelemetry/instrumentation-amqplib';
import { KafkaJsInstrumentation } from '@opentelemetry/instrumentation-kafkajs';
import { SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';

const file = process.env.NEST_OTEL_SPANS;
if (!file) throw new Error('otel.mjs: set NEST_OTEL_SPANS to the file the spans go to');

class FileExporter {
  export(spans, done) {
    for (const span of spans) {
      const { traceId, spanId } = span.spanContext();
      const line = {
        traceId,
        spanId,
        parentSpanId: span.parentSpanContext?.spanId ?? null,
        name: span.name,
        kind: SpanKind[span.kind],
        attributes: span.attributes,
      };
      appendFileSync(file, `${JSON.stringify(line)}\n`);
    }
    done({ code: 0 });
  }

  shutdown() {
    return Promise.resolve();
  }
}

// NestJS 12 is ESM and loads kafkajs with import(), which only import-in-the-middle sees;
// amqplib it require()s (require-in-the-middle).
register('@opentelemetry/instrumentation/hook.mjs', import.meta.url);
const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(new FileExporter())] });
provider.register();
registerInstrumentations({
  tracerProvider: provider,
  instrumentations: [new AmqplibInstrumentation(), new KafkaJsInstrumentation()],
});
