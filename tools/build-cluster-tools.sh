#!/usr/bin/env bash
# Build the components of a one-machine Kubernetes control plane from Go modules, into the same
# cache as tools/build-tools.sh, for tests/test_real_cluster.py and `python -m tools.cluster`:
#
#   FABRIC_TOOLS (default ~/.cache/fabric-tools)
#     bin/etcd                 etcd server   (go.etcd.io/etcd/server/v3 $ETCD_VERSION)
#     bin/kube-apiserver       Kubernetes    (k8s.io/kubernetes/cmd/kube-apiserver v$KUBERNETES_VERSION)
#     bin/kube-controller-manager  the same, for its garbage collector only
#     bin/kubectl              the same      (k8s.io/kubernetes/cmd/kubectl; the Debian 12 package
#                              kubernetes-client is 1.20, far outside kubectl's +/-1 version skew)
#     bin/crossplane-core-2.0  Crossplane core (github.com/crossplane/crossplane/v2/cmd/crossplane
#                              $CROSSPLANE_V2, the same release as bin/crossplane-2.0)
#     crossplane-core-2.0/     its CRDs (what `crossplane core init` installs) and the Helm
#                              chart's ClusterRole template for core, from the module source
#     bin/registry             an in-memory OCI registry on localhost
#                              (github.com/google/go-containerregistry/cmd/registry $GGCR_VERSION,
#                              the registry library Crossplane itself pulls packages with), so
#                              core installs Fabric's xpkg through its real package manager
#
# A tool whose version stamp matches its pin is not rebuilt. etcd and Kubernetes replace their
# sibling modules with relative paths in their go.mod, which `go install pkg@version` refuses: each
# is built in its own throw-away wrapper module that requires the published modules instead (one
# wrapper per tool, so no tool's dependencies are lifted by another's).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
LOG_TAG=cluster-tools
# shellcheck source=tools/lib.sh
. "$here/lib.sh"

wrapper() { # NAME: a fresh wrapper module in a temp dir; prints its path
  local d
  d=$(mktemp -d "${TMPDIR:-/tmp}/fabric-$1-XXXXXX")
  (cd "$d" && go mod init "local/$1" >/dev/null 2>&1)
  printf '%s' "$d"
}

# --- etcd: server/go.mod replaces ../api, ../pkg, ...; its requires name the matching tags, so the
# wrapper needs no replace of its own.
build_etcd() {
  cached etcd "$ETCD_VERSION" && { log "etcd $ETCD_VERSION: cached"; return; }
  log "etcd $ETCD_VERSION: building"
  local start=$SECONDS d
  d=$(wrapper etcd)
  (cd "$d" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" &&
    go build -trimpath -ldflags='-s -w' -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
  rm -rf "$d"
  stamp etcd "$ETCD_VERSION"
  log "etcd $ETCD_VERSION: built in $((SECONDS - start)) s"
}

# --- kube-apiserver, kube-controller-manager (its garbage collector deletes what a deleted XR
# owned) and kubectl: k8s.io/kubernetes replaces every staging module with ./staging/src/...; the
# wrapper points each one at its published v0.MINOR.PATCH and copies the godebug line. The list of
# staging modules comes from the tag's own go.mod.
build_kubernetes() {
  local v=$KUBERNETES_VERSION cmd todo=()
  for cmd in kube-apiserver kube-controller-manager kubectl; do
    cached "$cmd" "v$v" || todo+=("$cmd")
  done
  [ ${#todo[@]} -gt 0 ] || { log "kube-apiserver, kube-controller-manager, kubectl v$v: cached"; return; }
  log "${todo[*]} v$v: building"
  local start=$SECONDS d mod staging minor
  minor=$(printf '%s' "$v" | cut -d. -f2)
  staging=v0.${v#1.}
  mod=$(module_json "k8s.io/kubernetes@v$v" GoMod)
  d=$(wrapper kubernetes)
  (
    cd "$d"
    sed -n 's#^[[:space:]]*\(k8s\.io/[^ ]*\) => \./staging/src/.*#\1#p' "$mod" | while read -r m; do
      go mod edit -replace="$m=$m@$staging"
    done
    sed -n 's/^godebug[[:space:]]\+\(.*=.*\)$/\1/p' "$mod" | while read -r g; do
      go mod edit -godebug="$g"
    done
    pkgs=()
    for cmd in "${todo[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$cmd@v$v"); done
    go get "${pkgs[@]}"
    ld="-s -w -X k8s.io/component-base/version.gitVersion=v$v"
    ld="$ld -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
    ld="$ld -X k8s.io/component-base/version.gitTreeState=clean"
    ld="$ld -X k8s.io/client-go/pkg/version.gitVersion=v$v"
    ld="$ld -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
    for cmd in "${todo[@]}"; do
      go build -trimpath -ldflags="$ld" -o "$BIN/$cmd" "k8s.io/kubernetes/cmd/$cmd"
      stamp "$cmd" "v$v"
      log "$cmd v$v: built ($((SECONDS - start)) s since the step began)"
    done
  )
  rm -rf "$d"
}

# --- Crossplane core: the v2.0.x module has no replace directive, so it builds from its own
# downloaded source (its go.mod and go.sum decide every dependency), like build-tools.sh's CLIs.
build_crossplane_core() {
  local v=$CROSSPLANE_V2 dir assets=$TOOLS/crossplane-core-2.0
  dir=$(module_json "github.com/crossplane/crossplane/v2@$v" Dir)
  # What `core init` installs, and the ClusterRoles the Helm chart gives core (rendered by
  # tools/cluster.py): read from the same release's source, refreshed on every run.
  rm -rf "$assets"
  mkdir -p "$assets/crds"
  cp "$dir"/cluster/crds/*.yaml "$assets/crds/"
  cp "$dir/cluster/charts/crossplane/templates/clusterrole.yaml" "$assets/"
  chmod -R u+w "$assets"
  cached crossplane-core-2.0 "$v" && { log "crossplane-core-2.0 $v: cached"; return; }
  log "crossplane-core-2.0 $v: building"
  local start=$SECONDS
  (cd "$dir" && go build -trimpath \
    -ldflags="-s -w -X=github.com/crossplane/crossplane/v2/internal/version.version=$v" \
    -o "$BIN/crossplane-core-2.0" ./cmd/crossplane)
  stamp crossplane-core-2.0 "$v"
  log "crossplane-core-2.0 $v: built in $((SECONDS - start)) s"
}

# --- an OCI registry: a plain module with no replace directive, built from its own source.
build_registry() {
  local v=$GGCR_VERSION dir
  cached registry "$v" && { log "registry $v: cached"; return; }
  log "registry $v: building"
  local start=$SECONDS
  dir=$(module_json "github.com/google/go-containerregistry@$v" Dir)
  (cd "$dir" && go build -trimpath -ldflags='-s -w' -o "$BIN/registry" ./cmd/registry)
  stamp registry "$v"
  log "registry $v: built in $((SECONDS - start)) s"
}

# Arguments pick steps (etcd, kubernetes, crossplane_core, registry); none builds them all.
steps=("$@")
[ $# -gt 0 ] || steps=(etcd kubernetes crossplane_core registry)
for s in "${steps[@]}"; do "build_$s"; done
log "cluster tools in $TOOLS"
