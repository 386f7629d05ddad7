package credential

import (
	"strings"
	"testing"
)

func TestNew(t *testing.T) {
	a, err := New()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := New()
	if !Valid(a) || !Valid(b) || a == b {
		t.Fatalf("New gave %q and %q", a, b)
	}
	if !ValidHash(Hash(a)) || Hash(a) == Hash(b) {
		t.Fatalf("Hash gave %q for %q", Hash(a), a)
	}
}

func TestValid(t *testing.T) {
	good := strings.Repeat("0a", Size)
	for _, tc := range []struct {
		s    string
		want bool
	}{
		{good, true},
		{"", false},
		{good[1:], false},
		{good + "0", false},
		{strings.ToUpper(good), false},
		{strings.Repeat("g", 2*Size), false},
		{strings.Repeat("%", 2*Size), false},
	} {
		if got := Valid(tc.s); got != tc.want {
			t.Errorf("Valid(%q) = %v, want %v", tc.s, got, tc.want)
		}
	}
}

func TestMatches(t *testing.T) {
	secret, other := strings.Repeat("1", 2*Size), strings.Repeat("2", 2*Size)
	h, o := Hash(secret), Hash(other)
	for _, tc := range []struct {
		name      string
		presented string
		hashes    []string
		want      bool
	}{
		{"current", secret, []string{h}, true},
		{"previous", secret, []string{o, h}, true},
		{"wrong", other, []string{h}, false},
		{"missing", "", []string{h}, false},
		{"no hashes", secret, nil, false},
		{"empty hashes skipped", "", []string{"", ""}, false},
		{"the hash itself is not the secret", h, []string{h}, false},
		{"upper-case hash never matches", secret, []string{strings.ToUpper(h)}, false},
	} {
		if got := Matches(tc.presented, tc.hashes...); got != tc.want {
			t.Errorf("%s: Matches = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestURL(t *testing.T) {
	secret := strings.Repeat("ab", Size)
	u, err := InURL("http://10.96.0.10:80/", "node-1.example", secret)
	if err != nil {
		t.Fatal(err)
	}
	if want := "http://node-1.example:" + secret + "@10.96.0.10:80/"; u != want {
		t.Fatalf("InURL = %q, want %q", u, want)
	}
	if got := FromURL(u); got != secret {
		t.Fatalf("FromURL = %q", got)
	}
	if got := Redact(u); got != "http://10.96.0.10:80/" {
		t.Fatalf("Redact = %q", got)
	}
	for _, raw := range []string{"http://10.96.0.10/", "http://:short@h/", "http://u@h/", "::bad"} {
		if got := FromURL(raw); got != "" {
			t.Errorf("FromURL(%q) = %q, want none", raw, got)
		}
	}
	if _, err := InURL("::bad", "u", secret); err == nil {
		t.Error("InURL accepted a bad URL")
	}
}
