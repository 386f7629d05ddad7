package nodes

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rebootmanager/reboot-manager/shared/annotations"
)

func TestSlim(t *testing.T) {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:          "n",
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}},
			Annotations:   map[string]string{annotations.ZincatiID: "x", corev1.LastAppliedConfigAnnotation: "{}"},
		},
		Status: corev1.NodeStatus{
			Images:    []corev1.ContainerImage{{Names: []string{"a"}}},
			NodeInfo:  corev1.NodeSystemInfo{MachineID: "m", BootID: "b"},
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.0.0.1"}},
		},
	}
	obj, err := Slim(n)
	got := obj.(*corev1.Node)
	if err != nil || got.ManagedFields != nil || got.Status.Images != nil || len(got.Annotations) != 1 {
		t.Fatalf("Slim left %+v (err %v)", got, err)
	}
	if got.Annotations[annotations.ZincatiID] != "x" || got.Status.NodeInfo.MachineID != "m" || len(got.Status.Addresses) != 1 {
		t.Fatalf("Slim dropped what the arbiter reads: %+v", got)
	}
	if _, err := Slim("not a node"); err != nil {
		t.Fatal(err)
	}
}
