package endpointslice

import (
	"runtime"
	"sync"
	"weak"
)

// shared holds one immutable value that many cached objects point to.
type shared[T any] struct{ v T }

// internTable hands out one shared value per key, so that the thousands of
// cached pods of one Deployment, which carry the same labels and the same
// container ports, hold one copy instead of one each (at 10,000 pods that
// is about 4 MB of a 30 MB heap). Entries are weak: a value lives as long
// as some cached object points to it, and its entry goes with it.
type internTable[T any] struct {
	mu sync.Mutex
	m  map[string]weak.Pointer[shared[T]]
}

// get returns the shared value for key, building it only if no
// live one exists. Values must never be modified once shared.
func (t *internTable[T]) get(key string, build func() T) *shared[T] {
	t.mu.Lock()
	defer t.mu.Unlock()
	if w, ok := t.m[key]; ok {
		if p := w.Value(); p != nil {
			return p
		}
	}
	if t.m == nil {
		t.m = map[string]weak.Pointer[shared[T]]{}
	}
	p := &shared[T]{v: build()}
	t.m[key] = weak.Make(p)
	runtime.AddCleanup(p, t.drop, key)
	return p
}

// drop forgets key once its value is gone, unless a newer value took the
// key meanwhile.
func (t *internTable[T]) drop(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if w, ok := t.m[key]; ok && w.Value() == nil {
		delete(t.m, key)
	}
}
