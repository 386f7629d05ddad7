package monitoring

import (
	"testing"

	"github.com/rebootmanager/reboot-manager/test/harness"
)

var cluster *harness.Cluster

func TestMain(m *testing.M) { harness.Main(m, &cluster) }
