package apiversion

import (
	"errors"
	"testing"

	"k8s.io/apimachinery/pkg/version"
	fakediscovery "k8s.io/client-go/discovery/fake"
	k8stesting "k8s.io/client-go/testing"
)

func TestCheck(t *testing.T) {
	for _, tt := range []struct {
		git     string
		tooOld  bool
		wantErr bool
	}{
		{"v1.37.2", false, false},
		{"v1.30.0", false, false},
		{"v1.30.4-gke.1000", false, false},
		{"v1.29.15+k3s1", true, true},
		{"v1.22.0", true, true},
		{"not a version", false, true},
	} {
		t.Run(tt.git, func(t *testing.T) {
			d := &fakediscovery.FakeDiscovery{Fake: &k8stesting.Fake{}, FakedServerVersion: &version.Info{GitVersion: tt.git}}
			got, err := Check(d)
			if (err != nil) != tt.wantErr || errors.Is(err, ErrTooOld) != tt.tooOld {
				t.Fatalf("Check(%s) = %q, %v; want error %v, too old %v", tt.git, got, err, tt.wantErr, tt.tooOld)
			}
		})
	}
}
