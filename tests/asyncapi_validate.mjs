// Validates AsyncAPI documents with the official parser (@asyncapi/parser, installed by
// `make asyncapi-parser` into .cache/asyncapi-node). Prints one JSON line per document:
// {file, valid, diagnostics: [{severity, code, message, path}]}; a document is invalid when it
// cannot be parsed or has a diagnostic of error severity. Exits 1 if any document is invalid.
// usage: node tests/asyncapi_validate.mjs <prefix holding node_modules> <document.json>...
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';

const [prefix, ...files] = process.argv.slice(2);
if (!prefix || files.length === 0) {
  console.error('usage: asyncapi_validate.mjs <prefix holding node_modules> <document>...');
  process.exit(2);
}
// The parser lives under the prefix, not next to this script: resolve it from there.
const require = createRequire(path.resolve(prefix, 'package.json'));
const { Parser, DiagnosticSeverity } = require('@asyncapi/parser');
const names = { [DiagnosticSeverity.Error]: 'error', [DiagnosticSeverity.Warning]: 'warning',
  [DiagnosticSeverity.Information]: 'information', [DiagnosticSeverity.Hint]: 'hint' };

const parser = new Parser();
let failed = false;
for (const file of files) {
  const { document, diagnostics } = await parser.parse(await readFile(file, 'utf8'), { source: path.resolve(file) });
  const listed = diagnostics.map((d) => ({ severity: names[d.severity] ?? String(d.severity), code: d.code, message: d.message, path: d.path }));
  const valid = document !== undefined && !listed.some((d) => d.severity === 'error');
  failed ||= !valid;
  console.log(JSON.stringify({ file, valid, diagnostics: listed }));
}
process.exit(failed ? 1 : 0);
