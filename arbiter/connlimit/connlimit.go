// Package connlimit bounds the connections a listener serves at once: in
// all, and per source, so that one source cannot take the places that every
// other source needs.
//
// A source is an IPv4 address, or an IPv6 /64: the block one host, or one
// router's SNAT, is given, and one attacker holds at least. A connection
// over its source's limit is closed once accepted (after Config.Linger, so
// that a source dialling again at once does not spin the accept loop). It
// never takes one of the places in all, and it is never served. A connection over
// the limit in all waits in the kernel's backlog until a place frees, as
// with golang.org/x/net/netutil.LimitListener, so a flood of new
// connections cannot exhaust the process.
package connlimit

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Config sets the limits of a Listener.
type Config struct {
	// Max is the number of connections served at once, from all sources.
	Max int
	// PerSource is the number served at once from one source.
	PerSource int
	// Refused, if set, is called with the source of every connection
	// closed because its source was at its limit. It must not block.
	Refused func(source netip.Prefix)
	// Linger is how long a refused connection is held, unread, before it
	// is closed, so that a source dialling again at once does not spin
	// the accept loop; at most MaxLingering are held at a time (beyond,
	// they are closed at once). Zero closes at once.
	Linger       time.Duration
	MaxLingering int
}

// Listener is a net.Listener with the limits of its Config.
type Listener struct {
	net.Listener
	cfg    Config
	slots  chan struct{} // one token per connection open or being accepted, up to Max
	active atomic.Int64  // connections open
	done   chan struct{}
	close  sync.Once

	mu        sync.Mutex
	open      map[netip.Prefix]int
	lingering int
}

// New wraps ln with cfg's limits. Max and PerSource must be at least 1.
func New(ln net.Listener, cfg Config) *Listener {
	return &Listener{
		Listener: ln,
		cfg:      cfg,
		slots:    make(chan struct{}, cfg.Max),
		done:     make(chan struct{}),
		open:     map[netip.Prefix]int{},
	}
}

// Source is the source that addr counts against: its IPv4 address (an
// IPv4-mapped IPv6 address counts as IPv4), or its IPv6 /64. It is false
// for an address that is not an IP address and port.
func Source(addr net.Addr) (netip.Prefix, bool) {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return netip.Prefix{}, false
	}
	ip := ap.Addr().Unmap().WithZone("")
	if ip.Is4() {
		return netip.PrefixFrom(ip, 32), true
	}
	p, err := ip.Prefix(64)
	return p, err == nil
}

// Accept waits until fewer than Max connections are open, then returns the
// next connection whose source is below PerSource. It closes those whose
// source is not, and goes on waiting.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		select {
		case l.slots <- struct{}{}:
		case <-l.done:
			return nil, net.ErrClosed
		}
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.slots
			return nil, err
		}
		src, keyed := Source(c.RemoteAddr())
		if keyed && !l.take(src) {
			<-l.slots
			l.refuse(c)
			if l.cfg.Refused != nil {
				l.cfg.Refused(src)
			}
			continue
		}
		l.active.Add(1)
		return &conn{Conn: c, release: sync.OnceFunc(func() {
			if keyed {
				l.give(src)
			}
			l.active.Add(-1)
			<-l.slots
		})}, nil
	}
}

// Close closes the listener; a waiting Accept returns net.ErrClosed.
// Connections already accepted stay open.
func (l *Listener) Close() error {
	l.close.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// Len is the number of connections open, from all sources.
func (l *Listener) Len() int { return int(l.active.Load()) }

// Open is the number of connections open from src.
func (l *Listener) Open(src netip.Prefix) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open[src]
}

// refuse closes c, after Linger if fewer than MaxLingering are held.
func (l *Listener) refuse(c net.Conn) {
	l.mu.Lock()
	linger := l.cfg.Linger > 0 && l.lingering < l.cfg.MaxLingering
	if linger {
		l.lingering++
	}
	l.mu.Unlock()
	if !linger {
		c.Close()
		return
	}
	time.AfterFunc(l.cfg.Linger, func() {
		c.Close()
		l.mu.Lock()
		l.lingering--
		l.mu.Unlock()
	})
}

func (l *Listener) take(src netip.Prefix) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[src] >= l.cfg.PerSource {
		return false
	}
	l.open[src]++
	return true
}

func (l *Listener) give(src netip.Prefix) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[src]--; l.open[src] <= 0 {
		delete(l.open, src)
	}
}

// conn gives its places back once, when it is closed.
type conn struct {
	net.Conn
	release func()
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}
