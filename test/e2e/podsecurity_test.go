package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"
)

// warnings collects the API server's Warning headers.
type warnings struct {
	mu   sync.Mutex
	text []string
}

// HandleWarningHeader implements rest.WarningHandler.
func (w *warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.text = append(w.text, text)
}

func (w *warnings) all() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.text, "\n")
}

// rendered is what `kubectl kustomize deploy` renders: the arbiter's
// Deployment and the agent's DaemonSet; and the uninstall Job template.
type rendered struct {
	arbiter *appsv1.Deployment
	agent   *appsv1.DaemonSet
	cleanup *batchv1.Job
}

func render(t *testing.T) rendered {
	t.Helper()
	out, err := cluster.Kubectl("kustomize", "deploy")
	if err != nil {
		t.Fatal(err)
	}
	var r rendered
	for _, doc := range strings.Split(out, "\n---\n") {
		var meta metav1.TypeMeta
		must(t, yaml.Unmarshal([]byte(doc), &meta))
		switch meta.Kind {
		case "Deployment":
			r.arbiter = &appsv1.Deployment{}
			must(t, yaml.Unmarshal([]byte(doc), r.arbiter))
		case "DaemonSet":
			r.agent = &appsv1.DaemonSet{}
			must(t, yaml.Unmarshal([]byte(doc), r.agent))
		}
	}
	if r.arbiter == nil || r.agent == nil {
		t.Fatalf("kubectl kustomize deploy rendered no Deployment or no DaemonSet:\n%s", out)
	}
	raw, err := os.ReadFile(filepath.Join(cluster.Root, "deploy/uninstall/job.yaml"))
	must(t, err)
	job := strings.NewReplacer("NODE_NAME", "some-node", "AGENT_IMAGE", r.agent.Spec.Template.Spec.Containers[0].Image).Replace(string(raw))
	r.cleanup = &batchv1.Job{}
	must(t, yaml.Unmarshal([]byte(job), r.cleanup))
	return r
}

// podOf is a Pod from a workload's template, in ns.
func podOf(ns string, tmpl corev1.PodTemplateSpec) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "podsecurity-", Namespace: ns, Labels: tmpl.Labels},
		Spec:       *tmpl.Spec.DeepCopy(),
	}
}

// dryRun creates obj with DryRun All as admin, returning the error and the
// API server's warnings.
func dryRun(t *testing.T, obj any) (error, string) {
	t.Helper()
	w := &warnings{}
	cfg := rest.CopyConfig(cluster.Config)
	cfg.WarningHandler = w
	c, err := kubernetes.NewForConfig(cfg)
	must(t, err)
	ctx := context.Background()
	opts := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	switch o := obj.(type) {
	case *corev1.Pod:
		_, err = c.CoreV1().Pods(o.Namespace).Create(ctx, o, opts)
	case *appsv1.Deployment:
		_, err = c.AppsV1().Deployments(o.Namespace).Create(ctx, o, opts)
	case *appsv1.DaemonSet:
		_, err = c.AppsV1().DaemonSets(o.Namespace).Create(ctx, o, opts)
	case *batchv1.Job:
		_, err = c.BatchV1().Jobs(o.Namespace).Create(ctx, o, opts)
	default:
		t.Fatalf("dryRun of %T", obj)
	}
	return err, w.all()
}

