package tags

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// factGen draws plausible member events: purchases with and without basket
// lines over the catalogue's categories, refunds of earlier orders,
// interactions of every kind, from a few origin members, so a folded state
// exercises every feature.
type factGen struct {
	r       *rand.Rand
	origins []string
	orders  []Fact // purchases drawn so far, for refunds
	n       int
}

var (
	genCategories = []string{"coffee", "tea", "bakery", "dairy", "fresh", "snacks", "beverages", "alcohol", "household",
		"personal_care", "beauty", "baby", "pet", "electronics", "apparel", "frozen", "health"}
	genBrands   = []string{"acme", "globex", "initech", "umbrella", "hooli", "stark"}
	genStores   = []string{"SH-1", "SH-2", "BJ-1", "GZ-7", "SZ-3"}
	genChannels = []string{"pos", "pos", "pos", "app", "miniprogram", "web"}
	genActs     = []string{KindVisit, KindBrowse, KindBrowse, KindCheckIn, KindCheckIn, KindShare, KindReferral, KindReview, KindSignUp}
)

func newFactGen(seed uint64, origins ...string) *factGen {
	if len(origins) == 0 {
		origins = []string{"0190f0e0-0000-7000-8000-000000000001"}
	}
	return &factGen{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), origins: origins}
}

// fact draws one event at at; purchase is the chance it is a purchase.
func (g *factGen) fact(at time.Time, purchase float64) Fact {
	g.n++
	f := Fact{EventID: fmt.Sprintf("ev-%d-%08x", g.n, g.r.Uint32()), At: at.Truncate(time.Second),
		Origin: g.origins[g.r.IntN(len(g.origins))], Channel: genChannels[g.r.IntN(len(genChannels))]}
	if g.r.IntN(4) > 0 {
		f.Store = genStores[g.r.IntN(len(genStores))]
	}
	switch x := g.r.Float64(); {
	case x < purchase:
		f.Kind, f.OrderID = KindTransaction, fmt.Sprintf("O-%d", g.n)
		f.Amount = 500 + g.r.Int64N(40000)
		if g.r.IntN(3) == 0 {
			f.Discount = g.r.Int64N(f.Amount / 5)
		}
		if g.r.IntN(5) == 0 {
			f.PointsRedeemed = 100 + g.r.Int64N(2000)
		}
		if g.r.IntN(6) == 0 {
			f.Coupons = 1 + g.r.IntN(2)
		}
		if g.r.IntN(5) > 0 {
			for range 1 + g.r.IntN(4) {
				it := Item{SKU: fmt.Sprintf("S%d", g.r.IntN(100)), Quantity: 1 + g.r.Int64N(3), Amount: 100 + g.r.Int64N(8000)}
				if g.r.IntN(8) > 0 {
					it.Category = genCategories[g.r.IntN(len(genCategories))]
				}
				if g.r.IntN(3) > 0 {
					it.Brand = genBrands[g.r.IntN(len(genBrands))]
				}
				f.Items = append(f.Items, it)
			}
		}
		g.orders = append(g.orders, f)
	case x < purchase+0.05 && len(g.orders) > 0:
		o := g.orders[g.r.IntN(len(g.orders))]
		f.Kind, f.OrderID, f.Origin = KindRefund, o.OrderID, o.Origin
		f.Amount = 1 + g.r.Int64N(o.Amount)
	default:
		f.Kind = genActs[g.r.IntN(len(genActs))]
		if f.Kind == KindReview {
			f.Rating = g.r.IntN(6) // 0: a review without a rating
		}
	}
	return f
}

// history draws n events spread over span before now, in time order.
func (g *factGen) history(now time.Time, n int, span time.Duration, purchase float64) []Fact {
	at := make([]time.Time, n)
	for i := range at {
		at[i] = now.Add(-time.Duration(g.r.Int64N(int64(span))))
	}
	sortTimes(at)
	out := make([]Fact, n)
	for i, t := range at {
		out[i] = g.fact(t, purchase)
	}
	return out
}

func sortTimes(ts []time.Time) {
	for i := 1; i < len(ts); i++ {
		for j := i; j > 0 && ts[j].Before(ts[j-1]); j-- {
			ts[j], ts[j-1] = ts[j-1], ts[j]
		}
	}
}
