package tags

import (
	"slices"
	"sort"
	"time"
)

type matchResult int

const (
	matchNo matchResult = iota
	matchYes
	matchUnknown
)

// match evaluates filter f on the purchase, caching every filter's result
// on the purchase for catalogue version v. A filter that reads the basket
// or the store of a purchase that did not say is undecided, not false.
func (p *Purchase) match(f *Filter, all []*Filter, v string, loc *time.Location) matchResult {
	if p.FV != v {
		p.FV, p.FM, p.FU = v, nil, nil
		p.evalAll(all, loc)
	}
	switch {
	case slices.Contains(p.FM, f.ID):
		return matchYes
	case slices.Contains(p.FU, f.ID):
		return matchUnknown
	}
	return matchNo
}

func (p *Purchase) evalAll(fs []*Filter, loc *time.Location) {
	vars := p.vars(loc)
	for _, f := range fs {
		if (f.needsItems && !p.ItemsKnown) || (f.needsStore && p.Store == "") {
			p.FU = append(p.FU, f.ID)
			continue
		}
		out, _, err := f.program.Eval(map[string]any{"p": vars})
		if err != nil {
			p.FU = append(p.FU, f.ID)
			continue
		}
		if b, ok := out.Value().(bool); ok && b {
			p.FM = append(p.FM, f.ID)
		} else if !ok {
			p.FU = append(p.FU, f.ID)
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
		cats := make([]string, 0, len(p.Categories))
		for k := range p.Categories {
			cats = append(cats, k)
		}
		sort.Strings(cats)
		brands := make([]string, 0, len(p.Brands))
		for k := range p.Brands {
			brands = append(brands, k)
		}
		sort.Strings(brands)
		m["categories"], m["brands"] = cats, brands
	}
	return m
}
