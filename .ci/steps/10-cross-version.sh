#!/usr/bin/env bash
# Cross-version handovers: release 0.1.0 (git tag v0.1.0, else commit a946386)
# is built from this clone in a temporary worktree, then real handovers run in
# both directions between it and this tree (HEAD): a generic device with a memfd
# and an eventfd, plus 1 MiB of VMM state. The target checks that the fds work
# and that the state's hash is intact (test/interop/cross-version-peer.mjs).
# The conformance vectors (docs/vectors) are replayed through both readers too.
# Also: a HEAD or 0.1.0 target refusing a HELLO, read by the other version's
# source (docs/stream-format.md, "Refusing a HELLO").
# Cost: 15-35 s with a warm npm cache (measured: 14-29 s for npm ci and the
# native build of 0.1.0 on a loaded 2-core machine, 2-3 s for the rest); allow
# 60 s with a cold cache.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
t0=$(date +%s)

if git rev-parse -q --verify 'refs/tags/v0.1.0^{commit}' >/dev/null; then
  ref=v0.1.0
elif git cat-file -e 'a946386^{commit}' 2>/dev/null; then
  ref=a946386
  echo "cross-version: tag v0.1.0 is not in this clone; using commit a946386"
else
  echo "cross-version: FAIL: neither tag v0.1.0 nor commit a946386 is in this clone (a shallow clone? fetch with --tags / full history)" >&2
  exit 1
fi

tmp="$(mktemp -d /tmp/bt-v010-XXXXXX)"
cleanup() {
  git -C "$root" worktree remove --force "$tmp/tree" >/dev/null 2>&1 || true
  rm -rf "$tmp"
  git -C "$root" worktree prune >/dev/null 2>&1 || true
}
trap cleanup EXIT

git worktree add --detach "$tmp/tree" "$ref" >/dev/null || { echo "cross-version: FAIL: git worktree add $ref failed" >&2; exit 1; }
echo "cross-version: release 0.1.0 = $(git -C "$tmp/tree" rev-parse --short HEAD) ($ref), HEAD = $(git rev-parse --short HEAD)"

# node-gyp must not download headers: use Debian's (CI exports this too).
if [ -z "${npm_config_nodedir:-}" ] && [ -f /usr/include/node/node_api.h ]; then export npm_config_nodedir=/usr; fi
(
  cd "$tmp/tree"
  npm ci --no-audit --no-fund --loglevel=error >"$tmp/npm-ci.log" 2>&1 || { cat "$tmp/npm-ci.log"; exit 1; }
  # The install script builds the addon when no prebuild fits; make sure both builds are there.
  [ -f build/Release/backend_transfer.node ] || npm run build:native >>"$tmp/npm-ci.log" 2>&1 || { tail -50 "$tmp/npm-ci.log"; exit 1; }
  [ -f dist/index.js ] || npm run build:ts >>"$tmp/npm-ci.log" 2>&1 || { tail -50 "$tmp/npm-ci.log"; exit 1; }
)
t1=$(date +%s)
echo "cross-version: 0.1.0 built in $((t1 - t0)) s"

# This tree's build (the CI's npm install ran prepare; rebuild what is missing or stale).
if [ ! -f "$root/dist/index.js" ] || [ -n "$(find "$root/src" -newer "$root/dist/index.js" -print -quit)" ]; then npm run build:ts >/dev/null; fi
[ -f "$root/build/Release/backend_transfer.node" ] || npm run build:native >/dev/null

fail=0
# The conformance vectors through both readers: HEAD agrees with all of them,
# 0.1.0 with all but the behaviour changed since (listed in replay-vectors.mjs: a NACK in place
# of WELCOME, ABORT inside a section, stricter checks on bytes no 0.1.0 writer writes).
echo "cross-version: docs/vectors through HEAD's and 0.1.0's StreamReader"
node test/interop/replay-vectors.mjs "$root" || fail=1
node test/interop/replay-vectors.mjs "$tmp/tree" --release-0.1.0 || fail=1

echo "cross-version: 0.1.0 source -> HEAD target"
node test/interop/cross-version.mjs "$tmp/tree" "$root" "0.1.0" "HEAD" || fail=1
echo "cross-version: HEAD source -> 0.1.0 target"
node test/interop/cross-version.mjs "$root" "$tmp/tree" "HEAD" "0.1.0" || fail=1
echo "cross-version: a target refusing the HELLO (NACK in place of WELCOME), both ways"
BT_XVER_MODE=refuse node test/interop/cross-version.mjs "$tmp/tree" "$root" "0.1.0" "HEAD" || fail=1
BT_XVER_MODE=refuse node test/interop/cross-version.mjs "$root" "$tmp/tree" "HEAD" "0.1.0" || fail=1
echo "cross-version: handovers took $(($(date +%s) - t1)) s, whole step $(($(date +%s) - t0)) s"
exit $fail
