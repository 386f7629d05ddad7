package tokens

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestStore(t *testing.T) {
	s := NewStore()
	if got := s.For("default"); got != "" {
		t.Fatalf("empty store requires %q", got)
	}
	s.Set(&corev1.Secret{Data: map[string][]byte{"workers": []byte("w-token\n"), DefaultKey: []byte("d-token"), "db": []byte("  ")}})
	for group, want := range map[string]string{"workers": "w-token", "Group-A.1": "d-token", "db": "d-token"} {
		if got := s.For(group); got != want {
			t.Errorf("For(%q) = %q, want %q", group, got, want)
		}
	}
	s.Set(nil)
	if got := s.For("workers"); got != "" {
		t.Errorf("after the Secret's deletion For = %q, want none", got)
	}
}
