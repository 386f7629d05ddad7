// Package volumes says which PersistentVolumes a drained node's pods used,
// and which of them the node still holds: listed in its volumesInUse, or
// still attached by a VolumeAttachment.
//
// A reboot with a volume still attached leaves the volume attached until
// the node is back, or for 6 minutes with the node NotReady before the
// attach/detach controller force-detaches it; meanwhile the pod that
// replaced the evicted one fails with "Multi-Attach error". The volumes of
// the pods to evict are therefore recorded before the evictions (once a pod
// is gone, its volumes can no longer be read off it), and the reboot waits
// for them.
package volumes

import (
	"context"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/rebootmanager/reboot-manager/arbiter/lock"
)

// Reader resolves pods' volumes and lists VolumeAttachments, each by a
// consistent read of the API server.
type Reader struct {
	client kubernetes.Interface
}

// NewReader returns a Reader over client.
func NewReader(client kubernetes.Interface) *Reader { return &Reader{client: client} }

// Of returns the PersistentVolumes pod uses, through its claims and its
// generic ephemeral volumes. A claim not bound yet, or gone, has no volume
// to wait for.
func (r *Reader) Of(ctx context.Context, pod *corev1.Pod) ([]lock.Volume, error) {
	var out []lock.Volume
	for _, v := range pod.Spec.Volumes {
		claim := ""
		switch {
		case v.PersistentVolumeClaim != nil:
			claim = v.PersistentVolumeClaim.ClaimName
		case v.Ephemeral != nil:
			claim = pod.Name + "-" + v.Name // the claim the ephemeral controller makes
		default:
			continue
		}
		pvc, err := r.client.CoreV1().PersistentVolumeClaims(pod.Namespace).Get(ctx, claim, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read claim %s/%s of pod %s: %w", pod.Namespace, claim, pod.Name, err)
		}
		if pvc.Spec.VolumeName == "" {
			continue
		}
		pv, err := r.client.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read volume %s of claim %s/%s: %w", pvc.Spec.VolumeName, pod.Namespace, claim, err)
		}
		out = append(out, lock.Volume{PV: pv.Name, UniqueName: UniqueName(pv)})
	}
	return out, nil
}

// UniqueName is the name kubelet lists in a Node's volumesInUse for a CSI
// PersistentVolume (and an in-tree one migrated to CSI), or "" for others.
func UniqueName(pv *corev1.PersistentVolume) string {
	if c := pv.Spec.CSI; c != nil {
		return "kubernetes.io/csi/" + c.Driver + "^" + c.VolumeHandle
	}
	return ""
}

// InUse returns the volumes that the node (read by a consistent GET after
// its pods were gone) still lists in status.volumesInUse: mounted, or
// about to be, so the attach/detach controller will not detach them.
func InUse(n *corev1.Node, vols []lock.Volume) []lock.Volume {
	var out []lock.Volume
	for _, v := range vols {
		if v.UniqueName != "" && slices.Contains(n.Status.VolumesInUse, corev1.UniqueVolumeName(v.UniqueName)) {
			out = append(out, v)
		}
	}
	return out
}

// Attached returns the volumes that a VolumeAttachment still attaches to
// node, from a consistent list. Only the VolumeAttachment's deletion
// proves a volume detached: volumesAttached empties before the detach.
func (r *Reader) Attached(ctx context.Context, node string, vols []lock.Volume) ([]lock.Volume, error) {
	if len(vols) == 0 {
		return nil, nil
	}
	list, err := r.client.StorageV1().VolumeAttachments().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list VolumeAttachments: %w", err)
	}
	attached := map[string]bool{}
	for _, va := range list.Items {
		if va.Spec.NodeName == node && va.Spec.Source.PersistentVolumeName != nil {
			attached[*va.Spec.Source.PersistentVolumeName] = true
		}
	}
	var out []lock.Volume
	for _, v := range vols {
		if attached[v.PV] {
			out = append(out, v)
		}
	}
	return out, nil
}

// Merge adds to have the volumes of more it lacks, and reports whether it
// added any.
func Merge(have, more []lock.Volume) ([]lock.Volume, bool) {
	added := false
	for _, v := range more {
		if !slices.ContainsFunc(have, func(x lock.Volume) bool { return x.PV == v.PV }) {
			have = append(have, v)
			added = true
		}
	}
	return have, added
}

// Names lists the volumes' PersistentVolume names.
func Names(vols []lock.Volume) []string {
	out := make([]string, len(vols))
	for i, v := range vols {
		out[i] = v.PV
	}
	return out
}
