# nodes.sh is the real-node half of cluster.sh, which sources it: real
# kubelets beside the kwok nodes, each with its own mount and PID namespace,
# containerd, kubelet, CNI bridge and local address, one kube-proxy for all,
# and the egress guard that keeps every packet on this machine. See
# ../shared/notes/real-nodes.md for what was verified here.
#
# Everything it makes is recorded under $state/made/ (one file per kind:
# links, chains, sysctls, cgroups), and nodes_down removes exactly that.
#
# Addresses, for plane number P = (port base / 100) % 100 (64 by default):
#   10.99.P.1           the API server's address (a veth, rmP-api), which
#                       pods reach and the kubernetes Service's endpoint names
#   10.99.P.(10+i)      node i's address (a veth, rmP-n<i>)
#   10.(100+P).i.0/24   node i's pods, on its bridge rmP-b<i>
#   10.0.0.0/24         the Service CIDR (kube-apiserver's flag)
# Only one plane on a machine may run real nodes: kube-proxy's chains are
# the machine's.

plane=$(((base / 100) % 100))
node_net=10.99.$plane
api_addr=$node_net.1
pod_net=10.$((100 + plane))
cluster_cidr=$pod_net.0.0/16
service_cidr=10.0.0.0/24
kwok_cidr=10.244.0.0/16
guard_chain=RM$plane-EGRESS
proxy_health_port=$((base + 56))
proxy_metrics_port=$((base + 49))
# The sysctls that kubelet, kube-proxy and the bridge plugin may set: their
# values before "up", restored by "down".
node_sysctls=(net.ipv4.ip_forward net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables
	vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
	kernel.keys.root_maxbytes net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
	net.netfilter.nf_conntrack_tcp_timeout_close_wait)

real_node_count() { cat "$state/real-nodes" 2>/dev/null || echo 0; }
node_name() { echo "real-$1"; }
node_dir() { echo "$state/nodes/$(node_name "$1")"; }

record() { # record KIND VALUE: remember something made, for nodes_down
	mkdir -p "$state/made"
	echo "$2" >>"$state/made/$1"
}

# guard_up installs the egress guard, before anything of the plane runs: a
# packet for the Service CIDR or any pod or node CIDR in use is rejected,
# in OUTPUT and FORWARD, unless it is for this machine (a local address, or
# a node's pod subnet, whose bridge nodes_net made); and dropped in mangle
# POSTROUTING, whatever filter rule let it through, when it leaves by a
# device that is not the plane's. A ClusterIP that
# kube-proxy has not rewritten then fails here, at once, instead of leaving
# through the uplink for whatever answers it outside.
#
# OUTPUT cannot trust -o: kube-proxy's DNAT in nat OUTPUT reroutes a
# packet, but the filter chains of the same hook still see the device the
# first route chose (the uplink, for a ClusterIP). So the rules match
# destinations, after DNAT, not devices.
guard_up() {
	local n=$1 i
	chains_before
	iptables -w -N "$guard_chain"
	record chains "iptables filter $guard_chain"
	iptables -w -A "$guard_chain" -m addrtype --dst-type LOCAL -j RETURN
	for i in $(seq 1 "$n"); do
		iptables -w -A "$guard_chain" -d "$pod_net.$i.0/24" -j RETURN
	done
	for cidr in "$service_cidr" "$cluster_cidr" "$kwok_cidr" "$node_net.0/24"; do
		iptables -w -A "$guard_chain" -d "$cidr" -j REJECT
	done
	iptables -w -I OUTPUT 1 -j "$guard_chain"
	iptables -w -I FORWARD 1 -j "$guard_chain"
	# The backstop, after every filter rule: kube-proxy later puts its own
	# jumps above the guard, and its KUBE-FORWARD accepts the packets it
	# marked for masquerade (a pod's, to a NodePort whose endpoint is a
	# kwok pod, say). In mangle POSTROUTING the device is the one the packet
	# really leaves by: anything for these CIDRs that leaves by neither
	# loopback nor one of the plane's links is dropped.
	iptables -w -t mangle -N "$guard_chain"
	record chains "iptables mangle $guard_chain"
	iptables -w -t mangle -A "$guard_chain" -o lo -j RETURN
	iptables -w -t mangle -A "$guard_chain" -o "rm$plane-+" -j RETURN
	for cidr in "$service_cidr" "$cluster_cidr" "$kwok_cidr" "$node_net.0/24"; do
		iptables -w -t mangle -A "$guard_chain" -d "$cidr" -j DROP
	done
	iptables -w -t mangle -I POSTROUTING 1 -j "$guard_chain"
	# Checked before anything else starts: no kube-proxy rules exist yet,
	# so a ClusterIP must be refused here and now.
	local t0=$SECONDS rc=0
	curl -s --max-time 5 -o /dev/null "http://10.0.0.251:80/" || rc=$?
	if [ "$rc" != 7 ] || [ $((SECONDS - t0)) -gt 2 ]; then
		die "the egress guard does not refuse a ClusterIP at once (curl exit $rc after $((SECONDS - t0))s; want 7, connection refused)"
	fi
	log "egress guard: $service_cidr, $cluster_cidr, $kwok_cidr and $node_net.0/24 stay on this machine"
}

