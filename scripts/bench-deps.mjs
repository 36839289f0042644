#!/usr/bin/env node
// `npm run bench` only: installs usocket (a comparison in the transport
// benchmark) when it is missing. It is not a devDependency, so that a plain
// `npm install` never builds it: usocket depends on node-gyp 13, which does not
// run on Node 20, and builds from source (a compiler, Node's headers). Here it
// is built with our own node-gyp (package.json "overrides") against the headers
// of the running node, and `--no-save` keeps package.json and the lockfile as
// they are (the next plain `npm install` removes it again).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const SPEC = 'usocket@^1.1.0';
try {
  createRequire(join(root, 'bench/'))('usocket');
  process.exit(0);
} catch {
  /* not installed yet */
}
const env = { ...process.env };
const prefix = resolve(dirname(process.execPath), '..');
if (!env.npm_config_nodedir && existsSync(join(prefix, 'include/node/common.gypi'))) env.npm_config_nodedir = prefix;
console.error(`bench: installing ${SPEC} (not saved) for the transport comparison`);
const r = spawnSync('npm', ['install', '--no-save', '--no-audit', '--no-fund', SPEC], { cwd: root, env, stdio: 'inherit' });
if (r.status !== 0) {
  console.error(`bench: could not install ${SPEC} (it compiles from source: g++, make, python3); the benchmark needs it`);
  process.exit(1);
}
