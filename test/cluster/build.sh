#!/usr/bin/env bash
# build.sh builds the local control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, kwok) and the real nodes' kubelet
# and kube-proxy from Go modules, and
# caches the binaries outside the repository, keyed by a hash of the tools
# module and this script. It prints the bin directory on stdout.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
tools="$here/tools"
k8s_version=v1.37.2

key=$(cat "$tools/go.mod" "$tools/go.sum" "$0" | sha256sum | cut -c1-16)
cache_root=${REBOOT_MANAGER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reboot-manager}
dir="$cache_root/cluster-$key"
bin="$dir/bin"

if [ -f "$dir/.complete" ]; then
	echo "$bin"
	exit 0
fi

mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if [ -f "$dir/.complete" ]; then
	echo "$bin"
	exit 0
fi

echo "building the control plane into $bin (about 10 minutes cold on 2 cores)" >&2
start=$(date +%s)
rm -rf "$bin.tmp"
mkdir -p "$bin.tmp"

minor=${k8s_version#v1.}
minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags="$ldflags -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
	ldflags="$ldflags -X $pkg.gitTreeState=clean"
done

cd "$tools"
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$bin.tmp/" \
	go.etcd.io/etcd/server/v3 \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kube-scheduler \
	k8s.io/kubernetes/cmd/kubelet \
	k8s.io/kubernetes/cmd/kube-proxy \
	k8s.io/kubernetes/cmd/kubectl \
	sigs.k8s.io/kwok/cmd/kwok >&2
mv "$bin.tmp/v3" "$bin.tmp/etcd" 2>/dev/null || mv "$bin.tmp/server" "$bin.tmp/etcd"
rm -rf "$bin"
mv "$bin.tmp" "$bin"
touch "$dir/.complete"
echo "control plane built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
