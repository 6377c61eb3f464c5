package benefits_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// BenchmarkMonthStartSweep measures the sweep a month start sets off:
// 1,000 members with points and history, every one due once the month
// begins; an iteration is one month start and the sweep that advances
// them all (ns/member).
func BenchmarkMonthStartSweep(b *testing.B) {
	const members = 1000
	f := newFixture(b)
	ctx := context.Background()
	for i := range members {
		m := f.member(b)
		f.commit(b, ctx, &mcv1.CommitRequest{MemberId: m, Basket: basket(fmt.Sprintf("o%d", i), int64(5_000+i*300)), IdempotencyKey: fmt.Sprintf("k%d", i)})
	}
	start := *f.clock
	month := 0
	for b.Loop() {
		month++
		*f.clock = time.Date(start.Year(), start.Month()+time.Month(month), 1, 0, 30, 0, 0, sh)
		n, err := f.svc.Advance(ctx, members)
		if err != nil || n != members {
			b.Fatalf("advanced %d members (%v); want %d", n, err, members)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*members), "ns/member")
}
