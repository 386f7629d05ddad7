package caches

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// server is an API server's readiness that the test sets.
type server struct {
	mu     sync.Mutex
	ready  bool
	back   chan struct{}
	checks int
}

func newServer() *server {
	s := &server{ready: true, back: make(chan struct{})}
	close(s.back)
	return s
}

func (s *server) set(ready bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case ready && !s.ready:
		close(s.back)
	case !ready && s.ready:
		s.back = make(chan struct{})
	}
	s.ready = ready
}

func (s *server) Wait(ctx context.Context) error {
	s.mu.Lock()
	back := s.back
	s.mu.Unlock()
	select {
	case <-back:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *server) Check(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks++
	if !s.ready {
		return io.ErrUnexpectedEOF
	}
	return nil
}

// apiserver serves lists and watches of Nodes from a list the test sets;
// each watch it opens is a FakeWatcher the test drives.
type apiserver struct {
	mu      sync.Mutex
	nodes   []corev1.Node
	rv      string
	lists   int
	watches []string // the resource version of each watch
	opened  chan *watch.FakeWatcher
	refuse  error   // the next watch's error
	refuses int     // how many watches refuse is returned to
	closing bool    // every watch ends at once
	goesOff *server // set: the next watch finds the server gone
}

func (a *apiserver) list(_ context.Context, _ metav1.ListOptions) (*corev1.NodeList, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lists++
	return &corev1.NodeList{ListMeta: metav1.ListMeta{ResourceVersion: a.rv}, Items: slices.Clone(a.nodes)}, nil
}

func (a *apiserver) watch(_ context.Context, o metav1.ListOptions) (watch.Interface, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.refuse; err != nil {
		if a.refuses--; a.refuses <= 0 {
			a.refuse = nil
		}
		return nil, err
	}
	if a.goesOff != nil {
		a.goesOff.set(false)
		a.goesOff = nil
		return nil, io.ErrUnexpectedEOF
	}
	a.watches = append(a.watches, o.ResourceVersion)
	w := watch.NewFakeWithChanSize(10, false)
	if a.closing {
		w.Stop()
		return w, nil
	}
	a.opened <- w
	return w, nil
}

// listWatch is the ListerWatcher of a's Nodes.
func (a *apiserver) listWatch() *cache.ListWatch {
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return a.list(ctx, o)
		},
		WatchFuncWithContext: a.watch,
	}
}

func node(name, rv string) corev1.Node {
	return corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, ResourceVersion: rv}}
}

// started runs an informer over a's Nodes through New, and returns it
// synced, with the watch it holds.
func started(t *testing.T, a *apiserver, s *server) (cache.SharedIndexInformer, *ListWatch, *watch.FakeWatcher) {
	t.Helper()
	inf, lw := New("nodes", a.listWatch(), &corev1.Node{}, s, nil, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go inf.RunWithContext(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		t.Fatal("no sync")
	}
	return inf, lw, <-a.opened
}

// eventually polls cond for up to 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("never: %s", what)
}

func keys(inf cache.SharedIndexInformer) []string {
	k := inf.GetStore().ListKeys()
	slices.Sort(k)
	return k
}

func rvOf(inf cache.SharedIndexInformer, key string) string {
	obj, ok, _ := inf.GetStore().GetByKey(key)
	if !ok {
		return ""
	}
	return obj.(*corev1.Node).ResourceVersion
}

// TestOutageRelists: a stream that ends while the API server is away is
// resumed only once it is back, from a LIST whose difference reaches the
// store as events (a Node added, one changed, one deleted meanwhile); the
// cache says it is behind until then, and the reflector never lists again.
func TestOutageRelists(t *testing.T) {
	a := &apiserver{nodes: []corev1.Node{node("a", "1"), node("b", "2")}, rv: "2", opened: make(chan *watch.FakeWatcher, 4)}
	s := newServer()
	inf, lw, w := started(t, a, s)
	var deleted []string
	var mu sync.Mutex
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{DeleteFunc: func(obj any) {
		mu.Lock()
		defer mu.Unlock()
		deleted = append(deleted, obj.(*corev1.Node).Name)
	}})
	n := node("c", "3")
	w.Add(&n)
	eventually(t, "c cached", func() bool { return rvOf(inf, "c") == "3" })

	s.set(false)
	a.mu.Lock()
	a.nodes, a.rv = []corev1.Node{node("b", "7"), node("c", "3"), node("d", "8")}, "9"
	a.mu.Unlock()
	w.Stop() // the stream ends with the server
	eventually(t, "behind", func() bool { return lw.Current() != nil })
	time.Sleep(50 * time.Millisecond)
	a.mu.Lock()
	lists := a.lists
	a.mu.Unlock()
	if lists != 1 {
		t.Fatalf("listed %d times while the server was away, want only the first list", lists)
	}

	s.set(true)
	w2 := <-a.opened
	eventually(t, "caught up", func() bool { return slices.Equal(keys(inf), []string{"b", "c", "d"}) && rvOf(inf, "b") == "7" })
	eventually(t, "current", func() bool { return lw.Current() == nil })
	mu.Lock()
	if !slices.Equal(deleted, []string{"a"}) {
		t.Errorf("deleted %v, want [a]", deleted)
	}
	mu.Unlock()
	a.mu.Lock()
	if !slices.Equal(a.watches, []string{"2", "9"}) {
		t.Errorf("watches from %v, want the list's and the catch-up's resource versions [2 9]", a.watches)
	}
	a.mu.Unlock()
	// The resumed stream carries on.
	e := node("e", "10")
	w2.Add(&e)
	eventually(t, "e cached", func() bool { return rvOf(inf, "e") == "10" })
}

