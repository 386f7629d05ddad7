package e2e

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"

	"github.com/rebootmanager/reboot-manager/arbiter/apiclient"
	"github.com/rebootmanager/reboot-manager/arbiter/lock"
)

// TestSteadyStateFromListing: against the real API server, a release's
// compare-and-swap starts from the lock object as its fresh read returned
// it, whether a LIST of every group (FreshListing) or a GET of the
// group's (FreshGroups). When nothing changed since, that saves a second
// GET; when another replica wrote in between, the write conflicts and is
// made again on a new read, and the other replica's change is kept.
func TestSteadyStateFromListing(t *testing.T) {
	tests := []struct {
		name      string
		byGroup   bool // read by FreshGroups, not FreshListing
		changed   bool // another holder takes a slot between the read and the write
		wantGets  float64
		wantClash float64
	}{
		{"unchanged since the list: no GET", false, false, 0, 0},
		{"changed since the list: one conflict, read again", false, true, 1, 1},
		{"unchanged since the group's GET: no second GET", true, false, 0, 0},
		{"changed since the group's GET: one conflict, read again", true, true, 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			ns := cluster.Namespace(t)
			reg := prometheus.NewRegistry()
			client, err := kubernetes.NewForConfig(apiclient.Config(cluster.Config, "test", apiclient.NewMetrics(reg)))
			if err != nil {
				t.Fatal(err)
			}
			s := lock.New(client.CoordinationV1(), nil, ns)
			other := lock.New(cluster.Client.CoordinationV1(), nil, ns) // another replica
			lim := lock.Limits{Slots: 3}
			if _, err := s.Acquire(ctx, "g", lock.Holder{ID: "h"}, lim, nil); err != nil {
				t.Fatal(err)
			}
			read := s.FreshListing
			if tt.byGroup {
				read = func(ctx context.Context) (*lock.Listing, error) { return s.FreshGroups(ctx, []string{"g", "none"}) }
			}
			listing, err := read(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got := listing.Holders["g"]; len(got) != 1 || got[0].ID != "h" {
				t.Fatalf("fresh read shows %+v in g, want h", got)
			}
			if got, ok := listing.Holders["none"]; tt.byGroup && (!ok || len(got) != 0) {
				t.Errorf("a group with no lock object: %+v, %v; want read, no holders", got, ok)
			}
			if tt.changed {
				if _, err := other.Acquire(ctx, "g", lock.Holder{ID: "x"}, lim, nil); err != nil {
					t.Fatal(err)
				}
			}
			gets, puts409 := requests(t, reg, "GET", "200"), requests(t, reg, "PUT", "409")
			released, kept, err := s.SteadyState(ctx, listing, "g", func(h lock.Holder) bool { return h.ID == "h" }, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if len(released) != 1 || released[0].ID != "h" || len(kept) != 0 {
				t.Errorf("SteadyState released %+v, kept %+v; want h released", released, kept)
			}
			if got := requests(t, reg, "GET", "200") - gets; got != tt.wantGets {
				t.Errorf("SteadyState made %v GETs, want %v", got, tt.wantGets)
			}
			if got := requests(t, reg, "PUT", "409") - puts409; got != tt.wantClash {
				t.Errorf("SteadyState had %v conflicts, want %v", got, tt.wantClash)
			}
			o, err := other.Get(ctx, "g")
			if err != nil {
				t.Fatal(err)
			}
			ids := make([]string, len(o.Holders))
			for i, h := range o.Holders {
				ids[i] = h.ID
			}
			if want := map[bool][]string{false: {}, true: {"x"}}[tt.changed]; !slices.Equal(ids, want) {
				t.Errorf("holders after the release: %v, want %v", ids, want)
			}
		})
	}
}

// requests is how many requests of method answered code the clients
// measured in reg have made (package apiclient's metrics).
func requests(t *testing.T, reg *prometheus.Registry, method, code string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0.0
	for _, f := range families {
		if f.GetName() != "rebootmanager_api_request_duration_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			if have["method"] == method && have["code"] == code {
				n += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return n
}
