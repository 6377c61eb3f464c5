package tags

import (
	"testing"

	"github.com/google/uuid"
)

// TestStateCacheCountsEachStateOnce: a member's state kept again (two
// workers met it, one through a merge) replaces the first in the count of
// bytes held, and taking it out releases it; the budget evicts the least
// recently kept.
func TestStateCacheCountsEachStateOnce(t *testing.T) {
	c := newStateCache(4 * decodedSize(1000))
	a, b := uuid.New(), uuid.New()
	keep := func(m uuid.UUID, n int) keptState {
		return keptState{member: m, cachedState: cachedState{xmin: 7, state: &State{}, size: decodedSize(n)}}
	}
	c.put([]keptState{keep(a, 1000)})
	c.put([]keptState{keep(a, 1000)})
	if c.bytes != decodedSize(1000) || c.lru.Len() != 1 {
		t.Fatalf("one member kept twice: %d bytes in %d entries, want %d in 1", c.bytes, c.lru.Len(), decodedSize(1000))
	}
	c.put([]keptState{keep(b, 1000)})
	if _, ok := c.take(a); !ok {
		t.Fatal("the member's state was not kept")
	}
	if c.bytes != decodedSize(1000) {
		t.Fatalf("after taking one of two: %d bytes, want %d", c.bytes, decodedSize(1000))
	}
	for range 5 {
		c.put([]keptState{keep(uuid.New(), 1000)})
	}
	if c.bytes > c.budget {
		t.Fatalf("%d bytes held over a budget of %d", c.bytes, c.budget)
	}
	if _, ok := c.take(b); ok {
		t.Error("the least recently kept state outlived the budget")
	}
}