// TestStreamEndRewatches: a stream that ends while the API server stays up
// goes on from the last resource version it delivered, with no list and
// without the cache ever behind.
func TestStreamEndRewatches(t *testing.T) {
	a := &apiserver{nodes: []corev1.Node{node("a", "1")}, rv: "1", opened: make(chan *watch.FakeWatcher, 4)}
	s := newServer()
	inf, lw, w := started(t, a, s)
	n := node("a", "5")
	w.Modify(&n)
	eventually(t, "a modified", func() bool { return rvOf(inf, "a") == "5" })
	w.Stop()
	<-a.opened
	a.mu.Lock()
	defer a.mu.Unlock()
	if !slices.Equal(a.watches, []string{"1", "5"}) || a.lists != 1 {
		t.Errorf("watches from %v after %d lists, want [1 5] after 1", a.watches, a.lists)
	}
	if err := lw.Current(); err != nil {
		t.Errorf("behind: %v", err)
	}
}

// TestExpiredRelists: a stream ended by 410 Gone, as a watch from a
// resource version the API server no longer has, goes on from a LIST.
func TestExpiredRelists(t *testing.T) {
	a := &apiserver{nodes: []corev1.Node{node("a", "1")}, rv: "1", opened: make(chan *watch.FakeWatcher, 4)}
	s := newServer()
	inf, _, w := started(t, a, s)
	a.mu.Lock()
	a.nodes, a.rv = []corev1.Node{node("a", "4")}, "4"
	a.mu.Unlock()
	gone := apierrors.NewResourceExpired("too old resource version: 1 (3)")
	w.Error(&gone.ErrStatus)
	<-a.opened
	eventually(t, "a relisted", func() bool { return rvOf(inf, "a") == "4" })
}

// TestRefusedWatchIsPaced: a resumed watch that the API server refuses
// while it reports ready is tried again, paced, until it opens.
func TestRefusedWatchIsPaced(t *testing.T) {
	a := &apiserver{nodes: []corev1.Node{node("a", "1")}, rv: "1", opened: make(chan *watch.FakeWatcher, 4)}
	s := newServer()
	_, _, w := started(t, a, s)
	a.mu.Lock()
	a.refuse = apierrors.NewTooManyRequests("slow down", 1)
	a.mu.Unlock()
	w.Stop()
	select {
	case <-a.opened:
	case <-time.After(5 * time.Second):
		t.Fatal("the refused watch was never tried again")
	}
}

