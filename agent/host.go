package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Reasons of the Node Events the agent records when it leaves its host
// alone, or leaves Zincati as it is.
const (
	// ReasonNotFedoraCoreOS: the host's os-release is not Fedora CoreOS's
	// (ID=fedora, VARIANT_ID=coreos), and --force is not set.
	ReasonNotFedoraCoreOS = "NotFedoraCoreOS"
	// ReasonZincatiAbsent: the host has no /usr/libexec/zincati, or its
	// systemd knows no Zincati unit.
	ReasonZincatiAbsent = "ZincatiAbsent"
	// ReasonZincatiStopped: Zincati is stopped (not failed); the agent does
	// not start it.
	ReasonZincatiStopped = "ZincatiStopped"
)

// ZincatiBinary is where the Zincati package puts its binary, under the
// host root.
const ZincatiBinary = "usr/libexec/zincati"

// osRelease reads the host's os-release under root: usr/lib/os-release,
// else etc/os-release. An absolute symbolic link is followed under root,
// not in the agent's own filesystem.
func osRelease(root string) (map[string]string, error) {
	var raw []byte
	var err error
	for _, p := range []string{"usr/lib/os-release", "etc/os-release"} {
		if raw, err = readUnder(root, p); err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("read os-release: %w", err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		fields[k] = strings.Trim(v, `"'`)
	}
	return fields, nil
}

// readUnder reads root/p, resolving symbolic links (up to 8) under root.
func readUnder(root, p string) ([]byte, error) {
	for range 8 {
		full := filepath.Join(root, p)
		target, err := os.Readlink(full)
		if err != nil {
			return os.ReadFile(full) // not a link (or missing)
		}
		if filepath.IsAbs(target) {
			p = target
		} else {
			p = filepath.Join(filepath.Dir(p), target)
		}
	}
	return nil, fmt.Errorf("read %s: too many symbolic links", filepath.Join(root, p))
}

// CheckHost says why the agent must leave the host whose / is at root
// alone: ReasonNotFedoraCoreOS unless its os-release says ID=fedora and
// VARIANT_ID=coreos, ReasonZincatiAbsent unless it has ZincatiBinary. It
// returns "" for a host it may manage. force skips both checks, for a host
// that runs Zincati elsewhere. Whether systemd knows Zincati's unit is
// checked over D-Bus, once it answers.
func CheckHost(root string, force bool) (reason, message string) {
	if force {
		return "", ""
	}
	rel, err := osRelease(root)
	if err != nil {
		return ReasonNotFedoraCoreOS, fmt.Sprintf("the host's os-release cannot be read (%v): leaving the host alone; --force manages it anyway", err)
	}
	if rel["ID"] != "fedora" || rel["VARIANT_ID"] != "coreos" {
		name := rel["PRETTY_NAME"]
		if name == "" {
			name = fmt.Sprintf("ID=%s VARIANT_ID=%s", rel["ID"], rel["VARIANT_ID"])
		}
		return ReasonNotFedoraCoreOS, fmt.Sprintf("the host runs %s, not Fedora CoreOS: leaving the host alone; --force manages it anyway", name)
	}
	if _, err := os.Stat(filepath.Join(root, ZincatiBinary)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return ReasonZincatiAbsent, "the host has no /" + ZincatiBinary + ": Zincati is not installed; leaving the host alone"
		}
		return ReasonZincatiAbsent, fmt.Sprintf("cannot tell whether Zincati is installed (%v): leaving the host alone", err)
	}
	return "", ""
}

// leaveAlone is returned by Sync when the host turns out to be one the
// agent must not manage.
type leaveAlone struct{ reason, message string }

func (e *leaveAlone) Error() string { return e.message }

// idle records why the host is left alone, in one log line and one Node
// Event, and then waits for ctx: the pod stays Running (a DaemonSet pod
// that exits would only be restarted, and crash-loop). It does not look
// again: what it checked changes only with an OS rebase or a package
// install, which on an ostree host takes a reboot, and a reboot starts the
// pod's container, and so the check, anew.
func (a *Agent) idle(ctx context.Context, reason, message string) error {
	a.log.Info(message, "reason", reason)
	a.event(ctx, corev1.EventTypeNormal, reason, message)
	<-ctx.Done()
	return nil
}

// event records an Event on the agent's Node, in the namespace default
// where Node Events live. It is informational: a failure is logged.
func (a *Agent) event(ctx context.Context, eventType, reason, message string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	ref := corev1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: a.cfg.NodeName}
	if n, err := a.client.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1.GetOptions{}); err == nil {
		ref.UID = n.UID
	}
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: a.cfg.NodeName + ".", Namespace: metav1.NamespaceDefault},
		InvolvedObject: ref,
		Reason:         reason,
		Message:        message,
		Type:           eventType,
		Source:         corev1.EventSource{Component: "reboot-manager-agent", Host: a.cfg.NodeName},
		FirstTimestamp: now,
		LastTimestamp:  now,
		Count:          1,
	}
	if _, err := a.client.CoreV1().Events(metav1.NamespaceDefault).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		a.log.Warn("recording the Node Event failed", "reason", reason, "err", err)
	}
}
