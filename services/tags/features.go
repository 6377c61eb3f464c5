package tags

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"
)

// Feature is one per-member input of the labels: a number, string or
// boolean computed from the member's feature state at a moment. A feature
// that cannot be known (no birth date, no purchase, no basket lines) is
// absent, never zero.
type Feature struct {
	ID          string
	Type        string // int, double, string, bool
	Description string
	// Kinds of event that can change it; "attributes" for canonical
	// attribute updates. Every feature also moves with the clock when
	// Clock is set.
	Sources []string
	Clock   bool
}

// Windows are the rolling windows of the window aggregates, in days.
var Windows = []int{7, 30, 90, 180, 365}

const day = 24 * time.Hour

var (
	purchaseKinds = []string{KindTransaction, KindRefund}
	allKinds      = []string{KindTransaction, KindRefund, KindVisit, KindBrowse, KindSignUp, KindCheckIn, KindShare, KindReferral, KindReview}
	actCounters   = []struct{ id, kind, what string }{
		{"checkins", KindCheckIn, "daily check-ins"},
		{"shares", KindShare, "content shares"},
		{"referrals", KindReferral, "successful referrals"},
		{"reviews", KindReview, "product reviews"},
		{"visits", KindVisit, "store or site visits without a purchase"},
		{"browses", KindBrowse, "product views"},
	}
	// Channels with their own order counts.
	orderChannels = []string{"pos", "app", "miniprogram", "web"}
)

// BuiltinFeatures lists every feature the engine computes, except those the
// catalogue's purchase filters add (see Catalog.Features).
func BuiltinFeatures() []Feature {
	var fs []Feature
	add := func(id, typ string, clock bool, desc string, sources ...string) {
		fs = append(fs, Feature{ID: id, Type: typ, Description: desc, Sources: sources, Clock: clock})
	}
	for _, w := range Windows {
		sfx := fmt.Sprintf("_%dd", w)
		in := fmt.Sprintf(" in the last %d days", w)
		add("spend"+sfx, "double", true, "net spend (paid minus refunded), currency units,"+in, purchaseKinds...)
		add("orders"+sfx, "int", true, "purchases"+in, KindTransaction)
		add("aov"+sfx, "double", true, "average order value (gross paid), currency units,"+in+"; absent without a purchase", KindTransaction)
		add("discount"+sfx, "double", true, "discounts received, currency units,"+in, KindTransaction)
		add("items"+sfx, "int", true, "units bought"+in+" (purchases with basket lines)", KindTransaction)
		add("refunds"+sfx, "int", true, "refunds"+in, KindRefund)
		add("refund_amount"+sfx, "double", true, "refunded amount, currency units,"+in, KindRefund)
		add("coupon_orders"+sfx, "int", true, "purchases that used a coupon"+in, KindTransaction)
		add("points_redeemed"+sfx, "int", true, "points spent on purchases"+in, KindTransaction)
		add("redeem_orders"+sfx, "int", true, "purchases paid partly with points"+in, KindTransaction)
		add("active_days"+sfx, "int", true, "distinct days with any event"+in, allKinds...)
		for _, c := range actCounters {
			add(c.id+sfx, "int", true, c.what+in, c.kind)
		}
	}
	add("spend_prev_90d", "double", true, "net spend 91 to 180 days ago, currency units", purchaseKinds...)
	add("orders_prev_90d", "int", true, "purchases 91 to 180 days ago", KindTransaction)
	for _, c := range orderChannels {
		add("orders_"+c+"_365d", "int", true, "purchases in channel "+c+" in the last 365 days", KindTransaction)
	}
	add("channels_365d", "int", true, "distinct channels with a purchase in the last 365 days", KindTransaction)
	add("top_channel_365d", "string", true, "channel with most purchases in the last 365 days (ties: alphabetical); absent without a purchase", KindTransaction)
	for _, d := range []struct{ id, plural string }{{"category", "categories"}, {"brand", "brands"}, {"store", "stores"}} {
		add(d.plural+"_365d", "int", true, "distinct "+d.plural+" bought from in the last 365 days; absent when no purchase said", KindTransaction)
		add("top_"+d.id+"_365d", "string", true, d.id+" with the largest spend in the last 365 days (ties: alphabetical); absent when unknown", KindTransaction)
		add("top_"+d.id+"_share_365d", "double", true, "share of that "+d.id+" in the spend it is known for, 0..1", KindTransaction)
	}
	add("spend_total", "double", false, "lifetime net spend, currency units", purchaseKinds...)
	add("orders_total", "int", false, "lifetime purchases", KindTransaction)
	add("first_purchase_days", "int", true, "days since the first purchase; absent without one", KindTransaction)
	add("last_purchase_days", "int", true, "days since the last purchase (recency); absent without one", KindTransaction)
	add("last_event_days", "int", true, "days since the last event of any kind", allKinds...)
	add("member_days", "int", true, "days since the member was first seen", allKinds...)
	add("signed_up", "bool", false, "the member registered in a channel", KindSignUp)
	add("avg_rating_365d", "double", true, "average review rating in the last 365 days; absent without a review", KindReview)
	add("avg_gap_days_365d", "double", true, "average days between purchase days in the last 365 days; absent with fewer than two", KindTransaction)
	// BG/NBD inputs over the last 365 days (the calibration window).
	add("repeat_purchases_365d", "int", true, "x: purchase days after the first in the last 365 days; absent without a purchase", KindTransaction)
	add("recency_span_days_365d", "double", true, "t_x: days from the first to the last purchase day in the last 365 days; absent without a purchase", KindTransaction)
	add("customer_age_days_365d", "double", true, "T: days from the first purchase in the last 365 days to now; absent without a purchase", KindTransaction)
	add("avg_repeat_value_365d", "double", true, "average gross value of the repeat purchases in the last 365 days, currency units; absent without one", KindTransaction)
	// Demographics from canonical attributes.
	add("age", "int", true, "age in whole years from attribute birth_date; absent without it", "attributes")
	add("birth_month", "int", false, "month of attribute birth_date, 1..12; absent without it", "attributes")
	add("days_to_birthday", "int", true, "days until the next birthday (0 on the day); absent without birth_date", "attributes")
	add("gender", "string", false, "attribute gender, lower case (f, m, …); absent without it", "attributes")
	add("city", "string", false, "attribute city, lower case, no spaces; absent without it", "attributes")
	add("current_month", "int", true, "the current month in the programme's time zone, 1..12")
	add("current_weekday", "int", true, "the current weekday, 0 = Sunday")
	add("device_members", "int", false, "most members seen on one of this member's devices; absent without a device identifier", allKinds...)
	return fs
}