veth() { # veth NAME ADDRESS: a veth pair with ADDRESS/32 on NAME, both ends up
	ip link add "$1" type veth peer name "$1p"
	record links "$1"
	ip addr add "$2/32" dev "$1"
	ip link set "$1p" up
	ip link set "$1" up
}

# nodes_net makes the addresses, the API server's and one per node, and
# each node's pod bridge (which the bridge plugin then uses): a pod subnet
# is routed here from the start, even while its node is down.
nodes_net() {
	local n=$1 i
	for s in "${node_sysctls[@]}"; do
		local v
		v=$(sysctl -n "$s" 2>/dev/null) && record sysctls "$s=$v"
	done
	veth "rm$plane-api" "$api_addr"
	for i in $(seq 1 "$n"); do
		veth "rm$plane-n$i" "$node_net.$((10 + i))"
		ip link add "rm$plane-b$i" type bridge
		record links "rm$plane-b$i"
		ip addr add "$pod_net.$i.1/24" dev "rm$plane-b$i"
		ip link set "rm$plane-b$i" up
	done
}

node_pki() { # node_pki N: certificates and kubeconfigs for the nodes and kube-proxy
	local n=$1 i
	(
		cd "$state/pki"
		for i in $(seq 1 "$n"); do
			cert "$(node_name "$i")" "/O=system:nodes/CN=system:node:$(node_name "$i")"
		done
		cert kube-proxy "/CN=system:kube-proxy"
		cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
	)
	for i in $(seq 1 "$n"); do
		mkdir -p "$(node_dir "$i")"
		kubeconfig "$(node_name "$i")" "$(node_dir "$i")/kubeconfig"
	done
	kubeconfig kube-proxy "$state/kube-proxy.kubeconfig"
}

# node_files writes node i's configuration and the files of its host: an
# /etc, /usr and /var of its own (overlays on the machine's), with Fedora
# CoreOS's os-release, a Zincati, a machine id and Zincati's group.
node_files() {
	local i=$1 d
	d=$(node_dir "$i")
	mkdir -p "$d"/{etc,usr,var}/{upper,work} "$d/etc/upper/zincati/config.d" "$d/usr/upper/lib" \
		"$d/usr/upper/libexec" "$d/cni" "$d/containerd" "$d/kubelet" "$d/log"
	[ -f "$d/usr/upper/lib/os-release" ] || os_release "$d" 42.20250901.3.0
	printf '#!/bin/sh\n# a stand-in: the real-node plane runs no Zincati\nexit 0\n' >"$d/usr/upper/libexec/zincati"
	chmod 755 "$d/usr/upper/libexec/zincati"
	[ -f "$d/etc/upper/machine-id" ] || tr -d - </proc/sys/kernel/random/uuid >"$d/etc/upper/machine-id"
	{ grep -v '^zincati:' /etc/group; echo "zincati:x:977:"; } >"$d/etc/upper/group"
	cat >"$d/cni/10-rm.conflist" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "rm$plane-$i",
  "plugins": [{
    "type": "bridge", "bridge": "rm$plane-b$i", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "$pod_net.$i.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}
  }]
}
CNI
	cat >"$d/containerd.toml" <<TOML
version = 2
root = "$d/containerd/root"
state = "/run/containerd"
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "reboot-manager/pause:test"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$d/cni"
TOML
	cat >"$d/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This host: cgroup v1, inside a container (../shared/notes/real-nodes.md).
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
port: $((base + 60 + i))
healthzPort: 0
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $state/pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$d/containerd.sock
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
serializeImagePulls: false
# The images come from "cluster.sh import": never collect them, never
# evict for this machine's disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "0%", imagefs.available: "0%"}
shutdownGracePeriod: 0s
YAML
}

