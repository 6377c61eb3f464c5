package tags

import (
	"time"
)

type matchResult int

const (
	matchNo matchResult = iota
	matchYes
	matchUnknown
)

// match evaluates filter f on the purchase, caching every filter's result
// on the purchase for filter definitions v (a purchase with filters has a
// matched set, empty or not; none means not evaluated). A filter that reads
// the basket or the store of a purchase that did not say is undecided, not
// false.
func (p *Purchase) match(i int, all []*Filter, v string, loc *time.Location) matchResult {
	if p.FV != v || (p.FM == nil && len(all) > 0) {
		p.FV = v
		p.evalAll(all, loc)
		p.stored = stored{}
	}
	switch {
	case bit(p.FM, i):
		return matchYes
	case bit(p.FU, i):
		return matchUnknown
	}
	return matchNo
}

func bit(set []uint64, i int) bool { return i/64 < len(set) && set[i/64]&(1<<(i%64)) != 0 }

func setBit(set []uint64, i int) { set[i/64] |= 1 << (i % 64) }

func (p *Purchase) evalAll(fs []*Filter, loc *time.Location) {
	words := (len(fs) + 63) / 64
	p.FM, p.FU = make(filterBits, words), make(filterBits, words)
	pv := p.pvars(loc)
	compiled := &vecActivation{p: &pv}
	var act map[string]any
	for i, f := range fs {
		if (f.needsItems && !p.ItemsKnown) || (f.needsStore && p.Store == "") {
			setBit(p.FU, i)
			continue
		}
		if f.compiled != nil {
			switch v := f.compiled(compiled); {
			case v.k != kBool:
				setBit(p.FU, i)
			case v.i != 0:
				setBit(p.FM, i)
			}
			continue
		}
		if act == nil {
			act = map[string]any{"p": p.vars(loc)}
		}
		out, _, err := f.program.Eval(act)
		if err != nil {
			setBit(p.FU, i)
			continue
		}
		if b, ok := out.Value().(bool); ok && b {
			setBit(p.FM, i)
		} else if !ok {
			setBit(p.FU, i)
		}
	}
}

func (p *Purchase) vars(loc *time.Location) map[string]any {
	t := time.Unix(p.At, 0).In(loc)
	m := map[string]any{
		"amount":          float64(p.Amount) / 100,
		"discount":        float64(p.Discount) / 100,
		"hour":            int64(t.Hour()),
		"weekday":         int64(t.Weekday()),
		"weekend":         t.Weekday() == time.Saturday || t.Weekday() == time.Sunday,
		"month":           int64(t.Month()),
		"channel":         p.Channel,
		"coupon":          p.Coupons > 0,
		"points_redeemed": p.Points,
	}
	if p.Store != "" {
		m["store"] = p.Store
	}
	if p.ItemsKnown {
		m["items"] = p.Quantity
		m["categories"], m["brands"] = p.Categories.keys(), p.Brands.keys()
	}
	return m
}

// keys lists the keys, in order.
func (a Amounts) keys() []string {
	out := make([]string, len(a))
	for i, x := range a {
		out[i] = x.Key
	}
	return out
}
