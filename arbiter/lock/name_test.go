package lock

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"
)

func TestObjectName(t *testing.T) {
	tests := []struct {
		group, want string
	}{
		{"default", "fleetlock-default"},
		{"workers-1", "fleetlock-workers-1"},
		{"Group-A", "fleetlock-group-a."},
		{"group-a.", "fleetlock-group-a."},
		{"-", "fleetlock-x."},
		{"a.b", "fleetlock-a-b."},
		{"a-", "fleetlock-a."},
		{strings.Repeat("a", 60), "fleetlock-" + strings.Repeat("a", 40) + "."},
	}
	seen := map[string]string{}
	for _, tt := range tests {
		got := ObjectName(tt.group)
		if !strings.HasPrefix(got, tt.want) || (!strings.HasSuffix(tt.want, ".") && got != tt.want) {
			t.Errorf("ObjectName(%q) = %q, want %q…", tt.group, got, tt.want)
		}
		if errs := validation.IsDNS1123Subdomain(got); len(errs) > 0 {
			t.Errorf("ObjectName(%q) = %q is not a valid object name: %v", tt.group, got, errs)
		}
		if other, ok := seen[got]; ok {
			t.Errorf("ObjectName(%q) = ObjectName(%q) = %q", tt.group, other, got)
		}
		seen[got] = tt.group
	}
}

func FuzzObjectName(f *testing.F) {
	for _, s := range []string{"default", "Group-A", "-", "a.b", "A", "a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, group string) {
		name := ObjectName(group)
		if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
			t.Fatalf("ObjectName(%q) = %q is not a valid object name: %v", group, name, errs)
		}
		if plain := !strings.Contains(name, "."); plain && name != NamePrefix+group {
			t.Fatalf("ObjectName(%q) = %q: plain names must be the group itself", group, name)
		}
	})
}
