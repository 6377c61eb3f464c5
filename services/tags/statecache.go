package tags

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/google/uuid"
	"github.com/hashicorp/golang-lru/v2/simplelru"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// DefaultStateCacheBytes bounds the decoded feature states a Service keeps
// between batches (SetStateCache).
const DefaultStateCacheBytes = 64 << 20

// Config is the tag stage's part of the environment.
type Config struct {
	// StateCacheBytes bounds the decoded feature states the stage keeps
	// between batches (estimated at three times their stored size); 0
	// keeps none.
	StateCacheBytes int64 `env:"MC_TAG_STATE_CACHE_BYTES, default=67108864"`
}

// maxStateCacheBytes is the most the cache may be given: 64 GiB.
const maxStateCacheBytes = 64 << 30

// Validate reports what is wrong with the config.
func (c Config) Validate() error {
	if c.StateCacheBytes < 0 || c.StateCacheBytes > maxStateCacheBytes {
		return fmt.Errorf("MC_TAG_STATE_CACHE_BYTES %d: want 0 (no cache) to %d", c.StateCacheBytes, int64(maxStateCacheBytes))
	}
	return nil
}

// stateCache keeps the decoded feature states of the members the stage
// wrote last, so that a member met again is not read and decoded again.
//
// Decoding a state is the dearest step of the tag stage (a heavy shopper's
// state holds every purchase of the last 400 days: in the pipeline bench's
// reused database the 99th percentile is 50 KB and the largest 300 KB), and
// the members a stream meets often are the ones with the largest states.
//
// An entry is a state as the stage stored it, with the transaction that
// stored it (the row's xmin). It is used only when the row, locked, still
// carries that xmin: a write by any other path (a merge, the sweep, an
// erasure, an import, another process) gives the row a new xmin, and the
// state is then read and decoded as without the cache. An entry is taken
// out while a batch uses it and put back only once the batch's
// transaction committed, so a failed attempt, or a second worker that meets
// the member (through a merge), reads the stored state instead.
type stateCache struct {
	mu     sync.Mutex
	lru    *simplelru.LRU[uuid.UUID, cachedState]
	bytes  int64 // held, by the entries' estimate
	budget int64

	hits, misses atomic.Int64
}

// cachedState is a member's decoded state and the transaction that stored
// it.
type cachedState struct {
	xmin  uint32
	state *State
	size  int64 // estimate of the decoded state's memory
}

// keptState is a state a batch stored, to cache once the batch commits.
type keptState struct {
	member uuid.UUID
	cachedState
}

// decodedSize estimates the memory of a state decoded from n bytes: the
// records, their slices and the string copy of the encoding.
func decodedSize(n int) int64 { return 3*int64(n) + 1024 }

func newStateCache(budget int64) *stateCache {
	c := &stateCache{budget: budget}
	c.lru, _ = simplelru.NewLRU(1<<30, func(_ uuid.UUID, e cachedState) { c.bytes -= e.size })
	return c
}

// take removes and returns the member's entry.
func (c *stateCache) take(member uuid.UUID) (cachedState, bool) {
	if c == nil {
		return cachedState{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.lru.Peek(member)
	if ok {
		c.lru.Remove(member)
	}
	return e, ok
}

// put adds the states a committed batch stored, evicting the least
// recently stored beyond the budget.
func (c *stateCache) put(kept []keptState) {
	if c == nil || len(kept) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range kept {
		if k.size > c.budget/4 {
			continue // a state that large would evict most others
		}
		// A state kept already (another worker's, met through a merge)
		// leaves through the eviction callback, which keeps bytes right.
		c.lru.Remove(k.member)
		c.lru.Add(k.member, k.cachedState)
		c.bytes += k.size
		for c.bytes > c.budget {
			c.lru.RemoveOldest()
		}
	}
}

// SetStateCache bounds the decoded feature states the service keeps between
// batches to about bytes (DefaultStateCacheBytes by default); 0 keeps none.
// Call it before the service applies events.
func (s *Service) SetStateCache(bytes int64) {
	if bytes <= 0 {
		s.states = nil
		return
	}
	s.states = newStateCache(bytes)
}

// StateCacheHits says how many members a batch found decoded in the cache
// and how many it had to read and decode (members without a stored state
// not counted).
func (s *Service) StateCacheHits() (hits, misses int64) {
	if s.states == nil {
		return 0, 0
	}
	return s.states.hits.Load(), s.states.misses.Load()
}

// RegisterMetrics exports the state cache's counts: mc.tags.state_cache.loads
// (stored states a batch loaded, by result: hit, the cached state served;
// miss, read and decoded) and mc.tags.state_cache.size (the estimated bytes
// held), to size MC_TAG_STATE_CACHE_BYTES by. Unregister stops them.
func (s *Service) RegisterMetrics(mp metric.MeterProvider) (metric.Registration, error) {
	m := mp.Meter("github.com/membercenter/membercenter/services/tags")
	loads, err := m.Int64ObservableCounter("mc.tags.state_cache.loads",
		metric.WithDescription("Stored feature states the tag stage loaded, by whether its cache served them"), metric.WithUnit("{state}"))
	if err != nil {
		return nil, fmt.Errorf("state cache loads: %w", err)
	}
	size, err := m.Int64ObservableGauge("mc.tags.state_cache.size",
		metric.WithDescription("Estimated memory of the decoded feature states the tag stage keeps"), metric.WithUnit("By"))
	if err != nil {
		return nil, fmt.Errorf("state cache size: %w", err)
	}
	hit, miss := metric.WithAttributes(attribute.String("result", "hit")), metric.WithAttributes(attribute.String("result", "miss"))
	return m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		c := s.states
		if c == nil {
			return nil
		}
		hits, misses := s.StateCacheHits()
		o.ObserveInt64(loads, hits, hit)
		o.ObserveInt64(loads, misses, miss)
		c.mu.Lock()
		held := c.bytes
		c.mu.Unlock()
		o.ObserveInt64(size, held)
		return nil
	}, loads, size)
}
