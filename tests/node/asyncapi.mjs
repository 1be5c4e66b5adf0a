// Validates contracts/asyncapi.yaml with the AsyncAPI parser (run by
// scripts/test): the document, its operations and every message payload,
// with the references into contracts/messages.schema.json resolved from
// the file system. Prints each diagnostic; exits 1 on any error.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Parser, fromFile } from "@asyncapi/parser";

const path = fileURLToPath(new URL("../../contracts/asyncapi.yaml", import.meta.url));
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, path).parse();
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics) {
  const where = d.path?.join("/") ?? "";
  console.log(`${["error", "warning", "info", "hint"][d.severity] ?? d.severity} ${d.code} ${where}: ${d.message}`);
}
if (errors.length > 0 || document === undefined) {
  console.error(`asyncapi: ${errors.length} error(s) in ${path}`);
  process.exit(1);
}
const messages = document.allMessages().length;
const channels = document.allChannels().length;
const resolved = document.allMessages().all().every((m) => {
  const data = m.payload()?.json()?.allOf?.[1]?.properties?.data;
  return data !== undefined && data.$ref === undefined && Object.keys(data).length > 0;
});
if (!resolved) {
  console.error("asyncapi: a message's data schema did not resolve");
  process.exit(1);
}
console.log(`asyncapi: valid (${channels} channels, ${messages} messages; ${readFileSync(path).length} bytes)`);
