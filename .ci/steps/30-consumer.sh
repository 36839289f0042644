#!/usr/bin/env bash
# Consumer check: the package as a stranger gets it. `npm pack` (prepack builds
# the linux-x64 and linux-arm64 prebuilds), then, as a fresh non-root user with an
# EMPTY npm config (no nodedir, no user or global npmrc, an empty cache) and no
# compiler on PATH, in a new project:
#   npm install <tarball> typescript @types/node
#   a handover between two processes (memfd + eventfd + state) through the package
#   npx backend-transfer demo (as non-root it says what it skips and why)
#   a strict NodeNext ESM file and a CommonJS .cts file type-checked and run
#   a plain CommonJS require()
#   npm install-scripts approve + npm rebuild: the install script takes the prebuild
# Prints each command and what it showed. Exit 0 passed, 77 skipped (says why).
#
# Knobs for measuring by hand (CI sets none of them):
#   BT_CONSUMER_NODE_BIN=/dir/with/node   run the consumer with another Node
#   BT_CONSUMER_WITH_COMPILER=1           keep /usr/bin (g++, make, python3) on PATH
#   BT_CONSUMER_FROM_SOURCE=1             approve the install script and compile
#                                         from source (needs BT_CONSUMER_WITH_COMPILER)
#   BT_CONSUMER_TARBALL=path.tgz          use this tarball instead of packing
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
t0=$(date +%s)
T=$(mktemp -d /tmp/bt-consumer.XXXXXX)
chmod 755 "$T"
U=""
cleanup() {
  [ -n "$U" ] && userdel "$U" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT

say() { printf '%s\n' "consumer: $*"; }
fail() { say "FAILED: $*"; exit 1; }

# --- the tarball ----------------------------------------------------------------
if [ -n "${BT_CONSUMER_TARBALL:-}" ]; then
  cp "$BT_CONSUMER_TARBALL" "$T/backend-transfer.tgz"
else
  if ! command -v aarch64-linux-gnu-g++ >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then
      say "installing g++-aarch64-linux-gnu (the linux-arm64 prebuild)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++-aarch64-linux-gnu >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++-aarch64-linux-gnu >/dev/null 2>&1; }
    fi
    if ! command -v aarch64-linux-gnu-g++ >/dev/null; then
      say "no aarch64-linux-gnu-g++: this tarball has the linux-x64 prebuild only"
      export BT_PREBUILD_ONLY_HOST=1
    fi
  fi
  say "\$ npm pack --pack-destination $T"
  npm pack --pack-destination "$T" >"$T/pack.log" 2>&1 || { tail -30 "$T/pack.log"; fail "npm pack"; }
  grep -E '^prebuild: prebuilds/|package size|unpacked size|total files' "$T/pack.log" | sed 's/^/  /'
  mv "$T"/backend-transfer-*.tgz "$T/backend-transfer.tgz"
fi
chmod 644 "$T/backend-transfer.tgz"
listing=$(tar tzf "$T/backend-transfer.tgz")
printf '%s\n' "$listing" | grep -E 'prebuilds/.*\.node$|LICENSE$|scripts/install.cjs$|src/index.ts$' | sed 's/^/  tarball has /'
grep -qx 'package/prebuilds/linux-x64/backend-transfer.glibc.node' <<<"$listing" || fail "the tarball has no linux-x64 prebuild"
grep -qx 'package/LICENSE' <<<"$listing" || fail "the tarball has no LICENSE"
mkdir -p "$T/x" && tar xzf "$T/backend-transfer.tgz" -C "$T/x" package/prebuilds
for f in "$T"/x/package/prebuilds/*/*.node; do say "file $(basename "$(dirname "$f")")/$(basename "$f"): $(file -b "$f" | cut -d, -f1-2)"; done
if [ -f "$T/x/package/prebuilds/linux-arm64/backend-transfer.glibc.node" ]; then
  file -b "$T/x/package/prebuilds/linux-arm64/backend-transfer.glibc.node" | grep -q 'ARM aarch64' || fail "the arm64 prebuild is not an aarch64 ELF"
fi

# --- a fresh user, an empty npm config, no compiler -----------------------------
NODE_BIN=${BT_CONSUMER_NODE_BIN:-$(dirname "$(readlink -f "$(command -v node)")")}
NODE="$NODE_BIN/node"
NPM_CLI=$(readlink -f "$(command -v npm)")
mkdir -p "$T/bin" "$T/home" "$T/cache"
: >"$T/empty-npmrc"; : >"$T/empty-global-npmrc"
ln -s "$NODE" "$T/bin/node"
ln -s "$NPM_CLI" "$T/bin/npm"
ln -s "$(dirname "$NPM_CLI")/npx-cli.js" "$T/bin/npx"
for tool in sh bash env cat ls rm mkdir; do ln -s "$(command -v $tool)" "$T/bin/$tool" 2>/dev/null; done
# The demo's vhost-user back-end, when installed (it is no compiler).
command -v qemu-storage-daemon >/dev/null && ln -s "$(command -v qemu-storage-daemon)" "$T/bin/qemu-storage-daemon"
USER_PATH="$T/bin"
[ "${BT_CONSUMER_WITH_COMPILER:-}" = 1 ] && USER_PATH="$T/bin:/usr/local/bin:/usr/bin:/bin"
for tool in g++ c++ cc make python3; do
  if PATH=$USER_PATH command -v $tool >/dev/null; then say "on PATH: $tool"; else say "not on PATH: $tool"; fi
done

if [ "$(id -u)" -eq 0 ]; then
  U="btc$$"
  useradd --system --no-create-home --home-dir "$T/home" --shell /usr/sbin/nologin "$U" || fail "useradd $U"
  chown -R "$U:" "$T/home" "$T/cache"
  AS=(runuser -u "$U" --)
  say "running as a new user $U (uid $(id -u "$U")), HOME=$T/home"
else
  AS=()
  say "not root: running as $(id -un) (uid $(id -u)) with HOME=$T/home"
fi
# Nothing from this shell's environment: no npm_config_* (CI exports nodedir).
RUN=("${AS[@]}" env -i "HOME=$T/home" "PATH=$USER_PATH" "LANG=C.UTF-8" "TMPDIR=$T/home"
  "npm_config_userconfig=$T/empty-npmrc" "npm_config_globalconfig=$T/empty-global-npmrc" "npm_config_cache=$T/cache"
  "npm_config_update_notifier=false")
# The machine's way to the registry (a proxy, a CA that Node must trust) is not
# npm config: pass it through when set, and say so.
for v in NODE_EXTRA_CA_CERTS SSL_CERT_FILE SSL_CERT_DIR HTTPS_PROXY https_proxy HTTP_PROXY http_proxy NO_PROXY no_proxy; do
  if [ -n "${!v:-}" ]; then RUN+=("$v=${!v}"); say "passing the machine's $v through (network, not npm config)"; fi
done
APP="$T/home/app"

run() { # run "what" cmd...: print the command and its output, fail on non-zero
  local what=$1; shift
  say "\$ $what"
  local out rc
  out=$(cd "$APP" && "${RUN[@]}" "$@" 2>&1); rc=$?
  # The install script's own lines always; of the rest (compiler output), the end.
  printf '%s\n' "$out" | grep '^backend-transfer: ' | sed 's/^/    /'
  printf '%s\n' "$out" | grep -v '^backend-transfer: \|^gyp info ' | sed 's/^/    /' | tail -n 30
  [ $rc -eq 0 ] || fail "$what (exit $rc)"
}

"${RUN[@]}" mkdir -p "$APP" || fail "mkdir"
say "node $("$NODE" -v), npm $("${RUN[@]}" npm -v), npm config: $("${RUN[@]}" npm config get nodedir) nodedir"
run "npm init -y" npm init -y --silent
cd "$APP" && "${RUN[@]}" node -e '
const fs = require("fs"); const p = JSON.parse(fs.readFileSync("package.json", "utf8"));
p.type = "module"; fs.writeFileSync("package.json", JSON.stringify(p, null, 2));' || fail "package.json"
cd "$REPO"
tstart=$(date +%s%N)
run "npm install $T/backend-transfer.tgz typescript@5 @types/node@$("$NODE" -p 'process.versions.node.split(".")[0]')" \
  npm install --no-audit --no-fund "$T/backend-transfer.tgz" typescript@5 "@types/node@$("$NODE" -p 'process.versions.node.split(".")[0]')"
say "npm install took $(( ($(date +%s%N) - tstart) / 1000000 )) ms"
if [ "${BT_CONSUMER_FROM_SOURCE:-}" = 1 ]; then
  run "npm install-scripts approve backend-transfer" npm install-scripts approve backend-transfer
  run "npm rebuild backend-transfer --build-from-source" env npm_config_build_from_source=true npm rebuild backend-transfer --foreground-scripts
  [ -f "$APP/node_modules/backend-transfer/build/Release/backend_transfer.node" ] || fail "no build/Release after building from source"
  say "compiled from source: node_modules/backend-transfer/build/Release/backend_transfer.node"
else
  [ -e "$APP/node_modules/backend-transfer/build" ] && fail "something was compiled: node_modules/backend-transfer/build exists"
  say "nothing compiled (no node_modules/backend-transfer/build): the prebuild is used"
fi

# --- a handover between two processes -------------------------------------------
cat >"$APP/handover.mjs" <<'EOF'
// Target (this process) and source (a child): a generic device with a memfd and an
// eventfd, plus 1 MiB of state. The target checks the fds work and the state matches.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readSync, writeSync } from 'node:fs';
import { GenericSource, GenericTarget, inspectFd, receiveHandover, sendHandover } from 'backend-transfer';
import { native } from 'backend-transfer/native';

const PATTERN = Buffer.from('guest page ');
const state = Buffer.alloc(1 << 20);
for (let i = 0; i + 4 <= state.length; i += 4) state.writeUInt32LE((i * 2654435761) >>> 0, i);
const sha = (b) => createHash('sha256').update(b).digest('hex');
const path = `${process.env.HOME}/handover.sock`;

if (process.argv[2] === 'source') {
  const ram = native.memfd_create('guest-ram');
  writeSync(ram, Buffer.concat(Array(100).fill(PATTERN)), 0, undefined, 0);
  const irq = native.eventfd(5);
  const device = new GenericSource({ id: 'vm0', transfer: true, required: true, fds: [{ name: 'ram', fd: ram, kind: 'memfd' }, { name: 'irq', fd: irq, kind: 'eventfd' }], metadata: { vcpus: 2 } });
  const r = await sendHandover({ socket: path, devices: [device], backendTransfer: true, state });
  console.log(`source pid ${process.pid}: sent ${r.fds} fds, ${r.stateBytes} bytes of state`);
} else {
  const done = receiveHandover({ socket: path, accept: [new GenericTarget({ id: 'vm0', expect: { ram: 'memfd', irq: 'eventfd' } })], backendTransfer: true });
  for (let i = 0; i < 500 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 10));
  const child = spawn(process.execPath, [new URL(import.meta.url).pathname, 'source'], { stdio: 'inherit' });
  const exited = new Promise((r) => child.on('exit', r));
  const r = await done;
  const code = await exited;
  const be = r.devices.get('vm0').backend;
  const ram = be.fd('ram'), irq = be.fd('irq');
  const page = Buffer.alloc(PATTERN.length);
  readSync(ram, page, 0, page.length, 0);
  const ctr = Buffer.alloc(8);
  readSync(irq, ctr);
  const checks = {
    outcome: r.outcome,
    'source exit code': code,
    'source pid': r.peer?.pid,
    'ram kind': inspectFd(ram).kind,
    'ram reads back': page.equals(PATTERN),
    'irq kind': inspectFd(irq).kind,
    'irq counter (5 from the source)': Number(ctr.readBigUInt64LE()),
    'metadata.vcpus': be.metadata.vcpus,
    'state sha256 matches': sha(r.state) === sha(state),
  };
  console.log(`target pid ${process.pid}:`, JSON.stringify(checks));
  be.close();
  const ok = r.outcome === 'committed' && code === 0 && checks['ram kind'] === 'memfd' && checks['ram reads back'] && checks['irq kind'] === 'eventfd' &&
    checks['irq counter (5 from the source)'] === 5 && checks['metadata.vcpus'] === 2 && checks['state sha256 matches'];
  console.log(ok ? 'handover OK' : 'handover WRONG');
  process.exit(ok ? 0 : 1);
}
EOF
run "node handover.mjs" node handover.mjs

# --- the README's demo, from the installed package ------------------------------
run "npx backend-transfer demo" npx backend-transfer demo

# --- types: strict NodeNext, ESM and CommonJS; a plain require() -----------------
cat >"$APP/check.mts" <<'EOF'
import { FdSocket, GenericTarget, sendHandover, type ReceiveHandoverResult, type SendHandoverOptions } from 'backend-transfer';
const [a, b] = FdSocket.pair();
const opts: Pick<SendHandoverOptions, 'backendTransfer'> = { backendTransfer: true };
const t = new GenericTarget({ id: 'x', expect: { ram: 'memfd' } });
const outcome: ReceiveHandoverResult['outcome'] | undefined = undefined;
a.close();
b.close();
console.log('esm ts ok:', typeof sendHandover, t.kind, opts.backendTransfer, outcome ?? 'no outcome');
EOF
cat >"$APP/check-cjs.cts" <<'EOF'
import { FdSocket, closeFd, inspectFd } from 'backend-transfer';
import { native } from 'backend-transfer/native';
const [a, b] = FdSocket.pair();
const e: number = native.eventfd(0);
console.log('cjs ts ok:', inspectFd(e).kind, a.type);
closeFd(e);
a.close();
b.close();
EOF
cat >"$APP/tsconfig.json" <<'EOF'
{
  "compilerOptions": {
    "module": "nodenext",
    "moduleResolution": "nodenext",
    "target": "es2022",
    "strict": true,
    "noUncheckedIndexedAccess": true,
    "exactOptionalPropertyTypes": true,
    "types": ["node"],
    "outDir": "out"
  },
  "files": ["check.mts", "check-cjs.cts"]
}
EOF
run "npx tsc -p tsconfig.json (strict, module nodenext: check.mts + check-cjs.cts)" npx tsc -p tsconfig.json
run "node out/check.mjs" node out/check.mjs
run "node out/check-cjs.cjs (CommonJS, compiled by tsc to require())" node out/check-cjs.cjs
run "node -e \"require('backend-transfer')\" (plain CommonJS)" node -e "
const bt = require('backend-transfer');
const { native } = require('backend-transfer/native');
const [a, b] = bt.FdSocket.pair();
const e = native.eventfd(0); bt.closeFd(e);
console.log('require ok:', Object.keys(bt).length, 'exports; FdSocket.pair ->', a.type, b.type, '; backend-transfer/native eventfd', e);
a.close(); b.close();"

# --- the install script itself, approved: it takes the prebuild ----------------
if [ "${BT_CONSUMER_FROM_SOURCE:-}" != 1 ]; then
  run "npm install-scripts approve backend-transfer" npm install-scripts approve backend-transfer
  run "npm rebuild backend-transfer --foreground-scripts" npm rebuild backend-transfer --foreground-scripts
  [ -e "$APP/node_modules/backend-transfer/build" ] && fail "the approved install script compiled instead of taking the prebuild"
  say "the approved install script took the prebuild (nothing compiled)"
fi

say "passed in $(($(date +%s) - t0)) s (node $("$NODE" -v), $([ -n "$U" ] && echo "user $U" || id -un), compiler on PATH: $([ "${BT_CONSUMER_WITH_COMPILER:-}" = 1 ] && echo yes || echo no))"
exit 0
