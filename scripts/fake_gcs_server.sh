#!/usr/bin/env bash
# fake-gcs-server, the Google Cloud Storage emulator that tests/test_object_stores.py runs.
#
#   scripts/fake_gcs_server.sh build    builds it once (if needed) and prints the binary's path
#   scripts/fake_gcs_server.sh path     prints the path it is built to (built or not)
#
# Built with `go install` from the Go module proxy (`go` needed; GOTOOLCHAIN=auto fetches a newer Go
# through the proxy when the module needs one) into $FAKE_GCS_CACHE (default
# ~/.cache/beam-ml-pipelines), as scripts/prism.sh caches Prism. The tests start it themselves, on
# 127.0.0.1 only (its own default is every interface).
set -euo pipefail

FAKE_GCS_VERSION=${FAKE_GCS_VERSION:-v1.56.1}
FAKE_GCS_MODULE=github.com/fsouza/fake-gcs-server
cache=${FAKE_GCS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/beam-ml-pipelines}
bin_dir="$cache/fake-gcs-server-$FAKE_GCS_VERSION"
binary="$bin_dir/fake-gcs-server"

die() { echo "fake_gcs_server.sh: $*" >&2; exit 1; }
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }

# Go's official archive installs to /usr/local/go, which a non-login shell may lack on its PATH.
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi

# build: one build at a time (flock), into a temporary folder moved into place when complete, so an
# interrupted build never leaves a binary that looks finished.
build() {
  if [ ! -x "$binary" ]; then
    command -v go >/dev/null || die "go is not installed; install Go 1.22+ to build fake-gcs-server"
    mkdir -p "$cache"
    exec 9>"$cache/.fake-gcs-server.lock"
    flock 9
    if [ ! -x "$binary" ]; then
      echo "fake_gcs_server.sh: building $FAKE_GCS_MODULE@$FAKE_GCS_VERSION (a minute, once)" >&2
      local work
      work=$(mktemp -d "$cache/.fake-gcs-server-build.XXXXXX")
      chmod 755 "$work"
      GOBIN="$work" GOTOOLCHAIN=auto go install "$FAKE_GCS_MODULE@$FAKE_GCS_VERSION" ||
        { rm -rf "$work"; die "go install $FAKE_GCS_MODULE@$FAKE_GCS_VERSION failed"; }
      rm -rf "$bin_dir"
      mv "$work" "$bin_dir"
    fi
  fi
  echo "$binary"
}

case "${1:-}" in
  build) build ;;
  path) echo "$binary" ;;
  -h | --help) usage ;;
  *) usage >&2; exit 2 ;;
esac
