#!/usr/bin/env bash
# npm run lint: ESLint (type-checked rules and the layer rules of eslint.config.js)
# over src/, then the format of the files listed in scripts/formatted-files.txt:
# prettier for TypeScript/JavaScript, clang-format for native/ (when installed;
# Debian: apt-get install clang-format). Only listed files are format-checked
# until the whole-tree format commit (after the staging and data-path branches land).
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t listed < <(grep -v '^\s*#' scripts/formatted-files.txt | grep -v '^\s*$')
ts=()
cc=()
for f in "${listed[@]}"; do
  [[ -e "$f" ]] || { echo "scripts/formatted-files.txt lists $f, which does not exist" >&2; exit 1; }
  case "$f" in
    native/*) cc+=("$f") ;;
    *) ts+=("$f") ;;
  esac
done

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
