#!/usr/bin/env bash
# Build the real tools that judge Fabric's output, from Go modules, into a cache outside the repo.
#
#   FABRIC_TOOLS (default ~/.cache/fabric-tools)
#     bin/crossplane-1.16   crank v1.16.0  (`crossplane beta render`, the v1beta1 function protocol)
#     bin/crossplane-1.20   crank v1.20.11 (`crossplane render --extra-resources`)
#     bin/crossplane-2.0    crank v2.0.8   (`crossplane render --required-resources`; the homelab's line)
#     bin/terraform         Terraform 1.5.5 (the version every provider-terraform release runs)
#     tf-plugins/registry.terraform.io/bpg/proxmox/<BPG_VERSION>/linux_amd64/  (for init -plugin-dir)
#
# Each tool is built once and reused: a tool whose binary already reports the pinned version is
# skipped. One `go install` per tool, never a shared tools module: MVS would lift shared
# dependencies (k8s.io, grpc) to the highest version any one tool needs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
LOG_TAG=tools
# shellcheck source=tools/lib.sh
. "$here/lib.sh"

# go_install NAME MODULE SUBPACKAGE VERSION LDFLAGS: build MODULE/SUBPACKAGE@VERSION into $BIN/NAME.
#
# Like `go install pkg@version` (the module's own go.mod and go.sum decide every dependency), but
# from the module's downloaded source directory: `go install` also asks the proxy for the module's
# version list (to look for deprecations), and the proxy here refuses that list for some modules.
go_install() {
  local name=$1 module=$2 sub=$3 version=$4 ldflags=$5 dir
  if cached "$name" "$version"; then
    log "$name $version: cached"
    return
  fi
  log "$name $version: building $module/$sub@$version"
  local start=$SECONDS
  dir=$(module_json "$module@$version" Dir)
  (cd "$dir" && go build -trimpath -ldflags="-s -w $ldflags" -o "$BIN/$name" "./$sub")
  stamp "$name" "$version"
  log "$name $version: built in $((SECONDS - start)) s"
}

go_install crossplane-2.0 github.com/crossplane/crossplane/v2 cmd/crank "$CROSSPLANE_V2" \
  "-X=github.com/crossplane/crossplane/v2/internal/version.version=$CROSSPLANE_V2"
go_install crossplane-1.20 github.com/crossplane/crossplane cmd/crank "$CROSSPLANE_V1_20" \
  "-X=github.com/crossplane/crossplane/internal/version.version=$CROSSPLANE_V1_20"
go_install crossplane-1.16 github.com/crossplane/crossplane cmd/crank "$CROSSPLANE_V1_16" \
  "-X=github.com/crossplane/crossplane/internal/version.version=$CROSSPLANE_V1_16"
go_install terraform github.com/hashicorp/terraform . "v$TERRAFORM_VERSION" ""
go_install terraform-provider-proxmox github.com/bpg/terraform-provider-proxmox . "v$BPG_VERSION" \
  "-X=main.version=$BPG_VERSION"

# The provider in the unpacked plugin-directory layout `terraform init -plugin-dir` reads.
plugin=$TOOLS/tf-plugins/registry.terraform.io/bpg/proxmox/$BPG_VERSION/linux_amd64
mkdir -p "$plugin"
cp -f "$BIN/terraform-provider-proxmox" "$plugin/terraform-provider-proxmox_v$BPG_VERSION"

# `crossplane beta validate` always adds the Crossplane image as a dependency and pulls it unless
# its cache directory exists. This entry holds the core CRDs of the pinned v2 release (from its
# module source), so Compositions and XRDs validate against the real schemas, offline.
cache=$TOOLS/validate-cache/offline/crossplane@$CROSSPLANE_V2
mkdir -p "$cache"
cp -f "$(module_json "github.com/crossplane/crossplane/v2@$CROSSPLANE_V2" Dir)"/cluster/crds/*.yaml "$cache/"
chmod -R u+w "$cache"
log "all tools in $TOOLS"
# The one-machine cluster (etcd, kube-apiserver, Crossplane core, ...): tools/build-cluster-tools.sh.
bash "$here/build-cluster-tools.sh"
