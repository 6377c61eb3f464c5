package tags

import (
	"fmt"
	"math"
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
	st := in.State
	if st == nil {
		st = &State{}
	}
	lay := newLayout(filters)
	var a aggregates
	a.build(st, now.Unix(), sumFilters{filters: filters, key: filterVersion, loc: loc})
	vals := make([]fval, len(lay.ids))
	next := min(derive(vals, &a, sumLife(st.Life), in.Demo, in.Device, now.Unix(), loc), a.next)
	c := Computed{Values: make(map[string]any, len(vals))}
	for i, v := range vals {
		if v.ok {
			c.Values[lay.ids[i]] = lay.value(i, v)
		}
	}
	if next != math.MaxInt64 {
		c.Next = time.Unix(next, 0).UTC()
	}
	return c
}

// Feature value types.
const (
	typeInt uint8 = iota
	typeDouble
	typeString
	typeBool
)

func featureType(t string) uint8 {
	switch t {
	case "int":
		return typeInt
	case "double":
		return typeDouble
	case "bool":
		return typeBool
	}
	return typeString
}

// fval is one feature's value: absent unless ok; by the feature's type in
// i (int; bool as 0 or 1), f (double) or s (string).
type fval struct {
	ok bool
	i  int64
	f  float64
	s  string
}

func (v fval) same(w fval) bool {
	return v.ok == w.ok && v.i == w.i && math.Float64bits(v.f) == math.Float64bits(w.f) && v.s == w.s
}

// layout places the features in a vector: the built-in ones in
// BuiltinFeatures' order, then each filter's six.
type layout struct {
	ids   []string
	types []uint8
}

func newLayout(filters []*Filter) *layout {
	l := &layout{}
	for _, f := range builtinFeatures {
		l.ids, l.types = append(l.ids, f.ID), append(l.types, featureType(f.Type))
	}
	for _, f := range filters {
		for _, ff := range FilterFeatures(f) {
			l.ids, l.types = append(l.ids, ff.ID), append(l.types, featureType(ff.Type))
		}
	}
	return l
}

// value is v as CEL and Compute's map hold it.
func (l *layout) value(i int, v fval) any {
	switch l.types[i] {
	case typeInt:
		return v.i
	case typeDouble:
		return v.f
	case typeBool:
		return v.i != 0
	}
	return v.s
}

var builtinFeatures = BuiltinFeatures()

// Per-window features, in BuiltinFeatures' order.
const (
	xSpend = iota
	xOrders
	xAOV
	xDiscount
	xItems
	xRefunds
	xRefundAmount
	xCouponOrders
	xPointsRedeemed
	xRedeemOrders
	xActiveDays
	xActs           // actCounters follow
	nWindowFeatures = xActs + 6
)

