// Parses and validates the AsyncAPI document on stdin with the reference parser (the
// official JSON schema of the document's version, then the parser's own rules). Prints
// {"valid": bool, "version": ..., "diagnostics": [{severity, code, message, path}]};
// exits 0 when valid, 1 when the document has errors, 2 when it could not be read.
import { Parser } from "@asyncapi/parser";

const SEVERITY = ["error", "warning", "info", "hint"];

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

try {
  const { document, diagnostics } = await new Parser().parse(await readStdin());
  const report = diagnostics.map((d) => ({
    severity: SEVERITY[d.severity] ?? String(d.severity),
    code: d.code,
    message: d.message,
    path: d.path.join("/"),
  }));
  const valid = document !== undefined && !report.some((d) => d.severity === "error");
  console.log(JSON.stringify({ valid, version: document?.version() ?? null, diagnostics: report }));
  process.exit(valid ? 0 : 1);
} catch (error) {
  console.error(String(error?.stack ?? error));
  process.exit(2);
}
