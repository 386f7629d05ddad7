package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// TestVolumesBeforeApproval: a drained node's reboot waits for the volumes
// of the pods it evicted. First while kubelet still lists one in the
// node's volumesInUse, then while its VolumeAttachment remains; each is a
// 423 naming the volume, and the approval follows once it clears. A
// VolumeAttachment that outlasts --volume-detach-timeout is approved with
// a VolumeDetachTimeout Warning Event.
func TestVolumesBeforeApproval(t *testing.T) {
	ctx := context.Background()
	c := cluster.Client
	ns := cluster.Namespace(t)
	label := harness.Prefix(t)
	t.Cleanup(func() {
		sel := metav1.ListOptions{LabelSelector: "test=" + label}
		_ = c.CoreV1().PersistentVolumes().DeleteCollection(context.Background(), metav1.DeleteOptions{}, sel)
		_ = c.StorageV1().VolumeAttachments().DeleteCollection(context.Background(), metav1.DeleteOptions{}, sel)
	})
	setGroups(t, ns, "defaults: {slots: 2}\n")
	nodes := newNodes(t, ns, 2, nil)
	a := startArbiter(t, ns, "--volume-detach-timeout", "4s")

	type setup struct{ pv, unique, va string }
	prepare := func(n simNode, inUse bool) setup {
		t.Helper()
		pv, unique, err := fixtures.CSIVolume(ctx, c, ns, label+"-"+n.name[len(n.name)-1:], label)
		must(t, err)
		must(t, create(ctx, c.CoreV1().Pods(ns).Create, fixtures.PodWithClaim(ns, "db-"+n.name[len(n.name)-1:], n.name, pv)))
		if inUse {
			must(t, fixtures.SetVolumesInUse(ctx, c, n.name, unique))
		}
		va := label + "-va-" + n.name[len(n.name)-1:]
		must(t, fixtures.Attach(ctx, c, va, n.name, pv))
		_, err = c.StorageV1().VolumeAttachments().Patch(ctx, va, types.MergePatchType,
			[]byte(`{"metadata":{"labels":{"test":"`+label+`"}}}`), metav1.PatchOptions{})
		must(t, err)
		return setup{pv, unique, va}
	}
	waitFor := func(n simNode, what string) {
		t.Helper()
		harness.Eventually(t, 30*time.Second, "423 naming "+what, func() error {
			err := a.preReboot(n.id, fleetlock.DefaultGroup)
			if err == nil {
				t.Fatalf("approved while waiting for %s", what)
			}
			if !fleetlock.IsKind(err, fleetlock.KindDrainInProgress) || !strings.Contains(err.Error(), what) {
				return err
			}
			return nil
		})
	}

	// In use, then attached, then detached.
	first := nodes[0]
	s := prepare(first, true)
	waitFor(first, "volumesInUse): "+s.pv)
	if pods, _ := fixtures.PodsOn(ctx, c, ns, first.name); len(pods) != 0 {
		t.Fatalf("%d pods left on the node, want the pod evicted first", len(pods))
	}
	if h := holders(t, ns, fleetlock.DefaultGroup); len(h) != 1 || len(h[0].Volumes) != 1 || h[0].Volumes[0].PV != s.pv || h[0].Volumes[0].UniqueName != s.unique {
		t.Fatalf("holder = %+v, want the evicted pod's volume %s (%s) recorded", h, s.pv, s.unique)
	}
	if st := getNode(t, first.name).Annotations[annotations.Status]; st != annotations.StatusWaitingForVolumes {
		t.Errorf("status = %q, want %s", st, annotations.StatusWaitingForVolumes)
	}
	must(t, fixtures.SetVolumesInUse(ctx, c, first.name))
	waitFor(first, "(detached): "+s.pv)
	must(t, c.StorageV1().VolumeAttachments().Delete(ctx, s.va, metav1.DeleteOptions{}))
	approveUntil(t, a, first, fleetlock.DefaultGroup, 10*time.Second)
	if n := len(nodeEvents(ctx, t, first.name, "VolumeDetachTimeout")); n != 0 {
		t.Errorf("%d VolumeDetachTimeout Events for a volume that was detached", n)
	}

	// Attached past the timeout: approved, with the Event.
	second := nodes[1]
	s = prepare(second, false)
	waitFor(second, "(detached): "+s.pv)
	waited := time.Now()
	approveUntil(t, a, second, fleetlock.DefaultGroup, 20*time.Second)
	if d := time.Since(waited); d > 10*time.Second {
		t.Errorf("approved %s after the volume was unmounted, want about the 4s timeout", d)
	}
	if ev := eventOn(ctx, t, second.name, "VolumeDetachTimeout"); !strings.Contains(ev.Message, s.pv) {
		t.Errorf("VolumeDetachTimeout says %q, want it to name %s", ev.Message, s.pv)
	}
	if _, err := c.StorageV1().VolumeAttachments().Get(ctx, s.va, metav1.GetOptions{}); err != nil {
		t.Fatalf("the VolumeAttachment is gone (%v): the test proves nothing", err)
	}
}
