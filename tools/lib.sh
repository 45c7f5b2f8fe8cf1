# Shared by tools/build-tools.sh and tools/build-cluster-tools.sh (sourced, never run): the
# pinned versions, the cache both build into, and how a tool is looked up, stamped and logged.
# The sourcing script sets LOG_TAG first.
# shellcheck shell=bash

# The one place the versions are pinned; tools/realtools.py reads the same file.
# shellcheck source=tools/versions.env
. "$(dirname "${BASH_SOURCE[0]}")/versions.env"

TOOLS=${FABRIC_TOOLS:-$HOME/.cache/fabric-tools}
BIN=$TOOLS/bin
mkdir -p "$BIN"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

log() { printf '[%s] %s\n' "${LOG_TAG:-tools}" "$*" >&2; }

cached() { # NAME VERSION: true when $BIN/NAME was built from VERSION
  [ -x "$BIN/$1" ] && [ "$(cat "$BIN/.$1.version" 2>/dev/null)" = "$2" ]
}
stamp() { printf '%s' "$2" > "$BIN/.$1.version"; }

# module_json MODULE@VERSION FIELD: download the module (checked against go.sum's database) and
# print one field of its metadata (Dir: where its source is; GoMod: its go.mod); fail with the
# proxy's answer when it is refused.
module_json() {
  go mod download -json "$1" | python3 -c '
import json, sys
info = json.load(sys.stdin)
sys.exit(info["Error"]) if "Error" in info else print(info[sys.argv[1]])' "$2"
}