# os_release DIR VERSION: Fedora CoreOS's os-release, at VERSION, for the
# node at DIR (what kubelet's osImage and the agent's os-version read).
os_release() {
	cat >"$1/usr/upper/lib/os-release" <<OS
NAME="Fedora Linux"
VERSION="$2 (CoreOS)"
ID=fedora
VERSION_ID=${2%%.*}
VARIANT="CoreOS"
VARIANT_ID=coreos
PRETTY_NAME="Fedora CoreOS $2"
OS
}

# node_start N: start node i, a PID namespace whose init is node-init.sh; a
# new boot id each time (its "boot").
node_start() {
	local i=$1 d bin
	d=$(node_dir "$i")
	bin=$("$here/build.sh")
	tr -d '\n' </proc/sys/kernel/random/uuid >"$d/boot_id"
	echo >>"$d/boot_id"
	# --kill-child: killing the recorded unshare kills the namespace's init,
	# and with it everything in the namespace.
	start "node-$(node_name "$i")" unshare --pid --fork --kill-child --mount --propagation private --mount-proc \
		env NODE_DIR="$d" NODE_NAME="$(node_name "$i")" NODE_IP="$node_net.$((10 + i))" BIN="$bin" \
		STATE="$state" "$here/node-init.sh"
}

node_ready() { # node_ready NAME: the Node is Ready
	"$("$here/build.sh")/kubectl" --kubeconfig="$state/kubeconfig" get node "$1" \
		-o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True
}

# nodes_up starts kube-proxy and n nodes, after the API server.
nodes_up() {
	local n=$1 bin i
	bin=$("$here/build.sh")
	# The node's stand-in for systemd, and the pause image (also the test
	# workloads' image), built from this repository.
	(cd "$repo" && CGO_ENABLED=0 go build -trimpath -o "$state/bin/" ./test/nodesystemd ./test/pause) ||
		die "building nodesystemd and pause failed"
	mkdir -p "$state/images"
	go -C "$repo/test/image" run . single -binary "$state/bin/pause" -tag reboot-manager/pause:test \
		-out "$state/images/pause.tar" 2>/dev/null || die "building the pause image failed"
	start kube-proxy "$bin/kube-proxy" --kubeconfig="$state/kube-proxy.kubeconfig" --proxy-mode=iptables \
		--cluster-cidr="$cluster_cidr" --hostname-override="$(node_name 1)" --conntrack-max-per-core=0 \
		--nodeport-addresses="$node_net.0/24" --healthz-bind-address="127.0.0.1:$proxy_health_port" \
		--metrics-bind-address="127.0.0.1:$proxy_metrics_port"
	for i in $(seq 1 "$n"); do
		node_files "$i"
		node_start "$i"
	done
	for i in $(seq 1 "$n"); do
		wait_for 180 "node $(node_name "$i")" node_ready "$(node_name "$i")"
	done
	log "real nodes ready: $(for i in $(seq 1 "$n"); do printf '%s (%s) ' "$(node_name "$i")" "$node_net.$((10 + i))"; done)"
}

node_pid() { cat "$state/pids/node-$1.pid" 2>/dev/null; }

# node_kill NAME: power the node off: its PID namespace's init is killed,
# and the kernel kills everything in it (kubelet, containerd, every
# container).
node_kill() {
	local pid
	pid=$(node_pid "$1")
	[ -n "$pid" ] || return 0
	kill -9 "$pid" 2>/dev/null || true
	while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
	rm -f "$state/pids/node-$1.pid"
}

