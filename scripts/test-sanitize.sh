#!/usr/bin/env bash
# npm run test:sanitize: builds the addon with AddressSanitizer and
# UndefinedBehaviorSanitizer into its own directory (build-sanitize/, never
# build/Release, which the normal suite uses) and runs the native, transport and
# stream tests against that build (src/native.ts loads BACKEND_TRANSFER_NATIVE).
#
# Node itself is not instrumented, so libasan is LD_PRELOADed (it must come
# first in the process); leak detection is off (V8 and libuv keep allocations
# to exit on purpose). UBSan is built with -fno-sanitize-recover: any finding
# aborts the process, and the test (or the worker) fails. Child processes the
# tests spawn inherit the environment and run sanitized too.
#
# Exit codes: 0 passed; 77 the toolchain cannot do it (the reason is printed);
# anything else: a test failed or a sanitizer found something.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${BT_SANITIZE_DIR:-$ROOT/build-sanitize}"

skip() { echo "test:sanitize: skipped: $*"; exit 77; }
command -v g++ >/dev/null || skip "no g++ (Debian package g++)"
command -v make >/dev/null || skip "no make"
LIBASAN="$(g++ -print-file-name=libasan.so)"
[ -f "$LIBASAN" ] || skip "g++ has no libasan.so (Debian package libasan8 / libgcc-12-dev)"
echo 'int main(){return 0;}' > "${TMPDIR:-/tmp}/bt-san-probe.cc"
g++ -fsanitize=address,undefined "${TMPDIR:-/tmp}/bt-san-probe.cc" -o "${TMPDIR:-/tmp}/bt-san-probe" 2>/dev/null ||
  skip "g++ cannot link with -fsanitize=address,undefined (libubsan/libasan missing)"
rm -f "${TMPDIR:-/tmp}/bt-san-probe" "${TMPDIR:-/tmp}/bt-san-probe.cc"
# node-gyp must not download headers: use the ones Debian's nodejs ships.
if [ -z "${npm_config_nodedir:-}" ] && [ -f /usr/include/node/node_api.h ]; then export npm_config_nodedir=/usr; fi

# node-gyp: the project's own if installed, else the one npm bundles.
GYP="$ROOT/node_modules/.bin/node-gyp"
if [ ! -x "$GYP" ]; then
  NPM_DIR="$(dirname "$(readlink -f "$(command -v npm)")")/.."
  GYP="$NPM_DIR/node_modules/node-gyp/bin/node-gyp.js"
  [ -f "$GYP" ] || skip "no node-gyp (neither in node_modules nor bundled with npm)"
  GYP="node $GYP"
fi

# A copy of what the addon is built from, so that node-gyp's build/ lands there.
rm -rf "$OUT"
mkdir -p "$OUT"
cp -r binding.gyp native package.json "$OUT/"
ln -s "$ROOT/node_modules" "$OUT/node_modules"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1"
echo "test:sanitize: building the addon with $SAN in $OUT"
(cd "$OUT" && CFLAGS="$SAN" CXXFLAGS="$SAN" LDFLAGS="-fsanitize=address,undefined" $GYP rebuild >"$OUT/build.log" 2>&1) ||
  { tail -30 "$OUT/build.log"; echo "test:sanitize: the sanitized build failed"; exit 1; }
ADDON="$OUT/build/Release/backend_transfer.node"
# Make sure the sanitizers really are in (a flag that did not reach the compiler would pass silently).
# (ldd's output read whole first: `ldd | grep -q` under pipefail fails when grep
# exits at the first match and ldd then dies of SIGPIPE, as it did once in CI.)
LINKED="$(ldd "$ADDON")"
for lib in libasan libubsan; do
  grep -q "$lib" <<<"$LINKED" || { echo "test:sanitize: $ADDON is not linked with $lib: the flags did not reach the build"; exit 1; }
done

export BACKEND_TRANSFER_NATIVE="$ADDON"
export LD_PRELOAD="$LIBASAN${LD_PRELOAD:+:$LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allow_user_segv_handler=1:handle_segv=0:detect_stack_use_after_return=0"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1"
TESTS=(test/native.test.ts test/native-args.test.ts test/native-hardening.test.ts test/poller.test.ts test/fd-socket.test.ts
  test/stream.test.ts test/stream-spec.test.ts test/stream-socket.test.ts test/stream-fuzz.test.ts
  test/mapping.test.ts test/close-batch.test.ts)
echo "test:sanitize: ${TESTS[*]}"
"$ROOT/node_modules/.bin/vitest" run "${TESTS[@]}" "$@"
