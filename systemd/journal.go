package systemd

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/coreos/go-systemd/v22/journal"
)

// JournalHandler is a slog.Handler that sends each record to the host's
// journal, with SYSLOG_IDENTIFIER set and every attribute as an uppercase
// journal field (node → NODE, base_url → BASE_URL), so
// `journalctl -t IDENTIFIER` shows them and `-o verbose` shows the fields.
type JournalHandler struct {
	identifier string
	level      slog.Leveler
	attrs      []slog.Attr
	group      string
}

// JournalAvailable reports whether the journal's socket is reachable.
func JournalAvailable() bool { return journal.Enabled() }

// NewJournalHandler returns a handler that logs as identifier at level.
func NewJournalHandler(identifier string, level slog.Leveler) *JournalHandler {
	return &JournalHandler{identifier: identifier, level: level}
}

// Enabled implements slog.Handler.
func (h *JournalHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level.Level() }

// Handle implements slog.Handler.
func (h *JournalHandler) Handle(_ context.Context, r slog.Record) error {
	fields := map[string]string{"SYSLOG_IDENTIFIER": h.identifier}
	var text strings.Builder
	text.WriteString(r.Message)
	add := func(a slog.Attr) {
		a.Value = a.Value.Resolve()
		if a.Equal(slog.Attr{}) {
			return
		}
		key := a.Key
		if h.group != "" {
			key = h.group + "_" + key
		}
		v := a.Value.String()
		fields[FieldName(key)] = v
		fmt.Fprintf(&text, " %s=%s", key, v)
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(func(a slog.Attr) bool { add(a); return true })
	return journal.Send(text.String(), priority(r.Level), fields)
}

// WithAttrs implements slog.Handler.
func (h *JournalHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), attrs...)
	return &c
}

// WithGroup implements slog.Handler.
func (h *JournalHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.group = strings.TrimPrefix(h.group+"_"+name, "_")
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
