#!/usr/bin/env node
// The `backend-transfer` command. The CLI is compiled TypeScript in dist/ (built
// by `npm install` through the prepare script).
import { existsSync } from 'node:fs';

const main = new URL('../dist/cli/main.js', import.meta.url);
if (!existsSync(main)) {
  console.error('backend-transfer: dist/ is missing. Run `npm install` (or `npm run build:ts`) in the package first.');
  process.exit(2);
}
const { run } = await import(main.href);
process.exitCode = await run(process.argv.slice(2));
