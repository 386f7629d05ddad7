#!/usr/bin/env bash
# cluster.sh runs a real Kubernetes control plane on 127.0.0.1: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler and kwok (simulated
# nodes), with real PKI and RBAC, built from Go modules by build.sh.
#
#   cluster.sh up [--real-nodes N]
#                       start it in the background and wait until it is ready;
#                       with N > 0 ($CLUSTER_REAL_NODES), also N real kubelet
#                       nodes, real-1 … real-N, and kube-proxy (nodes.sh; root)
#   cluster.sh down     stop exactly the processes "up" started, remove the state
#   cluster.sh status   say whether it runs
#   cluster.sh restart-apiserver [SECONDS]
#                       stop kube-apiserver, keep it down SECONDS, start it again
#   cluster.sh start-apiserver
#                       start kube-apiserver again if it is not running
#   cluster.sh restart-controllers
#                       restart kube-controller-manager, kube-scheduler and kwok
#                       (after an API server outage test, for the next test)
#   cluster.sh reboot NODE [SECONDS [VERSION]]
#                       power a real node off, keep it down SECONDS, boot it
#                       with a new boot id (into Fedora CoreOS VERSION: an update)
#   cluster.sh exec NODE CMD...
#                       run CMD in a real node's mount namespace
#   cluster.sh import TARBALL...
#                       docker-loadable images into every real node's containerd
#
# State lives in $CLUSTER_DIR (default: <repo>/.cluster): kubeconfig (admin),
# env (source it for KUBECONFIG and PATH), pki/, logs/, pids/.
# Ports: $CLUSTER_PORT_BASE (default 26400) + 43 apiserver, +79/+80 etcd,
# +57 controller-manager, +59 scheduler, +47 kwok; with real nodes, +61… the
# kubelets, +56/+49 kube-proxy's health and metrics.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=${CLUSTER_DIR:-$repo/.cluster}
base=${CLUSTER_PORT_BASE:-26400}
api_port=$((base + 43))
etcd_port=$((base + 79))
etcd_peer_port=$((base + 80))
kcm_port=$((base + 57))
sched_port=$((base + 59))
kwok_port=$((base + 47))
components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
# shellcheck source=nodes.sh
. "$here/nodes.sh"

