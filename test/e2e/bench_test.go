package e2e

import (
	"bufio"
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
)

// BenchmarkSteadyStateNoop measures a steady-state from a Ready node that
// holds no slot, through real HTTP to the real arbiter binary. It reports
// the API server requests made per check-in, from the API server's own
// apiserver_request_total (which also counts the plane's background
// traffic, so the figure is an upper bound).
func BenchmarkSteadyStateNoop(b *testing.B) {
	ns := cluster.Namespace(b)
	node := newNodes(b, ns, 1, nil)[0]
	a := startArbiter(b, ns, "--log-level", "warn")
	p := fleetlock.ClientParams{ID: node.id, Group: "default"}
	ctx := context.Background()
	if err := a.client.SteadyState(ctx, p); err != nil {
		b.Fatal(err)
	}
	before := apiserverRequests(b)
	b.ResetTimer()
	for b.Loop() {
		if err := a.client.SteadyState(ctx, p); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	after := apiserverRequests(b)
	b.ReportMetric((after-before)/float64(b.N), "apiserver-req/op")
}

// apiserverRequests sums apiserver_request_total over all labels.
func apiserverRequests(b *testing.B) float64 {
	b.Helper()
	raw, err := cluster.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	total := 0.0
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "apiserver_request_total{") {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			total += v
		}
	}
	return total
}
