#!/usr/bin/env bash
# npm run lint: ESLint with type-checked and layer rules over src/ (no CLI import
# from the library, the addon only through the system layer, no import cycles),
# prettier --check on every tracked TypeScript/JavaScript file and
# clang-format --dry-run -Werror on native/. clang-format comes from Debian (installed here when
# missing and this runs as root; without it the native/ format is not checked).
# Cost: about 15 s on the 2-core machine (plus about 20 s once for apt-get).
set -uo pipefail
cd "$(dirname "$0")/../.."
if ! command -v clang-format > /dev/null && [[ $(id -u) -eq 0 ]] && command -v apt-get > /dev/null; then
  echo "installing clang-format (Debian package)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-format > /dev/null 2>&1 || echo "apt-get install clang-format failed: native/ format not checked"
fi
npm run --silent lint
