package benefits_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

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
		eachAndSettled(b, fmt.Sprintf("%d purchases", h.purchases), func(b *testing.B, f *fixture) {
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

// BenchmarkHeavyMember measures Quote and Commit (server side, no gRPC) for
// a member holding 2,000 open lots, as a daily shopper of years holds:
// 1,600 available, expiring over the coming year, and 400 still pending
// over the coming week; with and without a redemption of 500 points;
// reading every open lot and reading only the ones the operation can
// change with the sums of the others. 400 other members hold 40 lots each,
// so that PostgreSQL plans the reads as it does for a real population.
func BenchmarkHeavyMember(b *testing.B) {
	const available, pending = 1600, 400
	for _, redeem := range []int64{0, 500} {
		for _, rpc := range []string{"quote", "commit"} {
			eachAndSettled(b, fmt.Sprintf("%s/redeem %d", rpc, redeem), func(b *testing.B, f *fixture) {
				ctx := context.Background()
				now := *f.clock
				var l benefits.Legacy
				for i := range available + pending {
					lot := benefits.LegacyLot{Ref: fmt.Sprintf("h%d", i), Earned: 100, Remaining: 100,
						EarnedAt: now.Add(-time.Duration(available+pending-i) * 4 * time.Hour)}
					lot.ExpiresAt = lot.EarnedAt.Add(365 * 24 * time.Hour)
					if i >= available {
						lot.AvailableAt = now.Add(time.Duration(i-available+1) * 20 * time.Minute)
					}
					l.Lots = append(l.Lots, lot)
				}
				others := make([]benefits.LegacyImport, 400)
				for i := range others {
					var o benefits.Legacy
					for k := range 40 {
						lot := benefits.LegacyLot{Ref: fmt.Sprintf("o%d", k), Earned: 300, Remaining: 300,
							EarnedAt: now.Add(-time.Duration(40-k) * 200 * time.Hour)}
						lot.ExpiresAt = lot.EarnedAt.Add(365 * 24 * time.Hour)
						o.Lots = append(o.Lots, lot)
					}
					others[i] = benefits.LegacyImport{Member: uuid.Must(uuid.NewV7()), Legacy: o, Cause: fmt.Sprintf("import:other-%d", i)}
				}
				var m string
				err := pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error {
					id := uuid.Must(uuid.NewV7())
					m = id.String()
					for _, im := range append(others, benefits.LegacyImport{Member: id}) {
						if err := postgres.InsertMember(ctx, tx, im.Member, now); err != nil {
							return err
						}
					}
					if _, err := f.svc.ImportLegacyBatch(ctx, tx, others, now); err != nil {
						return err
					}
					return f.svc.ImportLegacy(ctx, tx, id, l, "import:heavy", now)
				})
				if err == nil {
					_, err = f.pool.Exec(ctx, "ANALYZE")
				}
				if err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				i := 0
				for b.Loop() {
					i++
					bk := basket(fmt.Sprintf("o%d", i), 12345)
					bk.RedeemPoints = redeem
					if rpc == "quote" {
						_, err = f.srv.Quote(ctx, &mcv1.QuoteRequest{MemberId: m, Basket: bk})
					} else {
						_, err = f.srv.Commit(ctx, &mcv1.CommitRequest{MemberId: m, Basket: bk, IdempotencyKey: fmt.Sprintf("k%d", i)})
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// eachAndSettled runs bench as name/every lot, on a fixture that reads every
// open lot one by one, and as name/settled lots, on one that reads the
// lots an operation cannot tell apart as sums.
func eachAndSettled(b *testing.B, name string, bench func(b *testing.B, f *fixture)) {
	for _, each := range []bool{true, false} {
		sub := name + "/settled lots"
		if each {
			sub = name + "/every lot"
		}
		b.Run(sub, func(b *testing.B) {
			f := newFixture(b)
			if each {
				benefits.LoadEachLot(f.svc)
			}
			bench(b, f)
		})
	}
}
