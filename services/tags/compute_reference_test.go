package tags

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"
)

// referenceCompute is Compute as it was before the window aggregates
// (every feature summed from every record, into a map), kept as the
// oracle the aggregates are held to. Two changes: basket amounts are
// Amounts, and a future-dated record makes the features due when it
// enters the windows (nextEntry), which the old Compute missed.
func referenceCompute(in Inputs, now time.Time, loc *time.Location, filters []*Filter, filterVersion string) Computed {
	v := map[string]any{}
	st := in.State
	if st == nil {
		st = &State{}
	}
	nowU := now.Unix()
	next := int64(math.MaxInt64)
	// A rolling window of w days holds a record while now - t < w days; it
	// leaves at t + w days.
	within := func(t int64, w int) bool {
		end := t + int64(w)*86400
		if t > nowU {
			next = min(next, t) // nextEntry
			return false
		}
		if end > nowU {
			next = min(next, end)
			return true
		}
		return false
	}
	// Days since an instant change every 24h after it.
	daysSince := func(t int64) int64 {
		d := (nowU - t) / 86400
		if nowU >= t {
			next = min(next, t+(d+1)*86400)
		} else {
			next = min(next, t)
		}
		return max(d, 0)
	}
	refunded := map[string]int64{}
	for _, a := range st.Acts {
		if a.Kind == KindRefund && a.Order != "" {
			refunded[a.Order] += a.Amount
		}
	}
	net := func(p *Purchase) int64 { return max(p.Amount-refunded[p.Order], 0) }
	units := func(minor int64) float64 { return float64(minor) / 100 }

	for _, w := range Windows {
		sfx := fmt.Sprintf("_%dd", w)
		var spend, gross, disc, items, orders, couponOrders, pts, redeemOrders int64
		for _, p := range st.Purchases {
			if !within(p.At, w) {
				continue
			}
			orders++
			spend += net(p)
			gross += p.Amount
			disc += p.Discount
			items += p.Quantity
			pts += p.Points
			if p.Coupons > 0 {
				couponOrders++
			}
			if p.Points > 0 {
				redeemOrders++
			}
		}
		var refunds, refundAmt int64
		counts := map[string]int64{}
		days := map[int64]bool{}
		for _, p := range st.Purchases {
			if within(p.At, w) {
				days[localDay(p.At, loc)] = true
			}
		}
		for _, a := range st.Acts {
			if !within(a.At, w) {
				continue
			}
			days[localDay(a.At, loc)] = true
			if a.Kind == KindRefund {
				refunds++
				refundAmt += a.Amount
			}
			counts[a.Kind]++
		}
		v["spend"+sfx] = units(spend)
		v["orders"+sfx] = orders
		if orders > 0 {
			v["aov"+sfx] = units(gross) / float64(orders)
		}
		v["discount"+sfx] = units(disc)
		v["items"+sfx] = items
		v["refunds"+sfx] = refunds
		v["refund_amount"+sfx] = units(refundAmt)
		v["coupon_orders"+sfx] = couponOrders
		v["points_redeemed"+sfx] = pts
		v["redeem_orders"+sfx] = redeemOrders
		v["active_days"+sfx] = int64(len(days))
		for _, c := range actCounters {
			v[c.id+sfx] = counts[c.kind]
		}
	}
	// 91..180 days ago.
	{
		var spend, orders int64
		for _, p := range st.Purchases {
			if within(p.At, 180) && !within(p.At, 90) {
				spend += net(p)
				orders++
			}
		}
		v["spend_prev_90d"], v["orders_prev_90d"] = units(spend), orders
	}
	// Channel, category, brand and store preference over 365 days.
	byChannel := map[string]int64{}
	cat, brand, store := map[string]int64{}, map[string]int64{}, map[string]int64{}
	var catKnown, brandKnown, storeKnown int64
	var year []*Purchase
	for _, p := range st.Purchases {
		if !within(p.At, 365) {
			continue
		}
		year = append(year, p)
		byChannel[p.Channel]++
		for _, x := range p.Categories {
			cat[x.Key] += x.Minor
			catKnown += x.Minor
		}
		for _, x := range p.Brands {
			brand[x.Key] += x.Minor
			brandKnown += x.Minor
		}
		if p.Store != "" {
			store[p.Store] += p.Amount
			storeKnown += p.Amount
		}
	}
	for _, c := range orderChannels {
		v["orders_"+c+"_365d"] = byChannel[c]
	}
	v["channels_365d"] = int64(len(byChannel))
	if k, _ := referenceTop(byChannel); k != "" {
		v["top_channel_365d"] = k
	}
	for _, d := range []struct {
		id, plural string
		m          map[string]int64
		known      int64
		any        bool
	}{{"category", "categories", cat, catKnown, len(cat) > 0}, {"brand", "brands", brand, brandKnown, len(brand) > 0}, {"store", "stores", store, storeKnown, len(store) > 0}} {
		if !d.any {
			continue
		}
		v[d.plural+"_365d"] = int64(len(d.m))
		k, a := referenceTop(d.m)
		v["top_"+d.id+"_365d"] = k
		if d.known > 0 {
			v["top_"+d.id+"_share_365d"] = float64(a) / float64(d.known)
		} else {
			v["top_"+d.id+"_share_365d"] = 0.0
		}
	}
	// Lifetime.
	var life Lifetime
	first := true
	for _, l := range st.Life {
		life.Spend += l.Spend
		life.Orders += l.Orders
		life.Refunded += l.Refunded
		life.SignedUp = life.SignedUp || l.SignedUp
		if l.FirstPurchase != 0 && (life.FirstPurchase == 0 || l.FirstPurchase < life.FirstPurchase) {
			life.FirstPurchase = l.FirstPurchase
		}
		life.LastPurchase = max(life.LastPurchase, l.LastPurchase)
		if first || l.FirstSeen < life.FirstSeen {
			life.FirstSeen = l.FirstSeen
		}
		life.LastSeen = max(life.LastSeen, l.LastSeen)
		first = false
	}
	v["spend_total"] = units(max(life.Spend-life.Refunded, 0))
	v["orders_total"] = life.Orders
	v["signed_up"] = life.SignedUp
	if life.FirstPurchase != 0 {
		v["first_purchase_days"] = daysSince(life.FirstPurchase)
		v["last_purchase_days"] = daysSince(life.LastPurchase)
	}
	if !first {
		v["last_event_days"] = daysSince(life.LastSeen)
		v["member_days"] = daysSince(life.FirstSeen)
	}
	// Reviews.
	{
		var n, sum int64
		for _, a := range st.Acts {
			if a.Kind == KindReview && a.Rating > 0 && within(a.At, 365) {
				n++
				sum += int64(a.Rating)
			}
		}
		if n > 0 {
			v["avg_rating_365d"] = float64(sum) / float64(n)
		}
	}
	// Purchase days over 365 days: gaps and the BG/NBD inputs.
	if len(year) > 0 {
		var dayList []int64
		byDay := map[int64]int64{}
		for _, p := range year {
			d := localDay(p.At, loc)
			if _, ok := byDay[d]; !ok {
				dayList = append(dayList, d)
			}
			byDay[d] += p.Amount
		}
		slices.Sort(dayList)
		x := int64(len(dayList) - 1)
		v["repeat_purchases_365d"] = x
		firstDay, lastDay := dayList[0], dayList[len(dayList)-1]
		v["recency_span_days_365d"] = float64(lastDay - firstDay)
		v["customer_age_days_365d"] = float64(localDay(nowU, loc) - firstDay)
		next = min(next, nextLocalMidnight(now, loc))
		if x > 0 {
			v["avg_gap_days_365d"] = float64(lastDay-firstDay) / float64(x)
			var sum int64
			for _, d := range dayList[1:] {
				sum += byDay[d]
			}
			v["avg_repeat_value_365d"] = units(sum) / float64(x)
		}
	}
	// Demographics and the calendar.
	local := now.In(loc)
	v["current_month"] = int64(local.Month())
	v["current_weekday"] = int64(local.Weekday())
	next = min(next, nextLocalMidnight(now, loc))
	if bd, err := time.ParseInLocation("2006-01-02", in.Demo.BirthDate, loc); err == nil && !bd.After(local) {
		age := local.Year() - bd.Year()
		if local.Month() < bd.Month() || (local.Month() == bd.Month() && local.Day() < bd.Day()) {
			age--
		}
		v["age"] = int64(age)
		v["birth_month"] = int64(bd.Month())
		v["days_to_birthday"] = daysToBirthday(local, bd)
	}
	if g := strings.ToLower(strings.TrimSpace(in.Demo.Gender)); g != "" {
		v["gender"] = g
	}
	if c := normCity(in.Demo.City); c != "" {
		v["city"] = c
	}
	if in.Device > 0 {
		v["device_members"] = int64(in.Device)
	}
	// Purchase filters.
	for fi, f := range filters {
		var o30, o90, o365, known90, known365, m90, m365 int64
		var spend365 int64
		for _, p := range year {
			res := p.match(fi, filters, filterVersion, loc)
			if res == matchUnknown {
				continue
			}
			in90, in30 := within(p.At, 90), within(p.At, 30)
			known365++
			if in90 {
				known90++
			}
			if res != matchYes {
				continue
			}
			o365++
			m365++
			spend365 += net(p)
			if in90 {
				o90++
				m90++
			}
			if in30 {
				o30++
			}
		}
		v[f.ID+"_orders_30d"], v[f.ID+"_orders_90d"], v[f.ID+"_orders_365d"] = o30, o90, o365
		v[f.ID+"_spend_365d"] = units(spend365)
		if known90 > 0 {
			v[f.ID+"_share_90d"] = float64(m90) / float64(known90)
		}
		if known365 > 0 {
			v[f.ID+"_share_365d"] = float64(m365) / float64(known365)
		}
	}
	c := Computed{Values: v}
	if next != math.MaxInt64 {
		c.Next = time.Unix(next, 0).UTC()
	}
	return c
}

func referenceTop(m map[string]int64) (string, int64) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	best, bv := "", int64(-1)
	for _, k := range keys {
		if m[k] > bv {
			best, bv = k, m[k]
		}
	}
	return best, bv
}
