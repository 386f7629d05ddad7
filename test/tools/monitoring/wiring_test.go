package monitoring

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

// The objects the component adds, by kind and name.
var componentObjects = []struct{ kind, name string }{
	{"Service", "arbiter-metrics"},
	{"ServiceMonitor", "reboot-manager-arbiter"},
	{"PrometheusRule", "reboot-manager"},
	{"ConfigMap", "reboot-manager-dashboard"},
}

// serviceMonitor is the part of a ServiceMonitor this test reads.
type serviceMonitor struct {
	Metadata struct {
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec struct {
		JobLabel string `json:"jobLabel"`
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		NamespaceSelector *struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port string `json:"port"`
			Path string `json:"path"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// convert decodes a rendered object into out (a typed object or a struct
// of the fields a test reads).
func convert(t testing.TB, o *unstructured.Unstructured, out any) {
	t.Helper()
	raw, err := json.Marshal(o.Object)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		t.Fatalf("decode %s: %v", key(o), err)
	}
}

// scrapeTarget is where the ServiceMonitor points Prometheus: the metrics
// Service, the job label's value, and the arbiter container's port behind
// it.
type scrapeTarget struct {
	service *corev1.Service
	job     string
	port    int32 // the container port scraped
	path    string
}

// wiring follows the ServiceMonitor of the rendered objects to the
// arbiter's container port, and fails the test at the first link that does
// not hold.
func wiring(t testing.TB, objs []*unstructured.Unstructured) scrapeTarget {
	t.Helper()
	var sm serviceMonitor
	convert(t, find(t, objs, "ServiceMonitor", "reboot-manager-arbiter"), &sm)
	var selected []*corev1.Service
	for _, o := range objs {
		if o.GetKind() != "Service" {
			continue
		}
		var svc corev1.Service
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &svc); err != nil {
			t.Fatal(err)
		}
		inNamespace := svc.Namespace == sm.Metadata.Namespace
		if sm.Spec.NamespaceSelector != nil {
			inNamespace = slices.Contains(sm.Spec.NamespaceSelector.MatchNames, svc.Namespace)
		}
		if inNamespace && len(sm.Spec.Selector.MatchLabels) > 0 && subset(sm.Spec.Selector.MatchLabels, svc.Labels) {
			selected = append(selected, &svc)
		}
	}
	if len(selected) != 1 {
		t.Fatalf("the ServiceMonitor selects %d Services, want exactly the metrics Service", len(selected))
	}
	svc := selected[0]
	job := svc.Labels[sm.Spec.JobLabel]
	if sm.Spec.JobLabel == "" || job == "" {
		t.Fatalf("the ServiceMonitor's jobLabel %q is not a label of Service %s", sm.Spec.JobLabel, svc.Name)
	}
	if len(sm.Spec.Endpoints) != 1 {
		t.Fatalf("the ServiceMonitor has %d endpoints, want 1", len(sm.Spec.Endpoints))
	}
	ep := sm.Spec.Endpoints[0]
	i := slices.IndexFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == ep.Port })
	if i < 0 {
		t.Fatalf("the ServiceMonitor scrapes port %q, which Service %s does not name", ep.Port, svc.Name)
	}
	target := svc.Spec.Ports[i].TargetPort

	var dep appsv1.Deployment
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(find(t, objs, "Deployment", "arbiter").Object, &dep); err != nil {
		t.Fatal(err)
	}
	if !subset(svc.Spec.Selector, dep.Spec.Template.Labels) || len(svc.Spec.Selector) == 0 {
		t.Fatalf("Service %s selects %v, which the arbiter's pods (%v) do not carry", svc.Name, svc.Spec.Selector, dep.Spec.Template.Labels)
	}
	c := dep.Spec.Template.Spec.Containers[0]
	var port int32
	for _, p := range c.Ports {
		if p.Name == target.String() || p.ContainerPort == target.IntVal {
			port = p.ContainerPort
		}
	}
	if port == 0 {
		t.Fatalf("Service %s targets port %s, which the arbiter container does not declare", svc.Name, target.String())
	}
	var probe string
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--probe-address="); ok {
			probe = v
		}
	}
	_, probePort, err := net.SplitHostPort(probe)
	if err != nil || probePort != fmt.Sprint(port) {
		t.Fatalf("the metrics Service reaches container port %d, but the arbiter serves /metrics on --probe-address=%s", port, probe)
	}
	return scrapeTarget{service: svc, job: job, port: port, path: ep.Path}
}

// subset reports whether every pair of want is in have.
func subset(want, have map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// TestComponentWiring renders deploy/ with the component both ways a user
// enables it, and checks that the two agree, that the component adds its
// four objects and changes none of deploy/'s, and that the ServiceMonitor
// reaches the port the arbiter serves /metrics on, which the optional
// NetworkPolicy admits.
func TestComponentWiring(t *testing.T) {
	root, err := os.ReadFile(filepath.Join(cluster.Root, "deploy/kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(root), "monitoring") {
		t.Errorf("deploy/kustomization.yaml names monitoring: the component is opt-in")
	}
	raw, err := os.ReadFile(filepath.Join(cluster.Root, "deploy/monitoring/kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var head struct{ APIVersion, Kind string }
	if err := yaml.Unmarshal(raw, &head); err != nil || head.APIVersion != "kustomize.config.k8s.io/v1alpha1" || head.Kind != "Component" {
		t.Errorf("deploy/monitoring/kustomization.yaml is %s %s (%v), want a kustomize.config.k8s.io/v1alpha1 Component", head.APIVersion, head.Kind, err)
	}

	base := map[string]*unstructured.Unstructured{}
	for _, o := range render(t, withoutComponent) {
		base[key(o)] = o
	}
	var first map[string]*unstructured.Unstructured
	for _, mode := range []string{viaComponentsLine, viaOverlay} {
		t.Run(mode, func(t *testing.T) {
			objs := render(t, mode)
			got := map[string]*unstructured.Unstructured{}
			for _, o := range objs {
				got[key(o)] = o
			}
			for k, o := range base {
				if !reflect.DeepEqual(got[k], o) {
					t.Errorf("the component changes %s", k)
				}
			}
			for _, c := range componentObjects {
				o := find(t, objs, c.kind, c.name)
				if o.GetNamespace() != "reboot-manager" {
					t.Errorf("%s is in namespace %q, want reboot-manager", key(o), o.GetNamespace())
				}
			}
			if len(got) != len(base)+len(componentObjects) {
				t.Errorf("rendered %d objects, want deploy/'s %d and the component's %d", len(got), len(base), len(componentObjects))
			}
			if first == nil {
				first = got
			} else if !reflect.DeepEqual(first, got) {
				t.Errorf("the overlay renders other objects than the components line")
			}

			target := wiring(t, objs)
			if target.job != "reboot-manager-arbiter" || target.path != "/metrics" {
				t.Errorf("scrape target job=%q path=%q, want reboot-manager-arbiter and /metrics", target.job, target.path)
			}
			if !target.service.Spec.PublishNotReadyAddresses {
				t.Errorf("the metrics Service lists ready replicas only: an arbiter failing /readyz would vanish from Prometheus")
			}

			cm := find(t, objs, "ConfigMap", "reboot-manager-dashboard")
			if cm.GetLabels()["grafana_dashboard"] != "1" {
				t.Errorf("dashboard ConfigMap labels %v, want grafana_dashboard=1", cm.GetLabels())
			}
			want, err := os.ReadFile(filepath.Join(cluster.Root, "deploy/monitoring/dashboard.json"))
			if err != nil {
				t.Fatal(err)
			}
			data, _, _ := unstructured.NestedStringMap(cm.Object, "data")
			if data["reboot-manager.json"] != string(want) || len(data) != 1 {
				t.Errorf("dashboard ConfigMap data keys %v: want reboot-manager.json, the bytes of deploy/monitoring/dashboard.json", keys(data))
			}
		})
	}

	// deploy/networkpolicy.yaml (applied on its own) must admit the scrape.
	var objs []*unstructured.Unstructured
	raw, err = os.ReadFile(filepath.Join(cluster.Root, "deploy/networkpolicy.yaml"))
	if err == nil {
		objs, err = decodeAll(raw)
	}
	if err != nil {
		t.Fatal(err)
	}
	target := wiring(t, render(t, viaOverlay))
	admitted := false
	for _, o := range objs {
		var np networkingv1.NetworkPolicy
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &np); err != nil {
			t.Fatal(err)
		}
		for _, rule := range np.Spec.Ingress {
			for _, p := range rule.Ports {
				if p.Port != nil && p.Port.IntVal == target.port && slices.ContainsFunc(rule.From, func(f networkingv1.NetworkPolicyPeer) bool { return f.NamespaceSelector != nil }) {
					admitted = true
				}
			}
		}
	}
	if !admitted {
		t.Errorf("deploy/networkpolicy.yaml admits no namespace to port %d, which Prometheus scrapes", target.port)
	}
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
