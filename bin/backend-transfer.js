#!/usr/bin/env node
// The `backend-transfer` command. The CLI is compiled TypeScript in dist/ (built
// by `npm install` through the prepare script).
import { existsSync } from 'node:fs';

const entry = new URL('../dist/cli/bin.js', import.meta.url);
if (!existsSync(entry)) {
  console.error('backend-transfer: dist/ is missing. Run `npm install` (or `npm run build:ts`) in the package first.');
  process.exit(2);
}
await import(entry.href);
