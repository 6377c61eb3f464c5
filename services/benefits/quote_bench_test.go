package benefits_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/benefits"
)

// BenchmarkQuote measures the server side of a Quote (no gRPC) for a
// member with 40 purchases behind it, one a day, and with 300 over a year
// (a heavy shopper: a lot a purchase, open for a year): one PostgreSQL
// round trip, the programme and the response; reading every open lot and
// reading the ones pending or expiring with the sum of the others.
// Profile with -cpuprofile.
func BenchmarkQuote(b *testing.B) {
	for _, h := range []struct {
		purchases int
		every     time.Duration
	}{{40, 24 * time.Hour}, {300, 29 * time.Hour}} {
		for _, each := range []bool{true, false} {
			name := fmt.Sprintf("%d purchases/settled lots", h.purchases)
			if each {
				name = fmt.Sprintf("%d purchases/every lot", h.purchases)
			}
			b.Run(name, func(b *testing.B) {
				f := newFixture(b)
				if each {
					benefits.LoadEachLot(f.svc)
				}
				ctx := context.Background()
				start := *f.clock
				*f.clock = start.Add(-time.Duration(h.purchases+1) * h.every)
				m := f.member(b)
				for i := range h.purchases {
					*f.clock = start.Add(time.Duration(i-h.purchases) * h.every)
					f.commit(b, ctx, &mcv1.CommitRequest{MemberId: m, Basket: basket(fmt.Sprintf("o%d", i), 5000), IdempotencyKey: fmt.Sprintf("k%d", i)})
				}
				*f.clock = start
				req := &mcv1.QuoteRequest{MemberId: m, Basket: basket("q", 12345)}
				b.ResetTimer()
				for b.Loop() {
					if _, err := f.srv.Quote(ctx, req); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
