package identity_test

import (
	"context"
	"fmt"
	"testing"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/services/identity/identitytest"
)

// BenchmarkResolveEventsNewShoppers measures ingest's transactional path:
// a partition's batch of 100 events whose shoppers are all new (a phone and
// a member card each, nobody holds either), every one creating a member
// (ns/event). A promotion that brings many first-time shoppers is such a
// stream.
func BenchmarkResolveEventsNewShoppers(b *testing.B) {
	const batch = 100
	pool := pgtest.NewPool(b, nil)
	f := withMemberData(identitytest.New(b, pool), pool)
	ctx := context.Background()
	n := 0
	for b.Loop() {
		evs := make([]*mcv1.ChannelEvent, batch)
		for i := range evs {
			n++
			evs[i] = channelEvent(fmt.Sprintf("ev-%d", n), phone(fmt.Sprintf("139%08d", n)), card(fmt.Sprintf("CARD-%d", n)))
		}
		out, errs := f.svc.ResolveEvents(ctx, evs)
		for i := range evs {
			if errs[i] != nil || !out[i].Detail.GetCreated() {
				b.Fatalf("event %d: %+v, %v; want a member created", i, out[i], errs[i])
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/event")
}
