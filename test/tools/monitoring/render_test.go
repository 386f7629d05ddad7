package monitoring

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	yamlutil "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// How a user enables the component, the rows of the rendering tests.
const (
	// viaComponentsLine adds `components: [monitoring]` to
	// deploy/kustomization.yaml.
	viaComponentsLine = "components line in deploy/kustomization.yaml"
	// viaOverlay is an overlay of the user's own over deploy/.
	viaOverlay = "overlay with resources deploy and components deploy/monitoring"
	// withoutComponent is deploy/ as shipped.
	withoutComponent = "deploy alone"
)

// render builds the repository's deploy/ with kustomize's own library, the
// way mode says a user enables the monitoring component, and returns the
// objects. The tree is copied into memory, so the checkout is not touched.
func render(t testing.TB, mode string) []*unstructured.Unstructured {
	t.Helper()
	mem := filesys.MakeFsInMemory()
	src := filepath.Join(cluster.Root, "deploy")
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return mem.WriteFile(filepath.Join("/deploy", rel), raw)
	})
	if err != nil {
		t.Fatalf("copy deploy/ into memory: %v", err)
	}
	dir := "/deploy"
	switch mode {
	case viaComponentsLine:
		raw, err := mem.ReadFile("/deploy/kustomization.yaml")
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(raw, []byte("components:")) {
			t.Fatalf("deploy/kustomization.yaml already has a components list; the component is meant to be opt-in")
		}
		if err := mem.WriteFile("/deploy/kustomization.yaml", append(raw, []byte("components:\n- monitoring\n")...)); err != nil {
			t.Fatal(err)
		}
	case viaOverlay:
		dir = "/overlay"
		if err := mem.WriteFile("/overlay/kustomization.yaml", []byte(
			"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- ../deploy\ncomponents:\n- ../deploy/monitoring\n")); err != nil {
			t.Fatal(err)
		}
	case withoutComponent:
	default:
		t.Fatalf("unknown render mode %q", mode)
	}
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(mem, dir)
	if err != nil {
		t.Fatalf("kustomize build (%s): %v", mode, err)
	}
	out, err := m.AsYaml()
	if err != nil {
		t.Fatalf("kustomize build (%s): render YAML: %v", mode, err)
	}
	objs, err := decodeAll(out)
	if err != nil {
		t.Fatalf("kustomize build (%s): %v", mode, err)
	}
	return objs
}

// decodeAll decodes a multi-document YAML stream into objects.
func decodeAll(raw []byte) ([]*unstructured.Unstructured, error) {
	dec := yamlutil.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("decode the rendered manifests: %w", err)
		}
		if m == nil {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
}

// find returns the one rendered object of kind and name, failing the test
// when there is none.
func find(t testing.TB, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s in the rendered manifests", kind, name)
	return nil
}

// key names an object uniquely among the rendered ones.
func key(o *unstructured.Unstructured) string {
	return o.GetAPIVersion() + "/" + o.GetKind() + " " + o.GetNamespace() + "/" + o.GetName()
}