// fx holds the positions of the built-in features.
var fx = func() (x struct {
	win                                                    [nWindows][nWindowFeatures]int
	spendPrev, ordersPrev                                  int
	ordersChannel                                          [4]int
	channels, topChannel                                   int
	distinct, top, share                                   [3]int // category, brand, store
	spendTotal, ordersTotal, firstPurchase, lastPurchase   int
	lastEvent, memberDays, signedUp, avgRating, avgGap     int
	repeat, recencySpan, customerAge, avgRepeatValue       int
	age, birthMonth, toBirthday, gender, city, month, wday int
	device                                                 int
}) {
	pos := map[string]int{}
	for i, f := range builtinFeatures {
		pos[f.ID] = i
	}
	at := func(id string) int {
		i, ok := pos[id]
		if !ok {
			panic("tags: no built-in feature " + id)
		}
		return i
	}
	for w, days := range Windows {
		sfx := fmt.Sprintf("_%dd", days)
		for k, id := range []string{"spend", "orders", "aov", "discount", "items", "refunds", "refund_amount", "coupon_orders",
			"points_redeemed", "redeem_orders", "active_days"} {
			x.win[w][k] = at(id + sfx)
		}
		for k, c := range actCounters {
			x.win[w][xActs+k] = at(c.id + sfx)
		}
	}
	x.spendPrev, x.ordersPrev = at("spend_prev_90d"), at("orders_prev_90d")
	for i, c := range orderChannels {
		x.ordersChannel[i] = at("orders_" + c + "_365d")
	}
	x.channels, x.topChannel = at("channels_365d"), at("top_channel_365d")
	for i, d := range []struct{ id, plural string }{{"category", "categories"}, {"brand", "brands"}, {"store", "stores"}} {
		x.distinct[i], x.top[i], x.share[i] = at(d.plural+"_365d"), at("top_"+d.id+"_365d"), at("top_"+d.id+"_share_365d")
	}
	x.spendTotal, x.ordersTotal = at("spend_total"), at("orders_total")
	x.firstPurchase, x.lastPurchase = at("first_purchase_days"), at("last_purchase_days")
	x.lastEvent, x.memberDays, x.signedUp = at("last_event_days"), at("member_days"), at("signed_up")
	x.avgRating, x.avgGap = at("avg_rating_365d"), at("avg_gap_days_365d")
	x.repeat, x.recencySpan = at("repeat_purchases_365d"), at("recency_span_days_365d")
	x.customerAge, x.avgRepeatValue = at("customer_age_days_365d"), at("avg_repeat_value_365d")
	x.age, x.birthMonth, x.toBirthday = at("age"), at("birth_month"), at("days_to_birthday")
	x.gender, x.city = at("gender"), at("city")
	x.month, x.wday, x.device = at("current_month"), at("current_weekday"), at("device_members")
	return x
}()

// lifeSum is a member's lifetime totals over every origin; any is false
// when there are none.
type lifeSum struct {
	Lifetime
	any bool
}

func sumLife(m map[string]*Lifetime) lifeSum {
	var s lifeSum
	for _, l := range m {
		s.Spend += l.Spend
		s.Orders += l.Orders
		s.Refunded += l.Refunded
		s.SignedUp = s.SignedUp || l.SignedUp
		if l.FirstPurchase != 0 && (s.FirstPurchase == 0 || l.FirstPurchase < s.FirstPurchase) {
			s.FirstPurchase = l.FirstPurchase
		}
		s.LastPurchase = max(s.LastPurchase, l.LastPurchase)
		if !s.any || l.FirstSeen < s.FirstSeen {
			s.FirstSeen = l.FirstSeen
		}
		s.LastSeen = max(s.LastSeen, l.LastSeen)
		s.any = true
	}
	return s
}

