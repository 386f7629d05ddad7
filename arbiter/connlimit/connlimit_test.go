package connlimit

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

func TestSource(t *testing.T) {
	for _, tc := range []struct {
		addr net.Addr
		want string // "" for no source
	}{
		{&net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 5}, "10.1.2.3/32"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:10.1.2.3"), Port: 5}, "10.1.2.3/32"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:3:4:5:6"), Port: 5}, "2001:db8:1:2::/64"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:ffff::1"), Port: 9}, "2001:db8:1:2::/64"},
		{&net.TCPAddr{IP: net.ParseIP("fe80::1"), Port: 5, Zone: "eth0"}, "fe80::/64"},
		{&net.UnixAddr{Name: "/run/x.sock", Net: "unix"}, ""},
	} {
		got, ok := Source(tc.addr)
		if tc.want == "" {
			if ok {
				t.Errorf("Source(%v) = %v, want none", tc.addr, got)
			}
			continue
		}
		if !ok || got != netip.MustParsePrefix(tc.want) {
			t.Errorf("Source(%v) = %v, %v; want %s", tc.addr, got, ok, tc.want)
		}
	}
}

// server accepts on a limited loopback listener and keeps what it accepts.
type server struct {
	l        *Listener
	accepted chan net.Conn
	mu       sync.Mutex
	refused  []netip.Prefix
}

func serve(t *testing.T, max, perSource int) *server {
	t.Helper()
	return serveConfig(t, Config{Max: max, PerSource: perSource})
}

func serveConfig(t *testing.T, cfg Config) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{accepted: make(chan net.Conn, 100)}
	cfg.Refused = func(p netip.Prefix) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.refused = append(s.refused, p)
	}
	s.l = New(ln, cfg)
	go func() {
		for {
			c, err := s.l.Accept()
			if err != nil {
				close(s.accepted)
				return
			}
			s.accepted <- c
		}
	}()
	t.Cleanup(func() { s.l.Close() })
	return s
}

// dial connects to s from the loopback address from.
func (s *server) dial(t *testing.T, from string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", s.l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// next is the next accepted connection, or nil if none comes within wait.
func (s *server) next(wait time.Duration) net.Conn {
	select {
	case c := <-s.accepted:
		return c
	case <-time.After(wait):
		return nil
	}
}

// TestPerSource: a source at its limit has its next connection closed at
// once, without taking a place in all; other sources are served; a place
// given back is taken again.
func TestPerSource(t *testing.T) {
	s := serve(t, 10, 2)
	s.dial(t, "127.0.0.2")
	s.dial(t, "127.0.0.2")
	first, second := s.next(2*time.Second), s.next(2*time.Second)
	if first == nil || second == nil {
		t.Fatal("the first two connections of a source were not accepted")
	}
	over := s.dial(t, "127.0.0.2")
	if !closedByPeerWithin(over, 2*time.Second) {
		t.Fatal("a third connection from 127.0.0.2 was kept open")
	}
	s.dial(t, "127.0.0.3")
	if s.next(2*time.Second) == nil {
		t.Fatal("a connection from 127.0.0.3 was not accepted while 127.0.0.2 was at its limit")
	}
	s.mu.Lock()
	refused := append([]netip.Prefix(nil), s.refused...)
	s.mu.Unlock()
	if len(refused) != 1 || refused[0] != netip.MustParsePrefix("127.0.0.2/32") {
		t.Errorf("refused %v, want [127.0.0.2/32]", refused)
	}
	if n := s.l.Open(netip.MustParsePrefix("127.0.0.2/32")); n != 2 {
		t.Errorf("open from 127.0.0.2: %d, want 2", n)
	}

	first.Close()
	first.Close() // a second Close gives nothing back twice
	s.dial(t, "127.0.0.2")
	if s.next(2*time.Second) == nil {
		t.Fatal("a place given back by 127.0.0.2 was not taken again")
	}
	if n := s.l.Open(netip.MustParsePrefix("127.0.0.2/32")); n != 2 {
		t.Errorf("open from 127.0.0.2 after a close and a new connection: %d, want 2", n)
	}
}

// TestMax: beyond Max in all, a connection waits (it is neither accepted
// nor closed) until a place frees.
func TestMax(t *testing.T) {
	s := serve(t, 2, 10)
	s.dial(t, "127.0.0.2")
	s.dial(t, "127.0.0.3")
	first := s.next(2 * time.Second)
	if first == nil || s.next(2*time.Second) == nil {
		t.Fatal("the first two connections were not accepted")
	}
	waiting := s.dial(t, "127.0.0.4")
	if c := s.next(300 * time.Millisecond); c != nil {
		t.Fatal("a third connection was accepted beyond Max 2")
	}
	if closedByPeerWithin(waiting, 100*time.Millisecond) {
		t.Fatal("a connection beyond Max was closed; it should wait")
	}
	first.Close()
	if s.next(2*time.Second) == nil {
		t.Fatal("the waiting connection was not accepted once a place freed")
	}
}

// closedByPeerWithin reports whether the server closed c within d.
func closedByPeerWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// TestClose: Close ends a waiting Accept.
func TestClose(t *testing.T) {
	s := serve(t, 1, 1)
	s.dial(t, "127.0.0.2")
	if s.next(2*time.Second) == nil {
		t.Fatal("not accepted")
	}
	s.l.Close() // Accept waits for a place; Close must end it
	select {
	case _, open := <-s.accepted:
		if open {
			t.Fatal("accepted after Close")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
}

// TestLinger: a refused connection is held, unread, for Linger before it
// is closed, but no more than MaxLingering at a time; it never takes a
// place.
func TestLinger(t *testing.T) {
	s := serveConfig(t, Config{Max: 10, PerSource: 1, Linger: 500 * time.Millisecond, MaxLingering: 1})
	s.dial(t, "127.0.0.2")
	if s.next(2*time.Second) == nil {
		t.Fatal("the first connection was not accepted")
	}
	held := s.dial(t, "127.0.0.2")
	start := time.Now()
	over := s.dial(t, "127.0.0.2") // beyond MaxLingering: closed at once
	if !closedByPeerWithin(over, 2*time.Second) || time.Since(start) > 400*time.Millisecond {
		t.Errorf("a refused connection beyond MaxLingering was not closed at once (%s)", time.Since(start))
	}
	if closedByPeerWithin(held, 100*time.Millisecond) {
		t.Fatal("a refused connection within MaxLingering was closed before Linger")
	}
	if !closedByPeerWithin(held, 2*time.Second) {
		t.Fatal("a lingering connection was not closed after Linger")
	}
	if n := s.l.Len(); n != 1 {
		t.Errorf("%d connections open, want 1: refused ones take no place", n)
	}
}
