#!/usr/bin/env node
// `npm pack` / `npm publish` run this (package.json "prepack"): the prebuilds the
// package ships, one N-API build per platform, tagged with the libc in the file
// name (prebuildify --tag-libc), which node-gyp-build matches at load time:
//
//   prebuilds/linux-x64/backend-transfer.glibc.node     (this machine's g++)
//   prebuilds/linux-arm64/backend-transfer.glibc.node   (aarch64-linux-gnu-g++)
//
// Both compile against the headers of the running node (npm_config_nodedir when
// set), so nothing is downloaded. N-API headers do not depend on the
// architecture. musl is not built here: Debian has no musl C++ toolchain
// (musl-tools is C only); on Alpine, npm install compiles from source.
// BT_PREBUILD_ONLY_HOST=1 builds only this machine's platform.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const onPath = (cmd) => (process.env.PATH || '').split(':').some((d) => d && existsSync(join(d, cmd)));
const say = (msg) => console.error(`prebuild: ${msg}`);

const env = { ...process.env };
if (!env.npm_config_nodedir) {
  const prefix = resolve(dirname(process.execPath), '..');
  if (existsSync(join(prefix, 'include/node/node_api.h')) && existsSync(join(prefix, 'include/node/common.gypi'))) env.npm_config_nodedir = prefix;
  else {
    say(`no Node headers in ${prefix}/include/node; set npm_config_nodedir`);
    process.exit(1);
  }
}

const prebuildify = join(root, 'node_modules/prebuildify/bin.js');
if (!existsSync(prebuildify)) {
  say('prebuildify is not installed (a devDependency): run npm install first');
  process.exit(1);
}

function build(arch, extraEnv) {
  say(`linux-${arch} (glibc)`);
  const r = spawnSync(process.execPath, [prebuildify, '--napi', '--strip', '--tag-libc', `--arch=${arch}`], {
    cwd: root,
    env: { ...env, ...extraEnv },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  if (r.status !== 0) {
    say(`linux-${arch} failed (exit ${r.status ?? r.signal})`);
    process.exit(1);
  }
}

rmSync(join(root, 'prebuilds'), { recursive: true, force: true });
// The other architecture first: prebuildify compiles in build/, and the last build
// left there is what node-gyp-build loads in this tree, so it must be this machine's.
const host = process.arch;
const cross = { x64: ['arm64', 'aarch64-linux-gnu'], arm64: ['x64', 'x86_64-linux-gnu'] }[host];
if (cross && process.env.BT_PREBUILD_ONLY_HOST !== '1') {
  const [arch, triple] = cross;
  if (!onPath(`${triple}-g++`)) {
    say(`${triple}-g++ not found: the linux-${arch} prebuild needs it (Debian: apt-get install g++-${triple.replaceAll('_', '-')}),`);
    say('or set BT_PREBUILD_ONLY_HOST=1 to pack without it');
    process.exit(1);
  }
  build(arch, { CC: `${triple}-gcc`, CXX: `${triple}-g++`, LINK: `${triple}-g++`, AR: `${triple}-ar`, PREBUILD_STRIP_BIN: `${triple}-strip` });
}
build(host, {});
for (const d of readdirSync(join(root, 'prebuilds'))) for (const f of readdirSync(join(root, 'prebuilds', d))) say(`prebuilds/${d}/${f}`);
