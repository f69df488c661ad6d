#!/usr/bin/env bash
# Runs the whole test suite from a fresh clone: virtual environment, install, lint, pytest.
#   scripts/run_tests.sh [pytest arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure_venv.sh
ensure_venv dev

# Report pages are checked in headless Chromium; install Debian's when it is missing and we can.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing chromium for the report tests" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# The GCS emulator of the object-store tests, built once from the Go module proxy where `go` exists.
if command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ]; then
  scripts/fake_gcs_server.sh build >/dev/null
fi

ruff check .
ruff format --check .
# The Google client libraries that the pinned stack imports warn about Python versions on import.
python -m pytest tests -p no:cacheprovider -q --durations=15 \
  -W ignore::FutureWarning -W ignore::DeprecationWarning "$@"
