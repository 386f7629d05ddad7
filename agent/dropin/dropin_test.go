package dropin

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

func TestRender(t *testing.T) {
	tests := []struct {
		name    string
		s       Settings
		want    string
		wantErr string
	}{
		{"base url gets a slash", Settings{BaseURL: "http://10.0.0.7"}, `base_url = "http://10.0.0.7/"`, ""},
		{"slash kept once", Settings{BaseURL: "http://10.0.0.7/fleetlock/"}, `base_url = "http://10.0.0.7/fleetlock/"`, ""},
		{"group", Settings{BaseURL: "http://a/", Group: "Group-A.1"}, "[identity]\ngroup = \"Group-A.1\"", ""},
		{"no group, no identity", Settings{BaseURL: "http://a/"}, `strategy = "fleet_lock"`, ""},
		{"bad group", Settings{BaseURL: "http://a/", Group: "a b"}, "", "does not match"},
		{"no url", Settings{}, "", "no base URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Render(tt.s)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Render() error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(got), tt.want) {
				t.Errorf("Render() =\n%s\nwant it to contain %q", got, tt.want)
			}
			if tt.s.Group == "" && strings.Contains(string(got), "identity") {
				t.Errorf("Render() = %s, want no [identity] without a group", got)
			}
			// It must parse back as Zincati reads it.
			var doc document
			if _, err := toml.Decode(string(got), &doc); err != nil || doc.Updates.Strategy != "fleet_lock" {
				t.Errorf("rendered TOML does not parse back: %v %+v", err, doc)
			}
		})
	}
}

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	other := filepath.Join(dir, "30-updates-strategy.toml")
	if err := os.WriteFile(other, []byte("[updates]\nstrategy = \"immediate\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		content     string
		wantChanged bool
	}{
		{"a", true},  // created
		{"a", false}, // unchanged: nothing written
		{"b", true},  // changed
	}
	for i, s := range steps {
		changed, err := Write(dir, DefaultName, []byte(s.content))
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if changed != s.wantChanged {
			t.Errorf("step %d: changed = %v, want %v", i, changed, s.wantChanged)
		}
		got, _ := os.ReadFile(filepath.Join(dir, DefaultName))
		if string(got) != s.content {
			t.Errorf("step %d: file = %q, want %q", i, got, s.content)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, DefaultName))
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("mode = %v (%v), want 0644", fi.Mode(), err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("directory holds %d files, want ours and the distro's (no temp files left)", len(entries))
	}
	if b, _ := os.ReadFile(other); !strings.Contains(string(b), "immediate") {
		t.Error("a file that is not ours was touched")
	}
	if removed, err := Remove(dir, DefaultName); !removed || err != nil {
		t.Errorf("Remove = %v, %v", removed, err)
	}
	if removed, err := Remove(dir, DefaultName); removed || err != nil {
		t.Errorf("second Remove = %v, %v, want false, nil", removed, err)
	}
}

func TestWriteReadOnlyDir(t *testing.T) {
	if os.Geteuid() == 0 {
		// root ignores directory permissions; use a path that cannot exist.
		_, err := Write("/proc/self/no-such-dir", DefaultName, []byte("x"))
		if err == nil {
			t.Fatal("Write into a missing directory succeeded")
		}
		return
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(dir, DefaultName, []byte("x")); err == nil {
		t.Fatal("Write into a read-only directory succeeded")
	}
}
