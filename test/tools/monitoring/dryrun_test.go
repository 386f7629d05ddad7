package monitoring

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"k8s.io/utils/ptr"

	"github.com/rebootmanager/reboot-manager/test/harness"
)

// The Prometheus Operator module whose CRDs the API server validates the
// ServiceMonitor and PrometheusRule against. v0.85.0 is the one version of
// the main module the Go module proxy serves here, and its zip holds
// example/prometheus-operator-crd/; the sum pins its contents.
const (
	operatorModule  = "github.com/prometheus-operator/prometheus-operator"
	operatorVersion = "v0.85.0"
	operatorSum     = "h1:M5xLCLEoaW2IJfnuCwFzzpL+jSVQu3KGT84Pye+fW8s="
)

// The CRDs the component needs.
var operatorCRDs = []string{"monitoring.coreos.com_servicemonitors.yaml", "monitoring.coreos.com_prometheusrules.yaml"}

const fieldManager = "reboot-manager-test-tools"

// operatorCRDDir downloads the Prometheus Operator module with the go
// command and returns its CRD directory, after checking the module's sum.
func operatorCRDDir(t testing.TB) string {
	t.Helper()
	cmd := exec.Command("go", "mod", "download", "-json", operatorModule+"@"+operatorVersion)
	cmd.Dir = t.TempDir() // outside any module: nothing to update
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download %s@%s: %v\n%s", operatorModule, operatorVersion, err, out)
	}
	var mod struct{ Dir, Sum, Error string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Error != "" {
		t.Fatalf("go mod download %s@%s: %v %s", operatorModule, operatorVersion, err, mod.Error)
	}
	if mod.Sum != operatorSum {
		t.Fatalf("%s@%s has sum %s, want %s", operatorModule, operatorVersion, mod.Sum, operatorSum)
	}
	return filepath.Join(mod.Dir, "example/prometheus-operator-crd")
}

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// installOperatorCRDs applies the ServiceMonitor and PrometheusRule CRDs to
// the plane (server-side apply, so a run with a newer module updates them)
// and waits until they are established. They are left in place: deleting
// a CRD takes its objects with it and a re-create waits for that, which
// would race a concurrent run; nothing else on the plane uses them.
func installOperatorCRDs(ctx context.Context, t testing.TB, dyn dynamic.Interface) {
	t.Helper()
	dir := operatorCRDDir(t)
	for _, file := range operatorCRDs {
		raw, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatalf("read the CRD %s from the module: %v", file, err)
		}
		objs, err := decodeAll(raw)
		if err != nil || len(objs) != 1 {
			t.Fatalf("%s: %d objects, %v", file, len(objs), err)
		}
		body, err := json.Marshal(objs[0].Object)
		if err != nil {
			t.Fatal(err)
		}
		name := objs[0].GetName()
		if _, err := dyn.Resource(crdResource).Patch(ctx, name, types.ApplyPatchType, body,
			metav1.PatchOptions{FieldManager: fieldManager, Force: ptr.To(true)}); err != nil {
			t.Fatalf("apply the CRD %s: %v", name, err)
		}
		harness.Eventually(t, 30*time.Second, "the CRD "+name+" established", func() error {
			crd, err := dyn.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, c := range conds {
				if m, ok := c.(map[string]any); ok && m["type"] == "Established" && m["status"] == "True" {
					return nil
				}
			}
			return fmt.Errorf("conditions %v", conds)
		})
	}
}

// dryRunner sends objects to the API server as a server-side apply with
// dryRun=All and strict field validation: every check and admission the
// API server makes, nothing stored.
type dryRunner struct {
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func (d dryRunner) apply(ctx context.Context, o *unstructured.Unstructured) error {
	gvk := o.GroupVersionKind()
	mapping, err := d.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		d.mapper.Reset() // a CRD installed since discovery was cached
		mapping, err = d.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		return fmt.Errorf("%s: find its resource: %w", key(o), err)
	}
	body, err := json.Marshal(o.Object)
	if err != nil {
		return err
	}
	var ri dynamic.ResourceInterface = d.dyn.Resource(mapping.Resource)
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		ri = d.dyn.Resource(mapping.Resource).Namespace(o.GetNamespace())
	}
	_, err = ri.Patch(ctx, o.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{
		DryRun: []string{metav1.DryRunAll}, FieldManager: fieldManager, Force: ptr.To(true), FieldValidation: "Strict"})
	if err != nil {
		return fmt.Errorf("%s: %w", key(o), err)
	}
	return nil
}

