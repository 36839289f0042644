#!/usr/bin/env node
// npm's install step for backend-transfer (package.json "install").
//
// 1. A prebuild from prebuilds/ that loads on this machine: done, nothing is
//    compiled (linux-x64 and linux-arm64 with glibc ship in the package).
// 2. Otherwise compile from source with node-gyp, and say why. Never download:
//    - node-gyp is our own devDependency when present (in the repository), else
//      the one npm runs scripts with (npm_config_node_gyp), else node-gyp on PATH.
//      A node-gyp hoisted into a consumer's tree by some other package is never
//      picked (node-gyp 13 cannot even start on Node 20).
//    - Node's headers: npm_config_nodedir when set; else the headers that come
//      with the running node (<prefix>/include/node, as in the nodejs.org
//      tarballs, the node-linux-* npm packages and Debian's /usr/include/node);
//      else node-gyp's own default, which downloads them.
// 3. No compiler, make or python3: a clear message naming what is missing.
//
// Set npm_config_build_from_source=true (npm install --build-from-source) to
// skip the prebuilds.
'use strict';
const { spawnSync } = require('node:child_process');
const { existsSync, readdirSync } = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const say = (msg) => process.stderr.write(`backend-transfer: ${msg}\n`);
const libc = () => (process.report?.getReport?.().header?.glibcVersionRuntime ? 'glibc' : 'musl');
const target = `${process.platform}-${process.arch} (${libc()}, Node ${process.versions.node}, N-API ${process.versions.napi})`;

function shipped() {
  const dir = path.join(root, 'prebuilds');
  if (!existsSync(dir)) return [];
  return readdirSync(dir).flatMap((d) => readdirSync(path.join(dir, d)).map((f) => `${d}/${f}`));
}

function onPath(cmd) {
  return (process.env.PATH || '').split(path.delimiter).some((d) => d && existsSync(path.join(d, cmd)));
}

let why;
if (process.env.npm_config_build_from_source === 'true') {
  why = 'building from source as asked (npm_config_build_from_source)';
} else {
  try {
    require('node-gyp-build')(root);
    process.exit(0);
  } catch (err) {
    const have = shipped();
    why =
      `no prebuild loads on ${target}` +
      (have.length ? ` (prebuilds/ has ${have.join(', ')})` : ' (no prebuilds/ here: a git clone has none, the npm package has them)') +
      `: ${String(err.message).split('\n')[0]}`;
  }
}
say(`${why}; compiling the addon from source.`);

const cxx = process.env.CXX || ['c++', 'g++', 'clang++'].find(onPath);
const missing = [];
if (!cxx) missing.push('a C++ compiler (g++)');
if (!onPath('make')) missing.push('make');
if (!onPath('python3') && !process.env.npm_config_python && !process.env.PYTHON) missing.push('python3');
if (missing.length) {
  say(`cannot compile: ${missing.join(', ')} not found on PATH.`);
  say('Install them (Debian/Ubuntu: apt-get install g++ make python3; Alpine: apk add g++ make python3),');
  say(existsSync(path.join(root, '.git')) || !root.includes(`${path.sep}node_modules${path.sep}`) ? 'then run npm install again.' : 'then run: npm rebuild backend-transfer');
  process.exit(1);
}

const ownGyp = path.join(root, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
const gyp = existsSync(ownGyp) ? ownGyp : process.env.npm_config_node_gyp && existsSync(process.env.npm_config_node_gyp) ? process.env.npm_config_node_gyp : null;
const args = ['rebuild'];
const env = { ...process.env };
if (!env.npm_config_nodedir && !process.config.variables.use_prefix_to_find_headers) {
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  if (existsSync(path.join(prefix, 'include', 'node', 'node_api.h')) && existsSync(path.join(prefix, 'include', 'node', 'common.gypi'))) {
    say(`using the headers of the running node in ${prefix}/include/node`);
    env.npm_config_nodedir = prefix;
  } else {
    say(`the running node (${process.execPath}) has no headers in ${prefix}/include/node; node-gyp will download them`);
    say('(offline? set npm_config_nodedir to a directory with include/node/node_api.h and common.gypi)');
  }
}
const cmd = gyp ? process.execPath : 'node-gyp';
const argv = gyp ? [gyp, ...args] : args;
say(`${gyp ? `node ${path.relative(root, gyp).startsWith('..') ? gyp : path.relative(root, gyp)}` : 'node-gyp'} ${args.join(' ')}`);
const r = spawnSync(cmd, argv, { cwd: root, env, stdio: 'inherit' });
if (r.error) {
  say(`could not run node-gyp: ${r.error.message}`);
  process.exit(1);
}
process.exit(r.status ?? 1);
