#!/usr/bin/env bash
# run.sh is `make run`: the local plane (started by make), simulated nodes
# and workloads, and the arbiter serving FleetLock on 127.0.0.1:8080 in the
# foreground. Ctrl-C stops the arbiter and the plane.
set -euo pipefail
cd "$(dirname "$0")/.."
addr=${ARBITER_LISTEN_ADDRESS:-127.0.0.1:8080}
pid=

# stop ends the arbiter, then the plane. It must not stop at a failing
# step (errexit applies inside traps too: an arbiter that already exited
# once made `kill` fail here and left the whole plane running).
stop() {
	set +e
	if [ -n "$pid" ]; then
		kill "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	fi
	test/cluster/cluster.sh down
}
trap stop EXIT
trap 'exit 0' INT TERM

kubeconfig=${CLUSTER_DIR:-.cluster}/kubeconfig
go run ./test/seed -kubeconfig "$kubeconfig" -url "http://$addr/" -real-nodes "${CLUSTER_REAL_NODES:-0}"
# Plain polling by default, so repeated curls show the drain (423, then 200).
# The simulated nodes run no agent, so they have no credential: the arbiter
# serves them unprotected, which the curls rely on.
bin/arbiter --kubeconfig "$kubeconfig" --listen-address "$addr" --log-format text \
	--max-wait "${ARBITER_MAX_WAIT:-0}" &
pid=$!
wait "$pid"