// Inputs is what features are computed from.
type Inputs struct {
	State  *State
	Demo   Demographics
	Device int // members on the busiest device; 0 = no device
}

// Computed is a member's features at a moment and when they next change
// with the clock alone.
type Computed struct {
	Values map[string]any
	Next   time.Time
}

// Compute evaluates the features at now in loc. Filters (the catalogue's
// purchase filters) add their own features.
func Compute(in Inputs, now time.Time, loc *time.Location, filters []*Filter, filterVersion string) Computed {
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
		if end > nowU {
			next = min(next, end)
			return t <= nowU
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
		for k, a := range p.Categories {
			cat[k] += a
			catKnown += a
		}
		for k, a := range p.Brands {
			brand[k] += a
			brandKnown += a
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
	if k, _ := top(byChannel); k != "" {
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
		k, a := top(d.m)
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

// FilterFeatures are the features a purchase filter adds.
func FilterFeatures(f *Filter) []Feature {
	src := []string{KindTransaction}
	return []Feature{
		{ID: f.ID + "_orders_30d", Type: "int", Clock: true, Sources: src, Description: "purchases matching filter " + f.ID + " in the last 30 days"},
		{ID: f.ID + "_orders_90d", Type: "int", Clock: true, Sources: src, Description: "purchases matching filter " + f.ID + " in the last 90 days"},
		{ID: f.ID + "_orders_365d", Type: "int", Clock: true, Sources: src, Description: "purchases matching filter " + f.ID + " in the last 365 days"},
		{ID: f.ID + "_spend_365d", Type: "double", Clock: true, Sources: []string{KindTransaction, KindRefund}, Description: "net spend of purchases matching filter " + f.ID + " in the last 365 days"},
		{ID: f.ID + "_share_90d", Type: "double", Clock: true, Sources: src, Description: "share of the last 90 days' purchases matching filter " + f.ID + ", among those it can be decided for; absent when none"},
		{ID: f.ID + "_share_365d", Type: "double", Clock: true, Sources: src, Description: "share of the last 365 days' purchases matching filter " + f.ID + ", among those it can be decided for; absent when none"},
	}
}

func top(m map[string]int64) (string, int64) {
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

func localDay(unix int64, loc *time.Location) int64 {
	t := time.Unix(unix, 0).In(loc)
	y, m, d := t.Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC).Unix() / 86400
}

func nextLocalMidnight(now time.Time, loc *time.Location) int64 {
	t := now.In(loc)
	y, m, d := t.Date()
	return time.Date(y, m, d+1, 0, 0, 0, 0, loc).Unix()
}

func daysToBirthday(local, bd time.Time) int64 {
	today := time.Date(local.Year(), local.Month(), local.Day(), 0, 0, 0, 0, time.UTC)
	for y := local.Year(); y <= local.Year()+1; y++ {
		b := time.Date(y, bd.Month(), bd.Day(), 0, 0, 0, 0, time.UTC)
		if bd.Month() == time.February && bd.Day() == 29 && b.Month() != time.February {
			b = time.Date(y, time.February, 28, 0, 0, 0, 0, time.UTC)
		}
		if !b.Before(today) {
			return int64(b.Sub(today) / day)
		}
	}
	return 0
}

func normCity(c string) string {
	return strings.ToLower(strings.Join(strings.Fields(c), ""))
}
