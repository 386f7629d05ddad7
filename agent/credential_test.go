package agent

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/rebootmanager/reboot-manager/agent/dropin"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/credential"
)

// TestCredential is the agent's choice of the secret the drop-in carries
// and of the hashes the Node publishes first (pure logic: the fake
// clientset only records the patch).
func TestCredential(t *testing.T) {
	// lagging: the cache does not show yet the hash this agent published.
	const lagging = "the cache lags behind the agent's own hash: kept"
	old, pending := strings.Repeat("1", 64), strings.Repeat("2", 64)
	tests := []struct {
		name         string
		file         string // the drop-in's secret; "" for none
		current      string // the Node's hash annotations
		previous     string
		status       string
		wantKeep     bool   // the drop-in's secret stays
		wantNone     bool   // no secret yet
		wantPrevious string // the previous hashes published with a new secret
		wantFirst    bool
	}{
		{"steady: the drop-in's secret matches", old, credential.Hash(old), "", "", true, false, "", false},
		{"steady mid-cycle", old, credential.Hash(old), "", annotations.StatusDraining, true, false, "", false},
		{"first run", "", "", "", "", false, false, "", true},
		{lagging, old, "", "", "", true, false, "", false},
		{"first run mid-cycle: none yet, Zincati began without one", "", "", "", annotations.StatusRebooting, false, true, "", false},
		{"rotation asked for: the running secret stays accepted", old, "", "", "", false, false, credential.Hash(old), false},
		{"rotation mid-cycle: the same, restart deferred", old, "", "", annotations.StatusDraining, false, false, credential.Hash(old), false},
		{"a rotation already pending keeps its previous, and the drop-in's", old, "", credential.Hash(pending), "", false, false,
			credential.Hash(old) + "," + credential.Hash(pending), false},
		{"a hash that is not the drop-in's (crash mid-rotation)", old, credential.Hash(pending), credential.Hash(old), "", false, false, credential.Hash(old), false},
		{"previous hashes are bounded", old, "", credential.Hash("a") + "," + credential.Hash("b") + "," + credential.Hash("c"), "", false, false,
			credential.Hash(old) + "," + credential.Hash("a") + "," + credential.Hash("b"), false},
		{"first run, a holding mark but no status yet: a cycle too", "", "", "", "holding", false, true, "", false},
		{"a reinstalled host whose Node still has a hash", "", credential.Hash(pending), "", annotations.StatusDraining, false, false, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.file != "" {
				content, err := dropin.Render(dropin.Settings{BaseURL: "http://a/", User: "n", Secret: tt.file})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := dropin.Write(dir, dropin.DefaultName, content, dropin.Public); err != nil {
					t.Fatal(err)
				}
			}
			node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Annotations: map[string]string{}}}
			status, holding := tt.status, ""
			if status == "holding" {
				status, holding = "", "default/id/2026-12-01T00:00:00Z"
			}
			for k, v := range map[string]string{annotations.CredentialSHA256: tt.current, annotations.CredentialPreviousSHA256: tt.previous,
				annotations.Status: status, annotations.Holding: holding} {
				if v != "" {
					node.Annotations[k] = v
				}
			}
			served := node.DeepCopy()
			if tt.name == lagging {
				served.Annotations[annotations.CredentialSHA256] = credential.Hash(tt.file)
			}
			client := fake.NewClientset(served)
			a := New(Config{NodeName: "n", FileName: dropin.DefaultName}, client, nil, slog.New(slog.DiscardHandler))
			cred, err := a.credential(context.Background(), a.log, node, dir)
			if err != nil {
				t.Fatal(err)
			}
			got := cred.secret
			if cred.first != tt.wantFirst {
				t.Errorf("first = %v, want %v", cred.first, tt.wantFirst)
			}
			after, _ := client.CoreV1().Nodes().Get(context.Background(), "n", metav1.GetOptions{})
			switch {
			case tt.wantKeep && tt.name == lagging:
				if got != tt.file || len(client.Actions()) != 2 { // the fresh read, the Get above
					t.Fatalf("secret %q, %d API calls; want the drop-in's kept and no patch", got, len(client.Actions())-1)
				}
			case tt.wantKeep:
				if got != tt.file || len(client.Actions()) != 1 { // the Get above
					t.Fatalf("secret %q, %d API calls; want the drop-in's kept and no patch", got, len(client.Actions())-1)
				}
			case tt.wantNone:
				if got != "" || len(client.Actions()) != 2 { // the fresh read of the node, the Get above
					t.Fatalf("secret %q, %d API calls; want none and no patch", got, len(client.Actions())-1)
				}
			default:
				if !credential.Valid(got) || got == tt.file {
					t.Fatalf("secret %q, want a new one", got)
				}
				if h := after.Annotations[annotations.CredentialSHA256]; h != credential.Hash(got) {
					t.Fatalf("published hash %q, want the new secret's", h)
				}
				if p := after.Annotations[annotations.CredentialPreviousSHA256]; p != tt.wantPrevious {
					t.Fatalf("published previous %q, want %q", p, tt.wantPrevious)
				}
			}
		})
	}
}

// TestUnwrittenCredentialKept: a credential published but not yet written
// (the drop-in could not be) is the one the next pass writes; the agent
// does not make and publish another on every failing pass (pure logic:
// the fake clientset records the patches).
func TestUnwrittenCredentialKept(t *testing.T) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}}
	client := fake.NewClientset(node.DeepCopy())
	a := New(Config{NodeName: "n", FileName: dropin.DefaultName}, client, nil, slog.New(slog.DiscardHandler))
	dir := t.TempDir() // no drop-in is ever written there
	var secrets []string
	for range 3 {
		cred, err := a.credential(context.Background(), a.log, node, dir)
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, cred.secret)
		if !cred.first {
			t.Errorf("pass %d: the host's first credential is no longer first", len(secrets))
		}
	}
	if secrets[0] == "" || secrets[1] != secrets[0] || secrets[2] != secrets[0] {
		t.Fatalf("the passes gave different credentials: %q", secrets)
	}
	patches := 0
	for _, act := range client.Actions() {
		if act.GetVerb() == "patch" {
			patches++
		}
	}
	if patches != 1 {
		t.Fatalf("%d patches of the Node, want 1", patches)
	}
}
