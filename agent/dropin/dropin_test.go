package dropin

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/rebootmanager/reboot-manager/shared/credential"
)

var secret = strings.Repeat("5e", credential.Size)

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
		{"credential in the user info", Settings{BaseURL: "http://10.0.0.7:80", User: "node-1", Secret: secret},
			`base_url = "http://node-1:` + secret + `@10.0.0.7:80/"`, ""},
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
		changed, err := Write(dir, DefaultName, []byte(s.content), Public)
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
		_, err := Write("/proc/self/no-such-dir", DefaultName, []byte("x"), Public)
		if err == nil {
			t.Fatal("Write into a missing directory succeeded")
		}
		return
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(dir, DefaultName, []byte("x"), Public); err == nil {
		t.Fatal("Write into a read-only directory succeeded")
	}
}

func TestSecret(t *testing.T) {
	dir := t.TempDir()
	content, err := Render(Settings{BaseURL: "http://10.0.0.7", User: "n", Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		content string // "" for no file
		want    string
	}{
		{"no file", "", ""},
		{"ours", string(content), secret},
		{"no credential", "[updates]\nstrategy = \"fleet_lock\"\n[updates.fleet_lock]\nbase_url = \"http://a/\"\n", ""},
		{"not TOML", "[updates\n", ""},
		{"a short password is not ours", "[updates.fleet_lock]\nbase_url = \"http://n:abc@a/\"\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(filepath.Join(dir, DefaultName))
			if tc.content != "" {
				if err := os.WriteFile(filepath.Join(dir, DefaultName), []byte(tc.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, err := Secret(dir, DefaultName)
			if err != nil || got != tc.want {
				t.Errorf("Secret = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestWriteAccess writes a secret 0640 to a group, and fixes the owner and
// mode of a file whose bytes are already right without calling it changed.
func TestWriteAccess(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to another group needs root")
	}
	dir := t.TempDir()
	acc := Access{Mode: 0o640, GID: 4242}
	check := func(step string) {
		t.Helper()
		fi, err := os.Stat(filepath.Join(dir, DefaultName))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != 0o640 || st.Gid != 4242 || st.Uid != 0 {
			t.Errorf("%s: mode %v, owner %d:%d; want 0640 0:4242", step, fi.Mode().Perm(), st.Uid, st.Gid)
		}
	}
	if changed, err := Write(dir, DefaultName, []byte("secret"), acc); err != nil || !changed {
		t.Fatalf("Write = %v, %v", changed, err)
	}
	check("created")
	if err := os.Chmod(filepath.Join(dir, DefaultName), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(dir, DefaultName), 0, 0); err != nil {
		t.Fatal(err)
	}
	if changed, err := Write(dir, DefaultName, []byte("secret"), acc); err != nil || changed {
		t.Fatalf("Write of the same bytes = %v, %v; want unchanged", changed, err)
	}
	check("fixed in place")
}

func TestZincatiAccess(t *testing.T) {
	for _, tc := range []struct {
		name    string
		files   map[string]string
		wantGID int
		wantErr string
	}{
		{"user's primary group in /etc/passwd", map[string]string{
			"etc/passwd": "root:x:0:0::/root:/bin/bash\nzincati:x:990:985::/var/lib/zincati:/sbin/nologin\n",
			"etc/group":  "zincati:x:990:\n"}, 985, ""},
		{"nss-altfiles in /usr/lib", map[string]string{"usr/lib/passwd": "zincati:x:990:986::/:/sbin/nologin\n"}, 986, ""},
		{"only a group", map[string]string{"etc/group": "wheel:x:10:\nzincati:x:977:\n"}, 977, ""},
		{"none", map[string]string{"etc/passwd": "root:x:0:0::/root:/bin/bash\n"}, 0, "no zincati"},
		{"no database at all", nil, 0, "no zincati"},
		{"bad gid", map[string]string{"etc/passwd": "zincati:x:990:abc::/:/sbin/nologin\n"}, 0, "bad id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for name, content := range tc.files {
				os.MkdirAll(filepath.Dir(filepath.Join(root, name)), 0o755)
				if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			acc, err := ZincatiAccess(root)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ZincatiAccess = %+v, %v; want error %q", acc, err, tc.wantErr)
				}
				return
			}
			if err != nil || acc != (Access{Mode: 0o640, GID: tc.wantGID}) {
				t.Fatalf("ZincatiAccess = %+v, %v; want 0640 group %d", acc, err, tc.wantGID)
			}
		})
	}
}
