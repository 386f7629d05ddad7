package coordinator

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rebootmanager/reboot-manager/arbiter/lock"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/credential"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
)

func TestAuthenticate(t *testing.T) {
	secret, old := strings.Repeat("1", 64), strings.Repeat("2", 64)
	withHash := func(current, previous string) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "u1", Annotations: map[string]string{}},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.0.0.1"}}}}
		if current != "" {
			n.Annotations[annotations.CredentialSHA256] = current
		}
		if previous != "" {
			n.Annotations[annotations.CredentialPreviousSHA256] = previous
		}
		return n
	}
	bare := withHash("", "")
	tokens := func(g string) string {
		if g == "locked" {
			return "group-token"
		}
		return ""
	}
	elsewhere := netip.MustParseAddr("10.9.9.9")
	tests := []struct {
		name      string
		cfg       Config
		node      *corev1.Node
		group     string
		presented string
		source    netip.Addr
		want      fleetlock.Kind // "" for accepted
		wantIn    string
	}{
		{"credential from anywhere", Config{SourceBinding: true}, withHash(credential.Hash(secret), ""), "default", secret, elsewhere, "", ""},
		{"credential replaces the group token", Config{Token: tokens}, withHash(credential.Hash(secret), ""), "locked", secret, elsewhere, "", ""},
		{"previous credential during a rotation", Config{}, withHash(credential.Hash(secret), credential.Hash(old)), "default", old, elsewhere, "", ""},
		{"one of several previous during a rotation", Config{}, withHash(credential.Hash(secret), credential.Hash("x")+","+credential.Hash(old)), "default", old, elsewhere, "", ""},
		{"previous alone (the current hash deleted)", Config{}, withHash("", credential.Hash(old)), "default", old, elsewhere, "", ""},
		{"wrong credential", Config{}, withHash(credential.Hash(secret), ""), "default", old, elsewhere, fleetlock.KindUnauthorized, "wrong credential for node n1"},
		{"missing credential", Config{}, withHash(credential.Hash(secret), ""), "default", "", elsewhere, fleetlock.KindUnauthorized, "carries none"},
		{"the group token is no credential", Config{Token: tokens}, withHash(credential.Hash(secret), ""), "locked", "group-token", elsewhere, fleetlock.KindUnauthorized, "wrong credential"},
		{"the hash is no credential", Config{}, withHash(credential.Hash(secret), ""), "default", credential.Hash(secret), elsewhere, fleetlock.KindUnauthorized, "wrong credential"},
		{"malformed hash", Config{}, withHash("not-a-hash", ""), "default", secret, elsewhere, fleetlock.KindUnauthorized, "not a SHA-256"},
		{"no hash: served", Config{}, bare, "default", "", elsewhere, "", ""},
		{"no hash, required", Config{RequireNodeCredential: true}, bare, "default", "", elsewhere, fleetlock.KindUnauthorized, "--require-node-credential"},
		{"no hash: the group token", Config{Token: tokens}, bare, "locked", "group-token", elsewhere, "", ""},
		{"no hash: the group token missing", Config{Token: tokens}, bare, "locked", "", elsewhere, fleetlock.KindUnauthorized, "requires a token"},
		{"no hash: source binding, own address", Config{SourceBinding: true}, bare, "default", "", netip.MustParseAddr("10.0.0.1"), "", ""},
		{"no hash: source binding, elsewhere", Config{SourceBinding: true}, bare, "default", "", elsewhere, fleetlock.KindForbiddenSource, "no credential"},
		{"outside the cluster: the group token", Config{Token: tokens, AllowUnknownNodes: true}, nil, "locked", "group-token", elsewhere, "", ""},
		{"outside the cluster: no token configured", Config{Token: tokens, AllowUnknownNodes: true}, nil, "open", "", elsewhere, fleetlock.KindUnauthorized, "_default"},
		{"outside the cluster: wrong token", Config{Token: tokens, AllowUnknownNodes: true}, nil, "locked", "x", elsewhere, fleetlock.KindUnauthorized, "wrong token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fake{}
			c := New(Deps{Nodes: f, Lock: &f.memLock, Drainer: f, Settings: f, Gate: f}, tt.cfg, nil, slog.New(slog.DiscardHandler))
			ctx := WithSource(WithCredential(context.Background(), tt.presented), tt.source)
			err := c.authenticate(ctx, c.log, tt.node, tt.group)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("authenticate = %v, want accepted", err)
				}
				return
			}
			if !fleetlock.IsKind(err, tt.want) || !strings.Contains(err.Error(), tt.wantIn) {
				t.Fatalf("authenticate = %v, want %s mentioning %q", err, tt.want, tt.wantIn)
			}
			if tt.presented != "" && strings.Contains(err.Error(), tt.presented) {
				t.Fatalf("the reply %q repeats the presented secret", err)
			}
		})
	}
}

// TestUnprotectedWarnedOnce: one Warning Event per Node, however many
// requests.
func TestUnprotectedWarnedOnce(t *testing.T) {
	f := &fake{recordUnprotected: true}
	c := New(Deps{Nodes: f, Lock: &f.memLock, Drainer: f, Settings: f, Gate: f}, Config{}, nil, slog.New(slog.DiscardHandler))
	n1 := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "u1"}}
	n2 := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2", UID: "u2"}}
	for range 3 {
		for _, n := range []*corev1.Node{n1, n2} {
			if err := c.authenticate(context.Background(), c.log, n, "default"); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := strings.Count(strings.Join(f.calls, " "), "Event(NoNodeCredential)"); got != 2 {
		t.Fatalf("NoNodeCredential Events = %d, want 2 (one per node): %v", got, f.calls)
	}
}

// TestHoldsElsewhere: a new slot is refused to a node that holds one in
// another group on the fresh list, whatever the cache says.
func TestHoldsElsewhere(t *testing.T) {
	f := &fake{memLock: memLock{holders: holding("id", "n1", lock.PhaseDraining)}} // in group "g"
	c := New(Deps{Nodes: f, Lock: &f.memLock, Drainer: f, Settings: f, Gate: f}, Config{}, nil, slog.New(slog.DiscardHandler))
	for _, tc := range []struct {
		group, node string
		want        fleetlock.Kind
	}{
		{"other", "n1", fleetlock.KindWrongGroup},
		{"g", "n1", ""},     // its own group: Acquire confirms the slot
		{"other", "n2", ""}, // another node
	} {
		fresh, err := f.FreshNow(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		err = c.holdsElsewhere(c.log, fresh, tc.group, tc.node)
		if tc.want == "" && err != nil || tc.want != "" && !fleetlock.IsKind(err, tc.want) {
			t.Errorf("holdsElsewhere(%s, %s) = %v, want %q", tc.group, tc.node, err, tc.want)
		}
	}
}
