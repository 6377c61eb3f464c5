package tags_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/membercenter/membercenter/services/tags"
)

// BenchmarkApply folds purchases into members that already have 30
// purchases behind them, with the shipped catalogue. Profile with
// -cpuprofile.
func BenchmarkApply(b *testing.B) {
	f := newFixture(b)
	c, err := tags.ParseCatalog(tags.DefaultCatalog())
	if err != nil {
		b.Fatal(err)
	}
	f.svc.UseCatalog(c)
	ctx := context.Background()
	members := make([]uuid.UUID, 20)
	for i := range members {
		members[i] = f.member(b)
		for j := range 30 {
			ev := purchase(fmt.Sprintf("h%d-%d", i, j), members[i], t0.Add(-time.Duration(j*11+1)*time.Hour), 3000+int64(j)*100, "coffee", "bakery")
			if err := f.svc.Apply(ctx, ev); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ResetTimer()
	i := 0
	for b.Loop() {
		m := members[i%len(members)]
		ev := purchase(fmt.Sprintf("b%d", i), m, t0.Add(-time.Duration(i%50)*time.Minute), 4200, "coffee", "dairy")
		if err := f.svc.Apply(ctx, ev); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
