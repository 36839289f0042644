#!/usr/bin/env bash
# npm run format: rewrite the tree in the format npm run lint checks (prettier for
# every tracked TypeScript/JavaScript file, clang-format for native/).
set -euo pipefail
cd "$(dirname "$0")/.."
git ls-files -z '*.ts' '*.mts' '*.cts' '*.js' '*.mjs' '*.cjs' | xargs -0 npx prettier --write --log-level warn
if command -v clang-format > /dev/null; then
  git ls-files -z 'native/*.cc' 'native/*.h' | xargs -0 clang-format -i
else
  echo "clang-format not installed: native/ not formatted (Debian: apt-get install clang-format)"
fi
