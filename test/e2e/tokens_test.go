package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
	"github.com/rebootmanager/reboot-manager/test/fixtures"
	"github.com/rebootmanager/reboot-manager/test/harness"
)

// TestTokens: a group with a token in the watched Secret refuses requests
// without it (401 unauthorized) and takes it as Zincati sends it, from the
// base_url's user info; a rotated token applies at once; a group without a
// token needs none.
func TestTokens(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	nodes := newNodes(t, ns, 2, func(i int, s *fixtures.NodeSpec) {
		s.Labels[annotations.GroupLabel] = []string{"locked", "open"}[i]
	})
	secrets := cluster.Client.CoreV1().Secrets(ns)
	_, err := secrets.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "reboot-manager-tokens"},
		StringData: map[string]string{"locked": "first-token\n"},
	}, metav1.CreateOptions{})
	must(t, err)
	a := startArbiter(t, ns)
	withToken := func(token string) *fleetlock.Client {
		return &fleetlock.Client{BaseURL: strings.Replace(a.url, "http://", "http://:"+token+"@", 1), HTTP: &http.Client{}}
	}
	p := fleetlock.ClientParams{ID: nodes[0].id, Group: "locked"}

	err = a.client.PreReboot(ctx, p)
	var se *fleetlock.StatusError
	if !fleetlock.IsKind(err, fleetlock.KindUnauthorized) || !errors.As(err, &se) || se.Status != 401 {
		t.Fatalf("pre-reboot without the token = %v, want 401 unauthorized", err)
	}
	if err := withToken("wrong").PreReboot(ctx, p); !fleetlock.IsKind(err, fleetlock.KindUnauthorized) {
		t.Fatalf("pre-reboot with a wrong token = %v, want unauthorized", err)
	}
	if h := holders(t, ns, "locked"); len(h) != 0 {
		t.Fatalf("refused requests took a slot: %+v", h)
	}
	if err := withToken("first-token").PreReboot(ctx, p); err != nil {
		t.Fatalf("pre-reboot with the token in the base URL = %v, want 200", err)
	}
	if err := a.client.PreReboot(ctx, fleetlock.ClientParams{ID: nodes[1].id, Group: "open"}); err != nil {
		t.Fatalf("a group without a token = %v, want 200", err)
	}

	reboot(t, nodes[0].name)
	// Rotation: the new token at once, the old one no more.
	s, err := secrets.Get(ctx, "reboot-manager-tokens", metav1.GetOptions{})
	must(t, err)
	s.Data = map[string][]byte{"locked": []byte("second-token")}
	_, err = secrets.Update(ctx, s, metav1.UpdateOptions{})
	must(t, err)
	harness.Eventually(t, 10*time.Second, "the rotated token", func() error {
		if err := withToken("second-token").SteadyState(ctx, p); err != nil {
			return fmt.Errorf("steady-state with the new token: %v", err)
		}
		return nil
	})
	if err := withToken("first-token").SteadyState(ctx, p); !fleetlock.IsKind(err, fleetlock.KindUnauthorized) {
		t.Fatalf("steady-state with the old token = %v, want unauthorized", err)
	}
	released(t, ns, "locked", nodes[0].name)
}
