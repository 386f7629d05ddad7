package systemd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/coreos/go-systemd/v22/journal"
	"golang.org/x/sys/unix"
)

// DefaultJournalSocket is where journald takes native records.
const DefaultJournalSocket = "/run/systemd/journal/socket"

// Journal sends records to journald's native socket at a path of its
// choosing (the host's socket under a hostPath mount, say), which
// go-systemd's journal package, fixed to DefaultJournalSocket, cannot.
type Journal struct {
	addr *net.UnixAddr
	conn *net.UnixConn
}

// OpenJournal returns a Journal for the socket at path. It fails when
// nothing takes a datagram there (no such socket, or no journald behind
// it).
func OpenJournal(path string) (*Journal, error) {
	addr := &net.UnixAddr{Name: path, Net: "unixgram"}
	probe, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return nil, fmt.Errorf("open the journal at %s: %w", path, err)
	}
	probe.Close()
	// Unconnected, and addressed on every send, so that a journald whose
	// socket is made anew is reached at the same path.
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("open the journal at %s: %w", path, err)
	}
	return &Journal{addr: addr, conn: conn}, nil
}

// Close closes the journal's socket.
func (j *Journal) Close() error { return j.conn.Close() }

// Send writes one record: MESSAGE, PRIORITY and fields (uppercase names,
// see FieldName). A record too large for one datagram goes in a sealed
// memfd, as sd_journal_send does.
func (j *Journal) Send(message string, priority journal.Priority, fields map[string]string) error {
	var data bytes.Buffer
	appendField(&data, "PRIORITY", strconv.Itoa(int(priority)))
	appendField(&data, "MESSAGE", message)
	for k, v := range fields {
		appendField(&data, k, v)
	}
	_, _, err := j.conn.WriteMsgUnix(data.Bytes(), nil, j.addr)
	if err == nil {
		return nil
	}
	if !errors.Is(err, syscall.EMSGSIZE) && !errors.Is(err, syscall.ENOBUFS) {
		return fmt.Errorf("send to the journal: %w", err)
	}
	fd, err := unix.MemfdCreate("journal-record", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return fmt.Errorf("send a large record to the journal: memfd: %w", err)
	}
	defer unix.Close(fd)
	for b := data.Bytes(); len(b) > 0; {
		n, err := unix.Write(fd, b)
		if err != nil {
			return fmt.Errorf("send a large record to the journal: write the memfd: %w", err)
		}
		b = b[n:]
	}
	// journald maps a sealed memfd as is.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE|unix.F_SEAL_SEAL); err != nil {
		return fmt.Errorf("send a large record to the journal: seal the memfd: %w", err)
	}
	if _, _, err := j.conn.WriteMsgUnix(nil, unix.UnixRights(fd), j.addr); err != nil {
		return fmt.Errorf("send a large record to the journal: %w", err)
	}
	return nil
}

// appendField writes one field in journald's native format: NAME=value on
// a line, or, for a value with a newline, NAME, a newline, the value's
// length as 64-bit little endian, the value and a newline.
func appendField(w *bytes.Buffer, name, value string) {
	if !strings.ContainsRune(value, '\n') {
		fmt.Fprintf(w, "%s=%s\n", name, value)
		return
	}
	w.WriteString(name)
	w.WriteByte('\n')
	_ = binary.Write(w, binary.LittleEndian, uint64(len(value)))
	w.WriteString(value)
	w.WriteByte('\n')
}

// JournalHandler is a slog.Handler that sends each record to the host's
// journal, with SYSLOG_IDENTIFIER set and every attribute as an uppercase
// journal field (node → NODE, base_url → BASE_URL), so
// `journalctl -t IDENTIFIER` shows them and `-o verbose` shows the fields.
// A record the journal does not take goes to its fallback handler, if it
// has one.
type JournalHandler struct {
	journal    *Journal
	fallback   slog.Handler
	identifier string
	level      slog.Leveler
	attrs      []slog.Attr
	group      string
}

// JournalAvailable reports whether the journal's socket at
// DefaultJournalSocket is reachable.
func JournalAvailable() bool {
	j, err := OpenJournal(DefaultJournalSocket)
	if err != nil {
		return false
	}
	j.Close()
	return true
}

// NewJournalHandler returns a handler that logs as identifier at level to
// the journal at DefaultJournalSocket (records are dropped if it has
// none; see NewLogHandler for a fallback).
func NewJournalHandler(identifier string, level slog.Leveler) *JournalHandler {
	j, _ := OpenJournal(DefaultJournalSocket)
	return &JournalHandler{journal: j, identifier: identifier, level: level}
}

// NewLogHandler returns a handler that logs as identifier at level to the
// journal whose socket is at path, with every record the journal does not
// take written to stderr as text instead; with no journal at path, it
// logs to stderr alone. It reports whether it found the journal.
func NewLogHandler(path, identifier string, level slog.Leveler, stderr io.Writer) (slog.Handler, bool) {
	text := slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})
	j, err := OpenJournal(path)
	if err != nil {
		return text, false
	}
	return &JournalHandler{journal: j, fallback: text, identifier: identifier, level: level}, true
}

// Enabled implements slog.Handler.
func (h *JournalHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level.Level() }

// Handle implements slog.Handler.
func (h *JournalHandler) Handle(ctx context.Context, r slog.Record) error {
	fields := map[string]string{"SYSLOG_IDENTIFIER": h.identifier}
	var text strings.Builder
	text.WriteString(r.Message)
	add := func(a slog.Attr, group string) {
		a.Value = a.Value.Resolve()
		if a.Equal(slog.Attr{}) {
			return
		}
		key := a.Key
		if group != "" {
			key = group + "_" + key
		}
		v := a.Value.String()
		fields[FieldName(key)] = v
		fmt.Fprintf(&text, " %s=%s", key, v)
	}
	for _, a := range h.attrs {
		add(a, "") // named in their group by WithAttrs
	}
	r.Attrs(func(a slog.Attr) bool { add(a, h.group); return true })
	err := errors.New("no journal")
	if h.journal != nil {
		err = h.journal.Send(text.String(), priority(r.Level), fields)
	}
	if err != nil && h.fallback != nil {
		return h.fallback.Handle(ctx, r)
	}
	return err
}

// WithAttrs implements slog.Handler.
func (h *JournalHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.attrs = slices.Clone(h.attrs)
	for _, a := range attrs {
		if h.group != "" {
			a.Key = h.group + "_" + a.Key
		}
		c.attrs = append(c.attrs, a)
	}
	if h.fallback != nil {
		c.fallback = h.fallback.WithAttrs(attrs)
	}
	return &c
}

// WithGroup implements slog.Handler.
func (h *JournalHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.group = strings.TrimPrefix(h.group+"_"+name, "_")
	if h.fallback != nil {
		c.fallback = h.fallback.WithGroup(name)
	}
	return &c
}

// FieldName turns an attribute key into a journal field name: uppercase
// letters, digits and underscores, not starting with an underscore or digit.
func FieldName(key string) string {
	var b strings.Builder
	for _, r := range strings.ToUpper(key) {
		if (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	s := strings.TrimLeft(b.String(), "_0123456789")
	if s == "" {
		return "FIELD"
	}
	return s
}

func priority(l slog.Level) journal.Priority {
	switch {
	case l >= slog.LevelError:
		return journal.PriErr
	case l >= slog.LevelWarn:
		return journal.PriWarning
	case l >= slog.LevelInfo:
		return journal.PriInfo
	default:
		return journal.PriDebug
	}
}
