package benefits_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// BenchmarkQuote measures the server side of a Quote (no gRPC) for a
// member with 40 purchases behind it: one PostgreSQL round trip, the
// programme and the response. Profile with -cpuprofile.
func BenchmarkQuote(b *testing.B) {
	f := newFixture(b)
	ctx := context.Background()
	m := f.member(b)
	start := *f.clock
	for i := range 40 {
		*f.clock = start.Add(time.Duration(i-40) * 24 * time.Hour)
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
}