// TestServerGoneBeforeFirstWatch: the API server goes away between the
// reflector's first list and its watch: the watch is not failed back to
// the reflector (whose backoff would follow) but resumed once the server
// is back.
func TestServerGoneBeforeFirstWatch(t *testing.T) {
	s := newServer()
	a := &apiserver{nodes: []corev1.Node{node("a", "1")}, rv: "1", opened: make(chan *watch.FakeWatcher, 4), goesOff: s}
	inf, lw := New("nodes", a.listWatch(), &corev1.Node{}, s, nil, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go inf.RunWithContext(ctx)
	eventually(t, "behind", func() bool { return lw.Current() != nil })
	a.mu.Lock()
	a.nodes, a.rv = []corev1.Node{node("b", "3")}, "3"
	a.mu.Unlock()
	s.set(true)
	<-a.opened
	eventually(t, "caught up", func() bool { return slices.Equal(keys(inf), []string{"b"}) && lw.Current() == nil })
}

// TestStreamsEndingAtOnceArePaced: a stream that ends as soon as it
// opens, with the API server up, is opened again paced (250 ms doubling),
// not in a tight loop.
func TestStreamsEndingAtOnceArePaced(t *testing.T) {
	a := &apiserver{nodes: []corev1.Node{node("a", "1")}, rv: "1", opened: make(chan *watch.FakeWatcher, 4)}
	s := newServer()
	_, _, w := started(t, a, s)
	a.mu.Lock()
	a.closing = true
	a.mu.Unlock()
	w.Stop()
	time.Sleep(2 * time.Second)
	a.mu.Lock()
	defer a.mu.Unlock()
	// 250 + 500 + 1000 ms: at most four more watches in 2 s.
	if n := len(a.watches); n > 5 {
		t.Errorf("%d watches in 2 s, want at most 5", n)
	}
}

// TestRefusedRewatchRelists: a stream whose rewatch the API server keeps
// refusing goes on from a LIST after rewatchAttempts, and the cache counts
// as behind meanwhile.
func TestRefusedRewatchRelists(t *testing.T) {
	a := &apiserver{nodes: []corev1.Node{node("a", "1")}, rv: "1", opened: make(chan *watch.FakeWatcher, 4)}
	s := newServer()
	inf, lw, w := started(t, a, s)
	a.mu.Lock()
	a.refuse, a.refuses = apierrors.NewInternalError(io.ErrUnexpectedEOF), rewatchAttempts
	a.nodes, a.rv = []corev1.Node{node("a", "6")}, "6"
	a.mu.Unlock()
	w.Stop()
	<-a.opened
	eventually(t, "relisted", func() bool { return rvOf(inf, "a") == "6" && lw.Current() == nil })
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.lists != 2 {
		t.Errorf("%d lists, want the first and one catch-up", a.lists)
	}
}

// TestRelistWaitsForTheStore: the catch-up is diffed only once the store
// shows the last event delivered, so an object added, not yet applied, and
// deleted during the outage is deleted, not left behind.
func TestRelistWaitsForTheStore(t *testing.T) {
	a := &apiserver{rv: "9", opened: make(chan *watch.FakeWatcher, 4)}
	store := cache.NewStore(cache.MetaNamespaceKeyFunc)
	lw := &ListWatch{name: "nodes", inner: a.listWatch(), server: newServer(), store: store, example: &corev1.Node{},
		metrics: NewMetrics(nil), log: slog.New(slog.DiscardHandler), pace: time.Millisecond}
	ghost := node("ghost", "5")
	out := make(chan watch.Event, 10)
	st := &stream{out: out, rv: "5", last: &watch.Event{Type: watch.Added, Object: &ghost}}
	done := make(chan error, 1)
	go func() {
		_, err := lw.relist(context.Background(), st)
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	a.mu.Lock()
	if a.lists != 0 {
		t.Errorf("listed before the store applied the last event")
	}
	a.mu.Unlock()
	_ = store.Add(&ghost) // the informer applies it, and then what follows
	var got []string
	for {
		select {
		case e := <-out:
			got = append(got, string(e.Type))
			if e.Type == watch.Deleted {
				_ = store.Delete(e.Object)
			}
			continue
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		}
		break
	}
	if !slices.Equal(got, []string{"DELETED", "BOOKMARK"}) {
		t.Errorf("delivered %v, want the ghost deleted and a bookmark", got)
	}
}

// TestDifference: the events that take a store to a list.
func TestDifference(t *testing.T) {
	for _, c := range []struct {
		name  string
		store []corev1.Node
		list  []corev1.Node
		want  []string
	}{
		{"same", []corev1.Node{node("a", "1")}, []corev1.Node{node("a", "1")}, nil},
		{"added", nil, []corev1.Node{node("a", "1")}, []string{"ADDED a"}},
		{"modified", []corev1.Node{node("a", "1")}, []corev1.Node{node("a", "2")}, []string{"MODIFIED a"}},
		{"deleted", []corev1.Node{node("a", "1")}, nil, []string{"DELETED a"}},
		{"all three", []corev1.Node{node("a", "1"), node("b", "1")}, []corev1.Node{node("b", "2"), node("c", "1")},
			[]string{"MODIFIED b", "ADDED c", "DELETED a"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			store := cache.NewStore(cache.MetaNamespaceKeyFunc)
			for i := range c.store {
				_ = store.Add(&c.store[i])
			}
			var items []runtime.Object
			for i := range c.list {
				items = append(items, &c.list[i])
			}
			var got []string
			for _, e := range difference(store, items) {
				got = append(got, string(e.Type)+" "+e.Object.(*corev1.Node).Name)
				if obj, ok, _ := store.Get(e.Object); ok && obj == e.Object {
					t.Errorf("%s %s carries the store's own object, not a copy", e.Type, e.Object.(*corev1.Node).Name)
				}
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("got %v, want %v", got, c.want)
			}
		})
	}
}
