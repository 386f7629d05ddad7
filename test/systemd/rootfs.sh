#!/usr/bin/env bash
# rootfs.sh builds a minimal Debian root filesystem with systemd, D-Bus and a
# dummy zincati.service (it prints the *.toml drop-ins it sees, then sleeps),
# for booting with systemd-nspawn in the agent's tier-2 tests. The result is
# cached outside the repository, keyed by this script's hash; it prints the
# directory. Needs root, debootstrap and systemd-container.
set -euo pipefail
key=$(sha256sum "$0" | cut -c1-16)
cache_root=${REBOOT_MANAGER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reboot-manager}
dir=$cache_root/rootfs-$key
if [ -f "$dir/.complete" ]; then
	echo "$dir/root"
	exit 0
fi
for cmd in debootstrap systemd-nspawn; do
	command -v "$cmd" >/dev/null || { echo "rootfs: $cmd is missing (apt-get install debootstrap systemd-container)" >&2; exit 1; }
done
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if [ -f "$dir/.complete" ]; then
	echo "$dir/root"
	exit 0
fi
mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
[ -n "$mirror" ] || { echo "rootfs: no Debian mirror found in /etc/apt/sources.list.d/debian.sources" >&2; exit 1; }
rm -rf "$dir/root"
echo "rootfs: debootstrap into $dir/root (about a minute)" >&2
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,libpam-systemd bookworm "$dir/root" "$mirror" >&2
r=$dir/root
cat >"$r/usr/local/bin/zincati" <<'SH'
#!/bin/sh
echo "zincati dummy started"
for f in /etc/zincati/config.d/*.toml; do
	[ -e "$f" ] || continue
	echo "drop-in $f:"
	cat "$f"
done
exec sleep infinity
SH
chmod +x "$r/usr/local/bin/zincati"
cat >"$r/etc/systemd/system/zincati.service" <<'UNIT'
[Unit]
Description=Zincati stand-in for reboot-manager tests
[Service]
ExecStart=/usr/local/bin/zincati
[Install]
WantedBy=multi-user.target
UNIT
mkdir -p "$r/etc/systemd/system/multi-user.target.wants" "$r/etc/zincati/config.d"
ln -sf /etc/systemd/system/zincati.service "$r/etc/systemd/system/multi-user.target.wants/zincati.service"
: >"$r/etc/machine-id"
ln -sf /dev/null "$r/etc/systemd/system/console-getty.service"
ln -sf /dev/null "$r/etc/systemd/system/getty@.service"
touch "$dir/.complete"
echo "$dir/root"