# reboot NAME [SECONDS [VERSION]]: power off, stay down SECONDS, boot with
# a new id, into Fedora CoreOS VERSION when given (an update, as Zincati's
# reboots are; without one the node comes back on the version it had).
reboot_node() {
	local name=$1 down=${2:-0} version=${3:-} i
	i=${name#real-}
	[ -d "$state/nodes/$name" ] && [ -n "$(node_pid "$name")" ] || die "no running real node $name"
	node_kill "$name"
	log "$name powered off; booting it again in ${down}s"
	sleep "$down"
	[ -z "$version" ] || os_release "$(node_dir "$i")" "$version"
	node_start "$i"
	log "$name booting${version:+ Fedora CoreOS $version}, boot id $(cat "$(node_dir "$i")/boot_id")"
}

# exec_node NAME CMD...: run CMD on the node, in its mount namespace (as
# its host sees files: through the overlays, never under them).
exec_node() {
	local pid init
	pid=$(node_pid "$1")
	[ -n "$pid" ] || die "no running real node $1"
	init=$(pgrep -P "$pid" | head -n 1)
	[ -n "$init" ] || die "node $1 has no init"
	shift
	nsenter --target "$init" --mount -- "$@"
}

# import TARBALL...: docker-loadable images, into every real node's
# containerd now and at its every boot.
import_images() {
	mkdir -p "$state/images"
	local f name
	for f in "$@"; do
		[ -f "$f" ] || die "no image tarball $f"
		cp "$f" "$state/images/$(basename "$f")"
		for name in $(ls "$state/nodes" 2>/dev/null); do
			ctr --address "$state/nodes/$name/containerd.sock" -n k8s.io images import --no-unpack=false "$f" >/dev/null ||
				die "import $f into $name"
		done
		log "imported $(basename "$f") into: $(ls "$state/nodes" | tr '\n' ' ')"
	done
}

# nodes_down removes what nodes_up and guard_up made, by what they
# recorded: nodes (by PID), kube-proxy's and kubelet's chains, the guard,
# links, cgroups and sysctls.
nodes_down() {
	local f name
	for f in "$state"/pids/node-*.pid; do
		[ -f "$f" ] || continue
		name=${f##*/node-}
		node_kill "${name%.pid}"
	done
	if [ -f "$state/pids/kube-proxy.pid" ]; then
		kill "$(cat "$state/pids/kube-proxy.pid")" 2>/dev/null || true
		rm -f "$state/pids/kube-proxy.pid"
	fi
	local bin
	if bin=$("$here/build.sh" 2>/dev/null) && [ -f "$state/made/links" ]; then
		"$bin/kube-proxy" --cleanup --proxy-mode=iptables >/dev/null 2>&1 || true
		"$bin/kube-proxy" --cleanup --proxy-mode=nftables >/dev/null 2>&1 || true
	fi
	# kubelet's and kube-proxy's chains that were not there before "up", in
	# both families and every table they use.
	local ipt table chain
	for ipt in iptables ip6tables; do
		for table in filter nat mangle; do
			for chain in $(kube_chains "$ipt" "$table"); do
				grep -qx "$ipt $table $chain" "$state/made/chains-before" 2>/dev/null || drop_chain "$ipt" "$table" "$chain"
			done
		done
	done
	if [ -f "$state/made/chains" ]; then
		while read -r ipt table chain; do drop_chain "$ipt" "$table" "$chain"; done <"$state/made/chains"
	fi
	if [ -f "$state/made/links" ]; then
		while read -r link; do ip link del "$link" 2>/dev/null || true; done <"$state/made/links"
	fi
	if [ -f "$state/made/sysctls" ]; then
		while IFS== read -r key value; do sysctl -q -w "$key=$value" >/dev/null 2>&1 || true; done <"$state/made/sysctls"
	fi
	# The cgroups that runc made for the nodes' containers, empty now.
	if [ -d "$state/nodes" ]; then
		find /sys/fs/cgroup -depth -mindepth 2 -type d \( -path '*/k8s.io/*' -o -name k8s.io -o -path '*/kubepods*' \) \
			-exec rmdir {} + 2>/dev/null || true
	fi
}

kube_chains() { # kube_chains IPTABLES TABLE: the KUBE-* chains there
	$1 -w -t "$2" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}' || true
}

# chains_before records the KUBE-* chains that exist before "up" (a host
# with a kubelet of its own has some), which "down" leaves alone.
chains_before() {
	local ipt table chain
	mkdir -p "$state/made"
	: >"$state/made/chains-before"
	for ipt in iptables ip6tables; do
		for table in filter nat mangle; do
			for chain in $(kube_chains "$ipt" "$table"); do echo "$ipt $table $chain" >>"$state/made/chains-before"; done
		done
	done
}

drop_chain() { # drop_chain IPTABLES TABLE CHAIN: unlink it everywhere, flush and delete it
	local ipt=$1 table=$2 chain=$3 rule
	$ipt -w -t "$table" -S 2>/dev/null | grep -e "-j $chain\( \|$\)" | while read -r rule; do
		# shellcheck disable=SC2086
		$ipt -w -t "$table" ${rule/-A /-D } 2>/dev/null || true
	done || true
	$ipt -w -t "$table" -F "$chain" 2>/dev/null || true
	$ipt -w -t "$table" -X "$chain" 2>/dev/null || true
}