// derive computes the features from the aggregates, the lifetime totals
// and the member's attributes at now into out (as newLayout places them)
// and returns when they next change with the clock alone, the aggregates'
// window edges aside.
func derive(out []fval, a *aggregates, life lifeSum, demo Demographics, device int, now int64, loc *time.Location) int64 {
	clear(out)
	next := int64(math.MaxInt64)
	num := func(i int, v int64) { out[i] = fval{ok: true, i: v} }
	dbl := func(i int, v float64) { out[i] = fval{ok: true, f: v} }
	str := func(i int, v string) { out[i] = fval{ok: true, s: v} }
	units := func(minor int64) float64 { return float64(minor) / 100 }
	// Days since an instant change every 24h after it.
	daysSince := func(t int64) int64 {
		d := (now - t) / 86400
		if now >= t {
			next = min(next, t+(d+1)*86400)
		} else {
			next = min(next, t)
		}
		return max(d, 0)
	}
	for w := range nWindows {
		c, x := &a.win[w], &fx.win[w]
		dbl(x[xSpend], units(c[cNet]))
		num(x[xOrders], c[cOrders])
		if c[cOrders] > 0 {
			dbl(x[xAOV], units(c[cGross])/float64(c[cOrders]))
		}
		dbl(x[xDiscount], units(c[cDiscount]))
		num(x[xItems], c[cItems])
		num(x[xRefunds], c[cRefunds])
		dbl(x[xRefundAmount], units(c[cRefundAmount]))
		num(x[xCouponOrders], c[cCouponOrders])
		num(x[xPointsRedeemed], c[cPoints])
		num(x[xRedeemOrders], c[cRedeemOrders])
		num(x[xActiveDays], c[cActiveDays])
		for k := range actCounters {
			num(x[xActs+k], c[cActs+k])
		}
	}
	dbl(fx.spendPrev, units(a.prevNet))
	num(fx.ordersPrev, a.prevOrders)
	for i, c := range orderChannels {
		num(fx.ordersChannel[i], a.channels.get(c))
	}
	num(fx.channels, int64(len(a.channels)))
	if k, _ := a.channels.top(); k != "" {
		str(fx.topChannel, k)
	}
	for i, d := range [3]struct {
		m     keyCounts
		known int64
	}{{a.categories, a.catKnown}, {a.brands, a.brandKnown}, {a.stores, a.storeKnown}} {
		if len(d.m) == 0 {
			continue
		}
		num(fx.distinct[i], int64(len(d.m)))
		k, v := d.m.top()
		str(fx.top[i], k)
		if d.known > 0 {
			dbl(fx.share[i], float64(v)/float64(d.known))
		} else {
			dbl(fx.share[i], 0)
		}
	}
	dbl(fx.spendTotal, units(max(life.Spend-life.Refunded, 0)))
	num(fx.ordersTotal, life.Orders)
	out[fx.signedUp] = fval{ok: true, i: b2i(life.SignedUp)}
	if life.FirstPurchase != 0 {
		num(fx.firstPurchase, daysSince(life.FirstPurchase))
		num(fx.lastPurchase, daysSince(life.LastPurchase))
	}
	if life.any {
		num(fx.lastEvent, daysSince(life.LastSeen))
		num(fx.memberDays, daysSince(life.FirstSeen))
	}
	if a.reviews > 0 {
		dbl(fx.avgRating, float64(a.ratings)/float64(a.reviews))
	}
	nowT := time.Unix(now, 0)
	midnight := nextLocalMidnight(nowT, loc)
	if a.days > 0 {
		x := a.days - 1
		num(fx.repeat, x)
		dbl(fx.recencySpan, float64(a.lastDay-a.firstDay))
		dbl(fx.customerAge, float64(localDay(now, loc)-a.firstDay))
		if x > 0 {
			dbl(fx.avgGap, float64(a.lastDay-a.firstDay)/float64(x))
			dbl(fx.avgRepeatValue, units(a.win[w365][cGross]-a.firstDayGross)/float64(x))
		}
	}
	// Demographics and the calendar.
	local := nowT.In(loc)
	num(fx.month, int64(local.Month()))
	num(fx.wday, int64(local.Weekday()))
	next = min(next, midnight)
	if demo.BirthDate != "" {
		if bd, err := time.ParseInLocation("2006-01-02", demo.BirthDate, loc); err == nil && !bd.After(local) {
			age := local.Year() - bd.Year()
			if local.Month() < bd.Month() || (local.Month() == bd.Month() && local.Day() < bd.Day()) {
				age--
			}
			num(fx.age, int64(age))
			num(fx.birthMonth, int64(bd.Month()))
			num(fx.toBirthday, daysToBirthday(local, bd))
		}
	}
	if g := strings.ToLower(strings.TrimSpace(demo.Gender)); g != "" {
		str(fx.gender, g)
	}
	if c := normCity(demo.City); c != "" {
		str(fx.city, c)
	}
	if device > 0 {
		num(fx.device, int64(device))
	}
	// Purchase filters.
	base := len(builtinFeatures)
	for fi := range a.filters {
		c, i := &a.filters[fi], base+fi*6
		num(i, c[fMatched30])
		num(i+1, c[fMatched90])
		num(i+2, c[fMatched365])
		dbl(i+3, units(c[fSpend365]))
		if c[fKnown90] > 0 {
			dbl(i+4, float64(c[fMatched90])/float64(c[fKnown90]))
		}
		if c[fKnown365] > 0 {
			dbl(i+5, float64(c[fMatched365])/float64(c[fKnown365]))
		}
	}
	return next
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
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
