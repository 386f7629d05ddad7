#!/usr/bin/env bash
# run.sh is `make run`: the local plane (started by make), simulated nodes
# and workloads, and the arbiter serving FleetLock on 127.0.0.1:8080 in the
# foreground. Ctrl-C stops the arbiter and the plane.
set -euo pipefail
cd "$(dirname "$0")/.."
addr=${ARBITER_LISTEN_ADDRESS:-127.0.0.1:8080}
trap 'test/cluster/cluster.sh down' EXIT
go run ./test/seed -kubeconfig .cluster/kubeconfig -url "http://$addr/"
# Plain polling by default, so repeated curls show the drain (423, then 200).
# The simulated nodes run no agent, so they have no credential: the arbiter
# serves them unprotected, which the curls rely on.
bin/arbiter --kubeconfig .cluster/kubeconfig --listen-address "$addr" --log-format text \
	--max-wait "${ARBITER_MAX_WAIT:-0}" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; test/cluster/cluster.sh down' EXIT
trap 'exit 0' INT TERM
wait $pid
