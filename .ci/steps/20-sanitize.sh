#!/usr/bin/env bash
# The addon under AddressSanitizer and UndefinedBehaviorSanitizer: npm run
# test:sanitize builds it into build-sanitize/ (build/Release is left alone) and
# runs the native, transport and stream tests (9 files) against it, LD_PRELOADing
# libasan; any UBSan finding aborts (halt on error) and fails this step.
# Cost: about 100 s on the 2-core machine (about 40 s build, 60 s tests).
# Exit 77 (with the reason) where g++ cannot build with the sanitizers.
set -uo pipefail
cd "$(dirname "$0")/../.."
bash scripts/test-sanitize.sh --reporter=dot
rc=$?
rm -rf build-sanitize
exit $rc
