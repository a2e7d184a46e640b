#!/usr/bin/env bash
# Installs Debian's chromium for the end-to-end tests (Playwright drives it; Playwright's own browser download is
# not used). Needs root and apt; anywhere else it says so and leaves the e2e tests to skip.
set -euo pipefail
BROWSER=/usr/bin/chromium
if [ -x "$BROWSER" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium not installed and this is not root with apt: the e2e tests will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q chromium >/dev/null
echo "installed $($BROWSER --version)"
