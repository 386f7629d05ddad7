package fleetlock

import (
	"context"
	"strings"
	"testing"
)

// TestClientErrorsHideUserInfo: a base URL's user info is a credential or a
// token, and no error shows it, whether it is a password or a lone user name.
func TestClientErrorsHideUserInfo(t *testing.T) {
	for _, base := range []string{
		"http://node-1:SECRETSECRET@127.0.0.1:1/", // nothing listens on port 1
		"http://SECRETSECRET@127.0.0.1:1/",
		"http://SECRETSECRET@[::1:/", // does not parse
	} {
		err := (&Client{BaseURL: base}).PreReboot(context.Background(), ClientParams{ID: "a", Group: "default"})
		if err == nil || strings.Contains(err.Error(), "SECRETSECRET") {
			t.Errorf("error for %s = %v, want one without the user info", strings.Replace(base, "SECRETSECRET", "…", 1), err)
		}
	}
}