log() { echo "cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

alive() { # alive NAME: the recorded process runs
	local f="$state/pids/$1.pid"
	[ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

ready() {
	[ -f "$state/kubeconfig" ] || return 1
	for c in "${components[@]}"; do alive "$c" || return 1; done
	curl -sf --max-time 2 --cacert "$state/pki/ca.crt" --cert "$state/pki/admin.crt" --key "$state/pki/admin.key" \
		"https://127.0.0.1:$api_port/readyz" >/dev/null
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # wait_for SECONDS WHAT CMD...
	local deadline=$((SECONDS + $1)) what=$2
	shift 2
	until "$@" >/dev/null 2>&1; do
		if [ $SECONDS -ge $deadline ]; then
			log "$what did not become ready; the last log lines:"
			tail -n 20 "$state/logs/"*.log >&2 || true
			return 1
		fi
		sleep 0.2
	done
}

start() { # start NAME CMD...: run in the background, record the PID
	local name=$1
	shift
	setsid "$@" >"$state/logs/$name.log" 2>&1 </dev/null &
	echo $! >"$state/pids/$name.pid"
}

pki() {
	local d=$state/pki
	mkdir -p "$d"
	cd "$d"
	openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=reboot-manager-test-ca" 2>/dev/null
	cert() { # cert NAME SUBJECT [SAN]
		openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
		if [ -n "${3:-}" ]; then
			printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$3" >"$1.ext"
		else
			printf 'extendedKeyUsage=clientAuth\n' >"$1.ext"
		fi
		openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 3650 -extfile "$1.ext" 2>/dev/null
	}
	cert apiserver "/CN=kube-apiserver" "IP:127.0.0.1,IP:10.0.0.1,IP:$api_addr,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	cert admin "/O=system:masters/CN=admin"
	cert controller-manager "/CN=system:kube-controller-manager"
	cert scheduler "/CN=system:kube-scheduler"
	cert kwok "/O=system:masters/CN=kwok"
	openssl genrsa -out sa.key 2048 2>/dev/null
	openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
	cd - >/dev/null
}

kubeconfig() { # kubeconfig USER FILE
	cat >"$2" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $state/pki/ca.crt
users:
- name: $1
  user:
    client-certificate: $state/pki/$1.crt
    client-key: $state/pki/$1.key
contexts:
- name: local
  context: {cluster: local, user: $1}
current-context: local
KC
}

kwok_stages() {
	local dir
	dir=$(cd "$here/tools" && go mod download -json sigs.k8s.io/kwok | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
	[ -d "$dir" ] || die "cannot find the kwok module source for its default stages"
	local s=$dir/kustomize/stage
	for f in "$s/node/fast/node-initialize.yaml" "$s/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
		"$s/pod/fast/pod-ready.yaml" "$s/pod/fast/pod-complete.yaml" "$s/pod/fast/pod-delete.yaml"; do
		echo "---"
		cat "$f"
	done
}

# start_apiserver BIN: start kube-apiserver and wait until it is ready. With
# real nodes, it listens on every address and advertises api_addr, which the
# pods reach and the kubernetes Service's endpoints name.
start_apiserver() {
	local bin=$1 pki=$state/pki
	local net=(--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --endpoint-reconciler-type=none)
	if [ "$(real_node_count)" -gt 0 ]; then
		net=(--bind-address=0.0.0.0 --advertise-address="$api_addr" --endpoint-reconciler-type=lease
			--kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" --kubelet-client-key="$pki/apiserver-kubelet-client.key"
			--kubelet-preferred-address-types=InternalIP)
	fi
	start kube-apiserver "$bin/kube-apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" \
		"${net[@]}" --secure-port="$api_port" \
		--tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" --client-ca-file="$pki/ca.crt" \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
		--service-cluster-ip-range="$service_cidr" --authorization-mode=Node,RBAC --allow-privileged=true
	wait_for 60 kube-apiserver curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
		"https://127.0.0.1:$api_port/readyz"
}

# start_controllers BIN: start kube-controller-manager and kube-scheduler.
start_controllers() {
	local bin=$1 pki=$state/pki
	# A real node that stays down longer than this goes NotReady (the
	# default, 50 s, would make every such test wait a minute).
	local kcm_real=()
	if [ "$(real_node_count)" -gt 0 ]; then kcm_real=(--node-monitor-grace-period=30s); fi
	start kube-controller-manager "$bin/kube-controller-manager" \
		--kubeconfig="$state/controller-manager.kubeconfig" \
		--authentication-kubeconfig="$state/controller-manager.kubeconfig" \
		--authorization-kubeconfig="$state/controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port="$kcm_port" --leader-elect=false \
		--use-service-account-credentials=true --service-account-private-key-file="$pki/sa.key" \
		--root-ca-file="$pki/ca.crt" --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
		--controllers='*' "${kcm_real[@]}"
	start kube-scheduler "$bin/kube-scheduler" --kubeconfig="$state/scheduler.kubeconfig" \
		--authentication-kubeconfig="$state/scheduler.kubeconfig" --authorization-kubeconfig="$state/scheduler.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port="$sched_port" --leader-elect=false
}

# start_kwok BIN: start kwok, which runs the simulated nodes.
start_kwok() {
	start kwok "$1/kwok" --kubeconfig="$state/kwok.kubeconfig" --config="$state/kwok-stages.yaml" \
		--manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
		--node-ip=127.0.0.1 --cidr=10.244.0.0/16 --node-lease-duration-seconds=40 \
		--server-address="127.0.0.1:$kwok_port"
}

# restart_controllers BIN: the controller manager, the scheduler and kwok start
# again, after an API server outage test has measured what it measures.
# They are not under test, and their informers, backed off by the refusals
# (and by the 403s of an API server whose RBAC had not synced yet), once
# took over a minute to make a new namespace's default ServiceAccount: the
# next test failed waiting for it. Restarted with the API server, they
# slowed the arbiter's recovery (0.3-1.7 s became 4-8 s).
restart_controllers() {
	local bin=$1 c pid
	for c in kube-controller-manager kube-scheduler kwok; do
		alive "$c" || continue
		pid=$(cat "$state/pids/$c.pid")
		kill "$pid" 2>/dev/null || true
		local deadline=$((SECONDS + 10))
		while kill -0 "$pid" 2>/dev/null; do
			if [ $SECONDS -ge $deadline ]; then kill -9 "$pid" 2>/dev/null || true; fi
			sleep 0.1
		done
	done
	start_controllers "$bin"
	start_kwok "$bin"
}

# restart_apiserver SECONDS: stop kube-apiserver, keep it down SECONDS, start
# it again with the same flags (for the tests of an API server outage).
restart_apiserver() {
	ready || die "not running"
	local pid bin
	pid=$(cat "$state/pids/kube-apiserver.pid")
	bin=$("$here/build.sh")
	kill -9 "$pid" # it goes away at once, as in a crash; a graceful stop drains watches for a minute
	while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
	log "kube-apiserver stopped; starting it again in ${1:-0}s"
	sleep "${1:-0}"
	start_apiserver "$bin"
	log "kube-apiserver ready again"
}

up() {
	local real=${CLUSTER_REAL_NODES:-0}
	if [ "${1:-}" = --real-nodes ]; then
		real=${2:-}
	fi
	[[ "$real" =~ ^[0-9]+$ ]] || die "--real-nodes wants a number of nodes, not \"$real\""
	if ready; then
		[ "$(real_node_count)" = "$real" ] || [ "$real" = 0 ] ||
			die "already running with $(real_node_count) real nodes, not $real: cluster.sh down first"
		log "already running: https://127.0.0.1:$api_port (KUBECONFIG=$state/kubeconfig)"
		return 0
	fi
	if [ -d "$state/pids" ]; then
		log "a previous plane is partly running or dead; stopping it first"
		down
	fi
	for p in $api_port $etcd_port $etcd_peer_port $kcm_port $sched_port $kwok_port; do
		port_in_use "$p" && die "port $p on 127.0.0.1 is already in use; stop what holds it or set CLUSTER_PORT_BASE"
	done
	local bin
	bin=$("$here/build.sh") || die "building the control plane failed (see above)"
	local t0=$SECONDS
	mkdir -p "$state/logs" "$state/pids" "$state/etcd"
	echo '*' >"$state/.gitignore"
	echo "$real" >"$state/real-nodes"
	pki
	if [ "$real" -gt 0 ]; then
		[ "$(id -u)" = 0 ] || die "real nodes need root (namespaces, links, iptables)"
		for tool in containerd ctr runc iptables ip6tables unshare /usr/lib/cni/bridge; do
			command -v "$tool" >/dev/null || die "real nodes need $tool: run test/deps.sh"
		done
		nodes_net "$real"
		guard_up "$real"
		node_pki "$real"
	fi
	kubeconfig admin "$state/kubeconfig"
	kubeconfig controller-manager "$state/controller-manager.kubeconfig"
	kubeconfig scheduler "$state/scheduler.kubeconfig"
	kubeconfig kwok "$state/kwok.kubeconfig"
	kwok_stages >"$state/kwok-stages.yaml"

	start etcd "$bin/etcd" --name=default --data-dir="$state/etcd" \
		--listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
		--listen-peer-urls="http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
		--initial-cluster="default=http://127.0.0.1:$etcd_peer_port" --unsafe-no-fsync=true --log-level=warn
	wait_for 30 etcd curl -sf "http://127.0.0.1:$etcd_port/health"

	local pki=$state/pki
	start_apiserver "$bin"

	start_controllers "$bin"
	start_kwok "$bin"

	cat >"$state/env" <<ENV
export KUBECONFIG=$state/kubeconfig
export PATH=$bin:\$PATH
ENV
	# Pods are refused until the controller manager has made the default
	# ServiceAccount.
	wait_for 60 "the default ServiceAccount" "$bin/kubectl" --kubeconfig="$state/kubeconfig" get serviceaccount default -n default
	for c in "${components[@]}"; do alive "$c" || die "$c exited; see $state/logs/$c.log"; done
	[ "$real" -gt 0 ] && nodes_up "$real"
	log "ready in $((SECONDS - t0))s: https://127.0.0.1:$api_port; run: . $state/env"
}

down() {
	[ -d "$state/pids" ] || { log "not running"; rm -rf "$state"; return 0; }
	# Best effort, every step (errexit is off inside a function run with ||):
	# what one step cannot remove must not keep the rest in place.
	nodes_down || true
	local pids=()
	for f in "$state"/pids/*.pid; do
		[ -f "$f" ] || continue
		local pid
		pid=$(cat "$f")
		kill "$pid" 2>/dev/null && pids+=("$pid")
	done
	local deadline=$((SECONDS + 15))
	for pid in "${pids[@]}"; do
		while kill -0 "$pid" 2>/dev/null; do
			if [ $SECONDS -ge $deadline ]; then kill -9 "$pid" 2>/dev/null || true; fi
			sleep 0.1
		done
	done
	rm -rf "$state"
	log "stopped"
}

case "${1:-}" in
up) up "${@:2}" ;;
down) down ;;
restart-apiserver) restart_apiserver "${2:-0}" ;;
start-apiserver) alive kube-apiserver || start_apiserver "$("$here/build.sh")" ;;
restart-controllers) ready || die "not running"; restart_controllers "$("$here/build.sh")" ;;
reboot) [ -n "${2:-}" ] || die "usage: $0 reboot NODE [SECONDS [VERSION]]"; reboot_node "$2" "${3:-0}" "${4:-}" ;;
exec) [ $# -gt 2 ] || die "usage: $0 exec NODE CMD..."; exec_node "${@:2}" ;;
import) [ $# -gt 1 ] || die "usage: $0 import TARBALL..."; import_images "${@:2}" ;;
status) if ready; then echo "running: https://127.0.0.1:$api_port"; else echo "not running"; exit 1; fi ;;
*) echo "usage: $0 up [--real-nodes N]|down|status|restart-apiserver [SECONDS]|start-apiserver|restart-controllers|reboot NODE [SECONDS [VERSION]]|exec NODE CMD...|import TARBALL..." >&2; exit 2 ;;
esac
