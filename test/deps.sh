#!/usr/bin/env bash
# deps.sh installs the Debian packages the tests and `make run` need, when
# they are missing: openssl and curl (the local plane's PKI and probes),
# iproute2 (network namespaces posing as nodes), dbus (a private bus for the agent's D-Bus tests), systemd-container and
# debootstrap (the agent against a real systemd), containerd and runc (test/image runs the built images in a real
# OCI runtime; the real nodes run pods with them), iptables and containernetworking-plugins (the real nodes'
# kube-proxy, egress guard and pod bridges). Needs root to install.
set -euo pipefail
need=()
for cmd in openssl curl flock setsid nsenter unshare ip dbus-daemon systemd-nspawn debootstrap containerd ctr runc containerd-shim-runc-v2 iptables ip6tables; do
	command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || need+=(/usr/lib/cni/bridge)
[ ${#need[@]} -eq 0 ] && exit 0
echo "deps: installing packages for: ${need[*]}" >&2
if [ "$(id -u)" != 0 ]; then
	echo "deps: run as root, or: apt-get install openssl curl util-linux iproute2 dbus systemd-container debootstrap containerd runc iptables containernetworking-plugins" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq openssl curl util-linux iproute2 dbus systemd-container debootstrap containerd runc iptables containernetworking-plugins >/dev/null