// TestComponentServerDryRun installs the Prometheus Operator's CRDs from
// its Go module and sends every object of deploy/ with the component to the
// API server as a dry run with strict field validation; broken copies of
// the component's objects must be refused, or the dry run proves nothing.
func TestComponentServerDryRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dyn, err := dynamic.NewForConfig(cluster.Config)
	if err != nil {
		t.Fatal(err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cluster.Config)
	if err != nil {
		t.Fatal(err)
	}
	installOperatorCRDs(ctx, t, dyn)
	d := dryRunner{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))}

	objs := render(t, viaOverlay)
	// Namespaced objects need their namespace to exist, even in a dry run:
	// a missing one is created bare, and left, as the e2e tests leave theirs
	// (the Namespace objects themselves are dry-run below like the rest).
	for _, o := range objs {
		ns := o.GetNamespace()
		if ns == "" {
			continue
		}
		if _, err := cluster.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			_, err = cluster.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
			if err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatalf("create namespace %s: %v", ns, err)
			}
		} else if err != nil {
			t.Fatalf("get namespace %s: %v", ns, err)
		}
	}
	for _, o := range objs {
		if err := d.apply(ctx, o); err != nil {
			t.Errorf("dry run: %v", err)
		}
	}

	tests := []struct {
		name, kind, obj string
		path            []string // where the broken value goes
		value           any
		wantErr         string
	}{
		{"an unknown field in the ServiceMonitor's endpoint", "ServiceMonitor", "reboot-manager-arbiter",
			[]string{"spec", "endpoints", "0", "prot"}, "metrics", ".spec.endpoints[0].prot: field not declared in schema"},
		{"a scrape interval that is no duration", "ServiceMonitor", "reboot-manager-arbiter",
			[]string{"spec", "endpoints", "0", "interval"}, "thirty seconds", "spec.endpoints[0].interval"},
		{"an unknown field at the ServiceMonitor's spec", "ServiceMonitor", "reboot-manager-arbiter",
			[]string{"spec", "jobLabels"}, "x", ".spec.jobLabels: field not declared in schema"},
		{"an alert's for that is no duration", "PrometheusRule", "reboot-manager",
			[]string{"spec", "groups", "0", "rules", "0", "for"}, "five minutes", "spec.groups[0].rules[0].for"},
		{"a rule's expr of the wrong type", "PrometheusRule", "reboot-manager",
			[]string{"spec", "groups", "0", "rules", "0", "expr"}, []any{"up"}, "spec.groups[0].rules[0].expr"},
		{"an unknown field in the metrics Service's port", "Service", "arbiter-metrics",
			[]string{"spec", "ports", "0", "targetPorts"}, "probes", "targetPorts: field not declared in schema"},
	}
	for _, tt := range tests {
		t.Run("refuses "+tt.name, func(t *testing.T) {
			broken := find(t, objs, tt.kind, tt.obj).DeepCopy()
			if err := set(broken.Object, tt.path, tt.value); err != nil {
				t.Fatal(err)
			}
			err := d.apply(ctx, broken)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("dry run of %s with %s = %v, want an error naming %q", key(broken), strings.Join(tt.path, "."), err, tt.wantErr)
			}
			// The API server's own answer, not a failure on the way (an
			// unknown field in an apply is answered 500, a bad value 422).
			if err != nil && statusCode(err) == 0 {
				t.Errorf("refused with %v, which is not the API server's answer", err)
			}
		})
	}
}

// set puts value at path in obj, where a number in path indexes a list.
func set(obj map[string]any, path []string, value any) error {
	var cur any = obj
	for i, p := range path {
		last := i == len(path)-1
		switch c := cur.(type) {
		case map[string]any:
			if last {
				c[p] = value
				return nil
			}
			cur = c[p]
		case []any:
			var n int
			if _, err := fmt.Sscan(p, &n); err != nil || n >= len(c) {
				return fmt.Errorf("path %v: no element %s", path, p)
			}
			if last {
				c[n] = value
				return nil
			}
			cur = c[n]
		default:
			return fmt.Errorf("path %v: nothing at %s", path, p)
		}
	}
	return nil
}

func statusCode(err error) int32 {
	var s apierrors.APIStatus
	if errors.As(err, &s) {
		return s.Status().Code
	}
	return 0
}
