package systemd

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
	"golang.org/x/sys/unix"
)

func TestFieldName(t *testing.T) {
	tests := map[string]string{
		"node": "NODE", "base_url": "BASE_URL", "changed": "CHANGED", "http.status": "HTTP_STATUS",
		"_private": "PRIVATE", "9lives": "LIVES", "": "FIELD", "ünï": "N_",
	}
	for in, want := range tests {
		if got := FieldName(in); got != want {
			t.Errorf("FieldName(%q) = %q, want %q", in, got, want)
		}
	}
}

// journald is a stand-in for journald's native socket: it receives
// datagrams at a path and decodes them, reading a record passed as a file
// descriptor the way journald does (only from a sealed memfd).
type journald struct {
	path string
	conn *net.UnixConn
}

func listenJournal(t *testing.T) *journald {
	t.Helper()
	path := filepath.Join(t.TempDir(), "socket")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &journald{path: path, conn: conn}
}

// record reads one record: its fields, and whether it came in a memfd.
func (j *journald) record(t *testing.T) (map[string]string, bool) {
	t.Helper()
	buf := make([]byte, 1<<20)
	oob := make([]byte, 64)
	_ = j.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, oobn, _, _, err := j.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatalf("read a record: %v", err)
	}
	data, viaFD := buf[:n], false
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) != 1 {
			t.Fatalf("control message: %v %v", msgs, err)
		}
		fds, err := unix.ParseUnixRights(&msgs[0])
		if err != nil || len(fds) != 1 {
			t.Fatalf("rights: %v %v", fds, err)
		}
		f := os.NewFile(uintptr(fds[0]), "record")
		defer f.Close()
		seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
		if err != nil || seals&(unix.F_SEAL_WRITE|unix.F_SEAL_SHRINK|unix.F_SEAL_GROW) == 0 {
			t.Fatalf("the record's memfd is not sealed: seals %#x, %v", seals, err)
		}
		fi, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if _, err := b.ReadFrom(io.NewSectionReader(f, 0, fi.Size())); err != nil {
			t.Fatal(err)
		}
		data, viaFD = b.Bytes(), true
	}
	fields := map[string]string{}
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			t.Fatalf("unterminated field %q", data)
		}
		line := string(data[:i])
		if k, v, ok := strings.Cut(line, "="); ok {
			fields[k] = v
			data = data[i+1:]
			continue
		}
		size := binary.LittleEndian.Uint64(data[i+1 : i+9])
		fields[line] = string(data[i+9 : i+9+int(size)])
		data = data[i+9+int(size)+1:]
	}
	return fields, viaFD
}

func TestJournalSend(t *testing.T) {
	j := listenJournal(t)
	big := strings.Repeat("x", 400<<10) // over a datagram's limit
	tests := []struct {
		name    string
		message string
		fields  map[string]string
		viaFD   bool
	}{
		{"plain", "wrote the drop-in", map[string]string{"NODE": "fcos-1", "CHANGED": "true"}, false},
		{"a value with newlines", "multi", map[string]string{"ERR": "line one\nline two\n"}, false},
		{"too large for a datagram: a sealed memfd", big, map[string]string{"NODE": "fcos-1"}, true},
	}
	w, err := OpenJournal(j.path)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := w.Send(tt.message, journal.PriWarning, tt.fields); err != nil {
				t.Fatal(err)
			}
			got, viaFD := j.record(t)
			if got["MESSAGE"] != tt.message || got["PRIORITY"] != "4" || viaFD != tt.viaFD {
				t.Errorf("MESSAGE %d bytes (want %d), PRIORITY %q, via fd %v (want %v)", len(got["MESSAGE"]), len(tt.message), got["PRIORITY"], viaFD, tt.viaFD)
			}
			for k, v := range tt.fields {
				if got[k] != v {
					t.Errorf("%s = %q, want %q", k, got[k], v)
				}
			}
		})
	}
}

// TestLogHandler: records go to the journal with their attributes as
// fields; with no journal at the path, or once it is gone, to stderr.
func TestLogHandler(t *testing.T) {
	j := listenJournal(t)
	var stderr bytes.Buffer
	h, found := NewLogHandler(j.path, "reboot-manager-agent", slog.LevelInfo, &stderr)
	if !found {
		t.Fatal("NewLogHandler did not find the journal")
	}
	log := slog.New(h).With("node", "fcos-1").WithGroup("http")
	log.Debug("not at this level")
	log.Warn("restart failed", "status", 503)
	got, _ := j.record(t)
	if got["MESSAGE"] != "restart failed node=fcos-1 http_status=503" || got["SYSLOG_IDENTIFIER"] != "reboot-manager-agent" ||
		got["NODE"] != "fcos-1" || got["HTTP_STATUS"] != "503" || got["PRIORITY"] != "4" {
		t.Errorf("record = %q", got)
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr = %q, want nothing while the journal takes records", stderr.String())
	}
	// The journal goes away: the record goes to stderr, with its attributes.
	j.conn.Close()
	os.Remove(j.path)
	log.Info("after the journal went", "changed", true)
	if s := stderr.String(); !strings.Contains(s, "after the journal went") || !strings.Contains(s, "node=fcos-1") || !strings.Contains(s, "http.changed=true") {
		t.Errorf("stderr = %q, want the record with its attributes", s)
	}

	stderr.Reset()
	h, found = NewLogHandler(filepath.Join(t.TempDir(), "none"), "reboot-manager-agent", slog.LevelInfo, &stderr)
	if found {
		t.Fatal("NewLogHandler found a journal where there is none")
	}
	slog.New(h).Info("no journal here", "node", "n")
	if s := stderr.String(); !strings.Contains(s, "no journal here") || !strings.Contains(s, "node=n") {
		t.Errorf("stderr without a journal = %q", s)
	}
	if _, err := OpenJournal(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Error("OpenJournal of a missing socket succeeded")
	}
	// A handler without a fallback says the record was lost.
	lost := &JournalHandler{identifier: "x", level: slog.LevelInfo}
	if err := lost.Handle(context.Background(), slog.NewRecord(time.Now(), slog.LevelInfo, "m", 0)); err == nil {
		t.Errorf("Handle without a journal or a fallback = %v, want an error", err)
	}
}
