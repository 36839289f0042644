#!/usr/bin/env bash
# npm run lint: ESLint (type-checked rules and the layer rules of eslint.config.js)
# over src/, then the format of the whole tree: prettier for every TypeScript and
# JavaScript file the repository tracks (.prettierignore leaves out generated
# files and docs), clang-format for native/ (when installed; Debian: apt-get
# install clang-format). `npm run format` rewrites both.
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t ts < <(git ls-files '*.ts' '*.mts' '*.cts' '*.js' '*.mjs' '*.cjs' 2>/dev/null || true)
mapfile -t cc < <(git ls-files 'native/*.cc' 'native/*.h' 2>/dev/null || true)
if [[ ${#ts[@]} -eq 0 ]]; then
  # Not a git checkout (an unpacked tarball): the same files by name.
  mapfile -t ts < <(find src test bench scripts bin examples eslint.config.js vitest.config.ts -type f \( -name '*.ts' -o -name '*.mts' -o -name '*.cts' -o -name '*.js' -o -name '*.mjs' -o -name '*.cjs' \) -not -path '*/node_modules/*' 2>/dev/null)
  mapfile -t cc < <(find native -name '*.cc' -o -name '*.h')
fi

echo "eslint src/"
npx eslint src
echo "prettier --check (${#ts[@]} files)"
npx prettier --check "${ts[@]}"
if command -v clang-format > /dev/null; then
  echo "clang-format --dry-run -Werror (${#cc[@]} files)"
  clang-format --dry-run -Werror "${cc[@]}"
else
  echo "clang-format not installed: native/ format not checked (Debian: apt-get install clang-format)"
fi
