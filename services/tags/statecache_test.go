package tags_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/services/tags"
)

// storedState is the member's stored feature state, decoded and written
// as JSON (its records and lifetimes), to compare two states by what they
// hold rather than by their bytes; the members' ids (a record's origin)
// are written as their positions in members.
func (f *fixture) storedState(t *testing.T, m uuid.UUID, members []uuid.UUID) string {
	t.Helper()
	raw := pgtest.Values[[]byte](t, context.Background(), f.pool, `SELECT CASE WHEN state_tail IS NULL THEN state ELSE '\x01'::bytea || substring(state FROM 2) || substring(state_tail FROM 2) END
		FROM member_features WHERE member_id = $1`, m)
	switch len(raw) {
	case 0:
		return "(none)"
	case 1:
	default:
		t.Fatalf("member %s: %d feature rows", m, len(raw))
	}
	st, err := tags.DecodeState(raw[0])
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	out := string(b)
	for i, id := range members {
		out = strings.ReplaceAll(out, id.String(), fmt.Sprintf("member-%d", i))
	}
	return out
}

// TestStateCacheChangesNothing: a stage that keeps the states it stored
// and one that reads every state again store the same states and labels
// and announce the same label changes, batch after batch, over the shipped
// catalogue: members met again in later batches, days and windows going
// by, a batch that carries a member's event twice, and a state rewritten
// behind the stage's back by another writer (which the cache must not
// hide).
func TestStateCacheChangesNothing(t *testing.T) {
	c := ctxT(t)
	kept, read := newFixture(t), newFixture(t)
	read.svc.SetStateCache(0)
	cat, err := tags.ParseCatalog(tags.DefaultCatalog())
	if err != nil {
		t.Fatal(err)
	}
	const n = 6
	var km, rm []uuid.UUID
	for _, f := range []*fixture{kept, read} {
		f.svc.UseCatalog(cat)
	}
	for range n {
		km, rm = append(km, kept.member(t)), append(rm, read.member(t))
	}
	rng := rand.New(rand.NewPCG(14, 6))
	cats := []string{"coffee", "bakery", "dairy", "beauty", "baby"}
	at := t0
	for batch := range 30 {
		// Each batch: a few events of a few members, at times that move
		// on by hours to days (windows open and close).
		at = at.Add(time.Duration(rng.IntN(72)+1) * time.Hour)
		type ev struct {
			member int
			id     string
			at     time.Time
			amount int64
			cats   []string
			kind   int
		}
		var evs []ev
		for i := range rng.IntN(5) + 1 {
			e := ev{member: rng.IntN(n), id: fmt.Sprintf("b%d-e%d", batch, i), at: at.Add(-time.Duration(rng.IntN(120)) * time.Minute),
				amount: int64(rng.IntN(50000) + 100), kind: rng.IntN(4)}
			for range rng.IntN(3) + 1 {
				e.cats = append(e.cats, cats[rng.IntN(len(cats))])
			}
			evs = append(evs, e)
		}
		if batch%7 == 3 {
			evs = append(evs, evs[0]) // redelivered inside the batch
		}
		for fi, f := range []*fixture{kept, read} {
			members := km
			if fi == 1 {
				members = rm
			}
			*f.clock = at
			var batchEvs []*mcv1.MemberEvent
			for _, e := range evs {
				m := members[e.member]
				switch e.kind {
				case 0, 1:
					batchEvs = append(batchEvs, purchase(e.id, m, e.at, e.amount, e.cats...))
				case 2:
					batchEvs = append(batchEvs, &mcv1.MemberEvent{EventId: e.id, MemberId: m.String(), Channel: mcv1.Channel_CHANNEL_APP,
						OccurredAt: timestamppb.New(e.at), Payload: &mcv1.MemberEvent_CheckIn{CheckIn: &mcv1.CheckIn{}}})
				case 3:
					batchEvs = append(batchEvs, &mcv1.MemberEvent{EventId: e.id, MemberId: m.String(), Channel: mcv1.Channel_CHANNEL_MINIPROGRAM,
						OccurredAt: timestamppb.New(e.at), Payload: &mcv1.MemberEvent_Share{Share: &mcv1.Share{}}})
				}
			}
			rejected, err := f.svc.ApplyBatch(c, batchEvs)
			if err != nil {
				t.Fatal(err)
			}
			if len(rejected) > 0 {
				t.Fatalf("batch %d refused %v", batch, rejected)
			}
			if batch == 12 {
				// Another writer replaces member 0's state with member 1's
				// (an import, a merge, another process): the cached state
				// of member 0 is no longer what is stored.
				if _, err := f.pool.Exec(c, `UPDATE member_features f SET state = o.state, state_tail = o.state_tail
					FROM member_features o WHERE f.member_id = $1 AND o.member_id = $2`, members[0], members[1]); err != nil {
					t.Fatal(err)
				}
			}
		}
		for i := range n {
			if got, want := kept.storedState(t, km[i], km), read.storedState(t, rm[i], rm); got != want {
				t.Fatalf("batch %d, member %d: the state stored with the cache differs from the one stored without\n with: %s\n without: %s", batch, i, got, want)
			}
			if got, want := kept.labels(t, km[i]), read.labels(t, rm[i]); !maps.EqualFunc(got, want, func(x, y any) bool { return fmt.Sprint(x) == fmt.Sprint(y) }) {
				t.Fatalf("batch %d, member %d: labels with the cache %v, without %v", batch, i, got, want)
			}
			if got, want := len(kept.labelChanges(t, km[i])), len(read.labelChanges(t, rm[i])); got != want {
				t.Fatalf("batch %d, member %d: %d label changes with the cache, %d without", batch, i, got, want)
			}
		}
	}
	hits, misses := kept.svc.StateCacheHits()
	if hits < 20 {
		t.Errorf("the cache served %d members (%d read), want most of the members met again", hits, misses)
	}
	if misses < 1 {
		t.Errorf("no member was read again: the state rewritten behind the stage's back should have been")
	}
	if h, m := read.svc.StateCacheHits(); h != 0 || m != 0 {
		t.Errorf("without a cache: %d hits, %d misses", h, m)
	}
}

