#!/usr/bin/env bash
# node-init.sh is a real node's init (nodes.sh starts it as PID 1 of a PID
# and mount namespace of its own, so killing it powers the node off). It
# makes the node's host view, then runs its system bus, containerd and
# kubelet until it is killed:
#   /proc/sys/kernel/random/boot_id   this boot's id ($NODE_DIR/boot_id)
#   /etc, /usr, /var                  overlays on the machine's, the node's
#                                     changes in $NODE_DIR/{etc,usr,var}/upper
#   /run                              a tmpfs, as at every boot (with the
#                                     machine's xtables lock)
# A hostPath resolves here, so each node has its own drop-in directory,
# os-release, machine id, boot id and D-Bus socket.
set -euo pipefail
d=$NODE_DIR

mount --bind "$d/boot_id" /proc/sys/kernel/random/boot_id
for dir in etc usr var; do
	mount -t overlay "node-$dir" -o "lowerdir=/$dir,upperdir=$d/$dir/upper,workdir=$d/$dir/work" "/$dir"
done
touch /run/xtables.lock
mkdir -p "$d/run-host"
mount --bind /run "$d/run-host"
mount -t tmpfs -o mode=755 "node-run" /run
touch /run/xtables.lock
mount --bind "$d/run-host/xtables.lock" /run/xtables.lock
umount -l "$d/run-host"
mkdir -p /run/systemd/journal /run/dbus

log() { echo "node-init $NODE_NAME: $*" >&2; }
log "booting, boot id $(cat /proc/sys/kernel/random/boot_id)"

"$STATE/bin/nodesystemd" -socket /run/dbus/system_bus_socket &
containerd --config "$d/containerd.toml" >>"$d/containerd.log" 2>&1 &
for _ in $(seq 1 100); do
	ctr --address "$d/containerd.sock" version >/dev/null 2>&1 && break
	sleep 0.1
done
for f in "$STATE"/images/*.tar; do
	[ -f "$f" ] || continue
	ctr --address "$d/containerd.sock" -n k8s.io images import "$f" >/dev/null || log "cannot import $f"
done
"$BIN/kubelet" --config="$d/kubelet.yaml" --kubeconfig="$d/kubeconfig" --root-dir="$d/kubelet" \
	--hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
	--node-labels=rebootmanager.test/runtime=real >>"$d/kubelet.log" 2>&1 &
wait -n
log "a node process exited; powering off"
