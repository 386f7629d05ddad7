// Package e2e holds the end-to-end tests: they run against the local control
// plane (test/cluster) with kwok nodes, and against the real arbiter binary.
package e2e

import (
	"testing"

	"github.com/rebootmanager/reboot-manager/test/harness"
)

var cluster *harness.Cluster

func TestMain(m *testing.M) { harness.Main(m, &cluster) }