// TestStateCacheMetrics: the cache's loads are exported by result, and its
// size, so that an operator can size MC_TAG_STATE_CACHE_BYTES.
func TestStateCacheMetrics(t *testing.T) {
	f, c := begin(t)
	reader := sdkmetric.NewManualReader()
	reg, err := f.svc.RegisterMetrics(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reg.Unregister() }()
	m := f.member(t)
	f.apply(t, c, purchase("p1", m, t0.Add(-2*time.Hour), 1000, "coffee")) // a new member: no stored state
	f.apply(t, c, purchase("p2", m, t0.Add(-time.Hour), 2000, "coffee"))   // the state p1 stored, kept
	f.apply(t, c, purchase("p3", m, t0, 3000, "bakery"))                   // kept again
	if _, err := f.pool.Exec(c, `UPDATE member_features SET updated_at = updated_at WHERE member_id = $1`, m); err != nil {
		t.Fatal(err) // another writer: the kept state no longer serves
	}
	f.apply(t, c, purchase("p4", m, t0, 500, "bakery"))
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(c, &rm); err != nil {
		t.Fatal(err)
	}
	loads := map[string]int64{}
	var size int64 = -1
	for _, sm := range rm.ScopeMetrics {
		for _, x := range sm.Metrics {
			switch d := x.Data.(type) {
			case metricdata.Sum[int64]:
				if x.Name == "mc.tags.state_cache.loads" {
					for _, p := range d.DataPoints {
						r, _ := p.Attributes.Value("result")
						loads[r.AsString()] = p.Value
					}
				}
			case metricdata.Gauge[int64]:
				if x.Name == "mc.tags.state_cache.size" && len(d.DataPoints) == 1 {
					size = d.DataPoints[0].Value
				}
			}
		}
	}
	if loads["hit"] != 2 || loads["miss"] != 1 {
		t.Errorf("state cache loads %v; want 2 hits (p2, p3) and 1 miss (p4, after another write)", loads)
	}
	if size <= 0 {
		t.Errorf("state cache size %d; want the kept state's estimate", size)
	}
}
