package coordinator

import (
	"context"
	"crypto/subtle"
	"log/slog"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/rebootmanager/reboot-manager/arbiter/nodes"
	"github.com/rebootmanager/reboot-manager/shared/annotations"
	"github.com/rebootmanager/reboot-manager/shared/credential"
	"github.com/rebootmanager/reboot-manager/shared/fleetlock"
)

type credentialKey struct{}

// WithCredential returns ctx carrying the secret a request presented (the
// password, or lone user name, of its Basic auth, or its Bearer token; ""
// for none), for authenticate.
func WithCredential(ctx context.Context, secret string) context.Context {
	return context.WithValue(ctx, credentialKey{}, secret)
}

func credentialFrom(ctx context.Context) string {
	s, _ := ctx.Value(credentialKey{}).(string)
	return s
}

// authenticate checks that a request about n (nil: a host outside the
// cluster), whose group is group, proves what n or its group requires:
//
//   - A Node with a credential hash: the host's credential, whatever the
//     source address and the group's token.
//   - A Node without one: refused under RequireNodeCredential; otherwise
//     served as unprotected (counted, one Warning Event), with its group's
//     token if the group has one, and from its own address under source
//     binding.
//   - A host outside the cluster: its group's token, which must exist.
//
// It reads only n as the caller has it: from the cache it can only refuse
// (a stale cache may still accept a rotated-out credential or a node's
// absent hash), so the caller repeats it on a fresh read of the Node before
// any 2xx that acts.
func (c *Coordinator) authenticate(ctx context.Context, log *slog.Logger, n *corev1.Node, group string) error {
	got := credentialFrom(ctx)
	if n == nil {
		want := c.token(group)
		if want == "" && c.cfg.AllowUnknownNodes {
			return fleetlock.Errorf(fleetlock.KindUnauthorized,
				"hosts outside the cluster are served only with a token: set the key _default (or %q) of the tokens Secret", group)
		}
		return checkToken(got, want, group)
	}
	// The current hash, then those of credentials Zincati may still run
	// during a rotation (comma-separated).
	hashes := append([]string{n.Annotations[annotations.CredentialSHA256]}, strings.Split(n.Annotations[annotations.CredentialPreviousSHA256], ",")...)
	if nodes.HasCredential(n) {
		switch {
		case credential.Matches(got, hashes...):
			return nil
		case got == "":
			log.Warn("request without the node's credential")
			return fleetlock.Errorf(fleetlock.KindUnauthorized,
				"node %s requires its host's credential, which the reboot-manager agent writes into Zincati's base_url as http://%s:SECRET@…; "+
					"this request carries none (if the agent just wrote it, Zincati picks it up when it restarts)", n.Name, n.Name)
		case !slices.ContainsFunc(hashes, credential.ValidHash):
			log.Warn("the node's credential hash is malformed")
			return fleetlock.Errorf(fleetlock.KindUnauthorized,
				"node %s's annotation %s is not a SHA-256 in hex: delete it, and the agent publishes a new credential", n.Name, annotations.CredentialSHA256)
		}
		log.Warn("request with a wrong credential for the node")
		return fleetlock.Errorf(fleetlock.KindUnauthorized, "wrong credential for node %s", n.Name)
	}
	if c.cfg.RequireNodeCredential {
		log.Warn("request for a node without a credential")
		return fleetlock.Errorf(fleetlock.KindUnauthorized,
			"node %s has no credential (annotation %s): run the reboot-manager agent on it; this arbiter requires one (--require-node-credential)",
			n.Name, annotations.CredentialSHA256)
	}
	c.warnUnprotected(n)
	if err := checkToken(got, c.token(group), group); err != nil {
		return err
	}
	return c.checkSource(ctx, log, n)
}

// token is the group's token, or "" for none.
func (c *Coordinator) token(group string) string {
	if c.cfg.Token == nil {
		return ""
	}
	return c.cfg.Token(group)
}

// checkToken compares a presented token with the group's, in constant
// time; a group without one accepts anything.
func checkToken(got, want, group string) error {
	if want == "" || subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1 {
		return nil
	}
	if got == "" {
		return fleetlock.Errorf(fleetlock.KindUnauthorized,
			"group %q requires a token: put it in Zincati's base_url as https://:TOKEN@host/, or send Authorization: Bearer TOKEN", group)
	}
	return fleetlock.Errorf(fleetlock.KindUnauthorized, "wrong token for group %q", group)
}

// unprotected remembers which Nodes were told, by one Warning Event, that
// they are served without a credential.
type unprotected struct {
	mu   sync.Mutex
	seen map[types.UID]bool
}

// warnUnprotected records, once per Node (by uid) and process, a Warning
// Event that its requests are served without a credential.
func (c *Coordinator) warnUnprotected(n *corev1.Node) {
	c.unprotected.mu.Lock()
	first := !c.unprotected.seen[n.UID]
	if first {
		if c.unprotected.seen == nil {
			c.unprotected.seen = map[types.UID]bool{}
		}
		c.unprotected.seen[n.UID] = true
	}
	c.unprotected.mu.Unlock()
	if first {
		c.nodes.Event(n, corev1.EventTypeWarning, "NoNodeCredential",
			"FleetLock requests for this node are served without a host credential (no %s annotation): anyone who can reach the arbiter can ask for it; "+
				"run the reboot-manager agent on it", annotations.CredentialSHA256)
	}
}
