// Package apiversion checks that the API server is new enough for what
// reboot-manager relies on: ValidatingAdmissionPolicy (GA in Kubernetes
// 1.30), with CEL's optional syntax, and the node-name claim of bound
// ServiceAccount tokens (on by default from 1.30), which the policies use
// to hold each agent to its own Node.
package apiversion

import (
	"errors"
	"fmt"
	"log/slog"

	"k8s.io/apimachinery/pkg/util/version"
	"k8s.io/client-go/discovery"
)

// Minimum is the oldest Kubernetes version reboot-manager supports.
const Minimum = "1.30.0"

// ErrTooOld is returned by Check for an API server older than Minimum.
var ErrTooOld = errors.New("the API server is too old")

// Check asks the API server for its version and returns it. The error
// wraps ErrTooOld, and says what is missing, when the version is older
// than Minimum; any other error means the version could not be read.
func Check(d discovery.ServerVersionInterface) (string, error) {
	info, err := d.ServerVersion()
	if err != nil {
		return "", fmt.Errorf("read the API server's version: %w", err)
	}
	v, err := version.ParseGeneric(info.GitVersion)
	if err != nil {
		return info.GitVersion, fmt.Errorf("read the API server's version %q: %w", info.GitVersion, err)
	}
	if v.LessThan(version.MustParseGeneric(Minimum)) {
		return info.GitVersion, fmt.Errorf("%w: Kubernetes %s, but reboot-manager needs %s or newer "+
			"(ValidatingAdmissionPolicy, and the node-name claim of bound ServiceAccount tokens, hold each agent to its own Node and the operators to their job)",
			ErrTooOld, info.GitVersion, Minimum)
	}
	return info.GitVersion, nil
}

// Require is Check for a program starting: it returns the error of an API
// server older than Minimum, and only logs one whose version cannot be
// read (down at start, say), which the program then waits out as any
// outage.
func Require(d discovery.ServerVersionInterface, log *slog.Logger) error {
	v, err := Check(d)
	switch {
	case errors.Is(err, ErrTooOld):
		return err
	case err != nil:
		log.Warn("could not check the API server's version", "err", err, "minimum", Minimum)
	default:
		log.Info("API server version", "version", v, "minimum", Minimum)
	}
	return nil
}