// TestPodSecurity: the arbiter's pods pass the restricted Pod Security
// level; the agent's (and the uninstall Job's, with the same host paths)
// are refused by restricted and by baseline, and pass only privileged.
// Each workload, as `kubectl kustomize deploy` renders it, is created with
// a server-side dry run into a namespace labelled with the level: its
// Pod, where the level is enforced, and the workload itself, which
// admission only warns about. Then the same against the namespaces of
// deploy/namespace.yaml, applied for real.
func TestPodSecurity(t *testing.T) {
	installRBAC(t)
	r := render(t)
	level := map[string]string{}
	for _, l := range []string{"restricted", "baseline", "privileged"} {
		ns := cluster.Namespace(t)
		patch := fmt.Sprintf(`{"metadata":{"labels":{"pod-security.kubernetes.io/enforce":%q,"pod-security.kubernetes.io/warn":%q}}}`, l, l)
		_, err := cluster.Client.CoreV1().Namespaces().Patch(context.Background(), ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
		must(t, err)
		// Their ServiceAccounts, so that only Pod Security can refuse.
		for _, sa := range []string{"arbiter", "agent"} {
			_, err := cluster.Client.CoreV1().ServiceAccounts(ns).Create(context.Background(),
				&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
			must(t, err)
		}
		level[l] = ns
	}
	type workload struct {
		name string
		tmpl corev1.PodTemplateSpec
		obj  func(ns string) any
	}
	arbiter := workload{"the arbiter's Deployment", r.arbiter.Spec.Template, func(ns string) any {
		d := r.arbiter.DeepCopy()
		d.Namespace = ns
		return d
	}}
	agent := workload{"the agent's DaemonSet", r.agent.Spec.Template, func(ns string) any {
		d := r.agent.DeepCopy()
		d.Namespace = ns
		return d
	}}
	cleanup := workload{"the uninstall Job", r.cleanup.Spec.Template, func(ns string) any {
		j := r.cleanup.DeepCopy()
		j.Namespace = ns
		return j
	}}
	tests := []struct {
		w       workload
		ns      string // a level, or a namespace of deploy/namespace.yaml
		allowed bool
		refusal []string // in the refusal's message
	}{
		{arbiter, "restricted", true, nil},
		{arbiter, "baseline", true, nil},
		{agent, "restricted", false, []string{`violates PodSecurity "restricted:latest"`, `volumes "etc", "usr", "run" use restricted volume type "hostPath"`, "runAsNonRoot"}},
		{agent, "baseline", false, []string{`violates PodSecurity "baseline:latest"`, `hostPath volumes (volumes "etc", "usr", "run")`, "seLinuxOptions"}},
		{agent, "privileged", true, nil},
		{cleanup, "baseline", false, []string{`violates PodSecurity "baseline:latest"`, "hostPath volumes"}},
		{cleanup, "privileged", true, nil},
		{arbiter, "reboot-manager", true, nil},
		{agent, "reboot-manager", false, []string{`violates PodSecurity "restricted:latest"`, `use restricted volume type "hostPath"`}},
		{agent, "reboot-manager-agent", true, nil},
		{cleanup, "reboot-manager-agent", true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.w.name+" in "+tt.ns, func(t *testing.T) {
			ns, ok := level[tt.ns]
			if !ok {
				ns = tt.ns
			}
			pod := podOf(ns, tt.w.tmpl)
			if tt.ns == "reboot-manager" {
				pod.Spec.ServiceAccountName = "arbiter" // the only one there
			}
			err, _ := dryRun(t, pod)
			if tt.allowed {
				if err != nil {
					t.Fatalf("a pod of %s in %s (%s) was refused: %v", tt.w.name, ns, tt.ns, err)
				}
			} else {
				if !apierrors.IsForbidden(err) {
					t.Fatalf("a pod of %s in %s (%s) = %v, want Forbidden by Pod Security", tt.w.name, ns, tt.ns, err)
				}
				for _, want := range tt.refusal {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("refusal %q lacks %q", err, want)
					}
				}
			}
			// The workload itself is admitted, with a warning exactly
			// when its pods would be refused (where the level warns).
			if _, labelled := level[tt.ns]; !labelled {
				return
			}
			err, warned := dryRun(t, tt.w.obj(ns))
			if err != nil {
				t.Fatalf("dry run of %s in %s: %v", tt.w.name, ns, err)
			}
			if got := strings.Contains(warned, "would violate PodSecurity"); got == tt.allowed {
				t.Errorf("%s in %s warned %v (%q), want %v", tt.w.name, tt.ns, got, warned, !tt.allowed)
			}
		})
	}
	for name, want := range map[string]map[string]string{
		"reboot-manager":       {"pod-security.kubernetes.io/enforce": "restricted"},
		"reboot-manager-agent": {"pod-security.kubernetes.io/enforce": "privileged"},
	} {
		ns, err := cluster.Client.CoreV1().Namespaces().Get(context.Background(), name, metav1.GetOptions{})
		must(t, err)
		for k, v := range want {
			if ns.Labels[k] != v {
				t.Errorf("namespace %s: %s = %q, want %q", name, k, ns.Labels[k], v)
			}
		}
	}
	if r.arbiter.Namespace != "reboot-manager" || r.agent.Namespace != "reboot-manager-agent" || r.cleanup.Namespace != "reboot-manager-agent" {
		t.Errorf("namespaces: arbiter %s, agent %s, cleanup Job %s; want reboot-manager, reboot-manager-agent, reboot-manager-agent",
			r.arbiter.Namespace, r.agent.Namespace, r.cleanup.Namespace)
	}
}
