#!/usr/bin/env bash
# uninstall.sh takes the agent off every node safely, before
# `kubectl delete -k deploy/`:
#   1. it refuses while any node holds a reboot slot (kubectl reboot-manager
#      status): that node is cordoned mid-cycle, and without the arbiter
#      nothing would ever uncordon it; let the cycle end, or release it;
#   2. it pauses every group (no new slot from here on; the check is made
#      again after the pause);
#   3. it deletes the agent's DaemonSet, so that no agent writes the
#      drop-in back;
#   4. it runs job.yaml once on each node the agent ran on (its pods' nodes
#      and the Nodes carrying rebootmanager/zincati-id), or on the NODEs
#      given, and waits for each Job: the drop-in goes and Zincati restarts
#      with the distribution's strategy.
# Then delete the rest yourself (kubectl delete -k deploy/, or -f the file
# you applied). Needs kubectl and the kubectl-reboot_manager plugin on PATH.
#
# usage: deploy/uninstall/uninstall.sh [NODE...]
# environment: KUBECTL (kubectl), ARBITER_NAMESPACE (reboot-manager),
#   AGENT_NAMESPACE (reboot-manager-agent), AGENT_IMAGE (the DaemonSet's),
#   TIMEOUT per Job (300s).
set -euo pipefail
kubectl=${KUBECTL:-kubectl}
arbiter_ns=${ARBITER_NAMESPACE:-reboot-manager}
agent_ns=${AGENT_NAMESPACE:-reboot-manager-agent}
timeout=${TIMEOUT:-300s}
here=$(cd "$(dirname "$0")" && pwd)

say() { echo "uninstall: $*" >&2; }

# held prints "GROUP HELD" for each group with a held slot.
held() {
	local out
	out=$("$kubectl" reboot-manager status --namespace "$arbiter_ns") || {
		say "kubectl reboot-manager status failed (is the kubectl-reboot_manager plugin on PATH?)"
		exit 1
	}
	# The first table: GROUP SLOTS HELD HOLDERS HALTED, up to a blank line.
	awk 'NR == 1 { next } NF == 0 { exit } $3 != "0" { print $1, $3 }' <<<"$out"
}

refuse_if_held() {
	local h
	h=$(held)
	if [ -n "$h" ]; then
		say "refused: these groups have nodes holding reboot slots (group, slots held):"
		echo "$h" | sed 's/^/  /' >&2
		say "let their cycles end, or free them with kubectl reboot-manager release NODE, then run this again$1"
		exit 1
	fi
}

refuse_if_held ""
"$kubectl" reboot-manager pause --all --namespace "$arbiter_ns" >/dev/null
say "paused every group: no node takes a slot from now on"
refuse_if_held " (the groups stay paused: kubectl reboot-manager resume --all to undo)"

image=${AGENT_IMAGE:-}
if [ -z "$image" ]; then
	image=$("$kubectl" get daemonset agent -n "$agent_ns" -o jsonpath='{.spec.template.spec.containers[0].image}' 2>/dev/null) || true
fi
[ -n "$image" ] || { say "no agent DaemonSet in $agent_ns to take the image from: set AGENT_IMAGE"; exit 1; }

if [ $# -gt 0 ]; then
	nodes=$(printf '%s\n' "$@")
else
	nodes=$({
		"$kubectl" get pods -n "$agent_ns" -l app.kubernetes.io/name=reboot-manager-agent \
			-o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}'
		"$kubectl" get nodes -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.metadata.annotations.rebootmanager/zincati-id}{"\n"}{end}' |
			awk 'NF == 2 { print $1 }'
	} | sort -u | sed '/^$/d')
fi

"$kubectl" delete daemonset agent -n "$agent_ns" --ignore-not-found --wait=true >/dev/null
say "deleted the agent's DaemonSet"

jobs=()
for node in $nodes; do
	job=$(sed -e "s|NODE_NAME|$node|" -e "s|AGENT_IMAGE|$image|" -e "s|namespace: reboot-manager-agent|namespace: $agent_ns|" "$here/job.yaml" |
		"$kubectl" create -f - -o name)
	say "$node: $job"
	jobs+=("$job")
done
failed=0
for job in "${jobs[@]}"; do
	if ! "$kubectl" wait -n "$agent_ns" --for=condition=complete --timeout="$timeout" "$job" >/dev/null; then
		say "$job did not complete: kubectl logs -n $agent_ns $job"
		failed=1
	fi
done
[ "$failed" = 0 ] || exit 1
say "cleaned up ${#jobs[@]} nodes; now delete the rest: kubectl delete -k deploy/ (or -f the file you applied)"
