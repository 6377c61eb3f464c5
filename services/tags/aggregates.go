package tags

import (
	"cmp"
	"math"
	"slices"
	"strings"
	"time"
)

// The window aggregates are integer sums over a member's records at a
// moment: which records a rolling window holds changes only when the clock
// passes one of its records' edges (a record leaves a window w days after
// it happened, a future-dated one enters at its time). Between edges a new
// record adds to the sums (aggregates.add) instead of every record being
// summed again (aggregates.build); the features are derived from the sums
// (derive) either way, so both give the same features.

const nWindows = 5

// windowSecs are Windows in seconds.
var windowSecs = [nWindows]int64{7 * 86400, 30 * 86400, 90 * 86400, 180 * 86400, 365 * 86400}

// Positions of the windows the features name.
const (
	w30  = 1
	w90  = 2
	w180 = 3
	w365 = 4
)

// Per-window counters.
const (
	cOrders = iota
	cGross
	cNet
	cDiscount
	cItems
	cPoints
	cCouponOrders
	cRedeemOrders
	cRefunds
	cRefundAmount
	cActiveDays
	cActs     // actCounters follow, in their order
	nCounters = cActs + 6
)

// Per-filter counters over the last 365 days.
const (
	fKnown90 = iota
	fKnown365
	fMatched30
	fMatched90
	fMatched365
	fSpend365
	nFilterCounters
)

// keyCount is a count or an amount by key, in a list in key order.
type keyCount struct {
	key string
	n   int64
}

type keyCounts []keyCount

func (k *keyCounts) add(key string, n int64) {
	i, ok := slices.BinarySearchFunc(*k, key, func(x keyCount, key string) int { return strings.Compare(x.key, key) })
	if ok {
		(*k)[i].n += n
		return
	}
	*k = slices.Insert(*k, i, keyCount{key, n})
}

func (k keyCounts) get(key string) int64 {
	if i, ok := slices.BinarySearchFunc(k, key, func(x keyCount, key string) int { return strings.Compare(x.key, key) }); ok {
		return k[i].n
	}
	return 0
}

// top is the key with the largest value, the first in key order among
// equals; "" and -1 when no value is above -1 (as over a map: see top).
func (k keyCounts) top() (string, int64) {
	best, bv := "", int64(-1)
	for _, x := range k {
		if x.n > bv {
			best, bv = x.key, x.n
		}
	}
	return best, bv
}

// aggregates are the sums the features are derived from, over the state's
// records as the windows held them at a moment.
type aggregates struct {
	win [nWindows][nCounters]int64
	// Purchases 91 to 180 days ago: net spend, count.
	prevNet, prevOrders int64
	// Reviews with a rating in 365 days: count, sum of ratings.
	reviews, ratings int64
	// Distinct local days with a purchase in 365 days, the first and the
	// last, and the gross amount of the first.
	days, firstDay, lastDay, firstDayGross int64
	// Over 365 days: purchases by channel; amounts by category, brand and
	// store, with the totals they are known for.
	channels, categories, brands, stores keyCounts
	catKnown, brandKnown, storeKnown     int64
	filters                              [][nFilterCounters]int64
	// next is the first edge after the moment: when a record enters or
	// leaves a window (math.MaxInt64: none).
	next int64
}

// windowOf is the position of the smallest window holding an instant t at
// now, nWindows when none holds it (too old, or in the future). A window of
// w days holds t while t <= now < t + w days.
func windowOf(t, now int64) int {
	if t > now {
		return nWindows
	}
	for i, w := range windowSecs {
		if t+w > now {
			return i
		}
	}
	return nWindows
}

// edge is when the windows stop holding t as they do at now: t itself for
// a future instant, the end of its smallest window otherwise; MaxInt64 when
// no window will hold it again.
func edge(t, now int64) int64 {
	if t > now {
		return t
	}
	if i := windowOf(t, now); i < nWindows {
		return t + windowSecs[i]
	}
	return math.MaxInt64
}

// refundedOf sums the refunds of an order in the state (every one, of any
// time), leaving out skip and the records of later.
func refundedOf(st *State, order string, skip *Act, later later) int64 {
	if order == "" {
		return 0
	}
	var n int64
	for i := range st.Acts {
		a := &st.Acts[i]
		if a.Kind == KindRefund && a.Order == order && (skip == nil || a.Event != skip.Event) && !later.act(a) {
			n += a.Amount
		}
	}
	return n
}

// later are the records folded after the one being added: in the state,
// but not yet in the aggregates.
type later []record

func (l later) purchase(p *Purchase) bool {
	for _, r := range l {
		if r.p == p {
			return true
		}
	}
	return false
}

func (l later) act(a *Act) bool {
	for _, r := range l {
		if r.p == nil && r.a.Event == a.Event {
			return true
		}
	}
	return false
}

// sumFilters is what the catalogue's purchase filters need: the filters
// and the key their results are cached under.
type sumFilters struct {
	filters []*Filter
	key     string
	loc     *time.Location
}

// build sums every record of st as the windows hold them at now.
func (a *aggregates) build(st *State, now int64, sf sumFilters) {
	*a = aggregates{next: math.MaxInt64, filters: make([][nFilterCounters]int64, len(sf.filters))}
	var refunded map[string]int64
	for _, r := range st.Acts {
		if r.Kind == KindRefund && r.Order != "" {
			if refunded == nil {
				refunded = map[string]int64{}
			}
			refunded[r.Order] += r.Amount
		}
	}
	// Active days: the smallest window holding any record of each local
	// day, over purchases and interactions merged in time order (so a
	// day's records are adjacent).
	day, dayW := int64(math.MinInt64), nWindows
	flush := func() {
		for k := dayW; k < nWindows; k++ {
			a.win[k][cActiveDays]++
		}
	}
	markDay := func(t int64, w int) int64 {
		d := localDay(t, sf.loc)
		if d != day {
			flush()
			day, dayW = d, w
		}
		dayW = min(dayW, w)
		return d
	}
	pi, ai := 0, 0
	for pi < len(st.Purchases) || ai < len(st.Acts) {
		if ai >= len(st.Acts) || (pi < len(st.Purchases) && st.Purchases[pi].At <= st.Acts[ai].At) {
			p := st.Purchases[pi]
			pi++
			a.next = min(a.next, edge(p.At, now))
			w := windowOf(p.At, now)
			if w == nWindows {
				continue
			}
			d := markDay(p.At, w)
			a.addPurchase(p, w, max(p.Amount-refunded[p.Order], 0), sf)
			a.addPurchaseDay(d, p.Amount, a.days > 0 && d == a.lastDay)
			continue
		}
		r := &st.Acts[ai]
		ai++
		a.next = min(a.next, edge(r.At, now))
		w := windowOf(r.At, now)
		if w == nWindows {
			continue
		}
		markDay(r.At, w)
		a.addAct(r, w)
	}
	flush()
}

// addPurchase adds a purchase held from window w up, of net amount net,
// except its day (active days, purchase days).
func (a *aggregates) addPurchase(p *Purchase, w int, net int64, sf sumFilters) {
	for i := w; i < nWindows; i++ {
		c := &a.win[i]
		c[cOrders]++
		c[cGross] += p.Amount
		c[cNet] += net
		c[cDiscount] += p.Discount
		c[cItems] += p.Quantity
		c[cPoints] += p.Points
		if p.Coupons > 0 {
			c[cCouponOrders]++
		}
		if p.Points > 0 {
			c[cRedeemOrders]++
		}
	}
	if w == w180 {
		a.prevNet += net
		a.prevOrders++
	}
	// Every held purchase is in the 365 days.
	a.channels.add(p.Channel, 1)
	for _, x := range p.Categories {
		a.categories.add(x.Key, x.Minor)
		a.catKnown += x.Minor
	}
	for _, x := range p.Brands {
		a.brands.add(x.Key, x.Minor)
		a.brandKnown += x.Minor
	}
	if p.Store != "" {
		a.stores.add(p.Store, p.Amount)
		a.storeKnown += p.Amount
	}
	for fi := range sf.filters {
		res := p.match(fi, sf.filters, sf.key, sf.loc)
		if res == matchUnknown {
			continue
		}
		c := &a.filters[fi]
		c[fKnown365]++
		if w <= w90 {
			c[fKnown90]++
		}
		if res != matchYes {
			continue
		}
		c[fMatched365]++
		c[fSpend365] += net
		if w <= w90 {
			c[fMatched90]++
		}
		if w <= w30 {
			c[fMatched30]++
		}
	}
}

// addAct adds an interaction or refund held from window w up, except its
// day.
func (a *aggregates) addAct(r *Act, w int) {
	for i := w; i < nWindows; i++ {
		c := &a.win[i]
		if r.Kind == KindRefund {
			c[cRefunds]++
			c[cRefundAmount] += r.Amount
		}
		if k := actCounter(r.Kind); k >= 0 {
			c[cActs+k]++
		}
	}
	if r.Kind == KindReview && r.Rating > 0 {
		a.reviews++
		a.ratings += int64(r.Rating)
	}
}

// addPurchaseDay adds a purchase of gross amount on local day d (in the
// 365 days); seen says the day already has one.
func (a *aggregates) addPurchaseDay(d, gross int64, seen bool) {
	switch {
	case a.days == 0:
		a.days, a.firstDay, a.lastDay, a.firstDayGross = 1, d, d, gross
	case d == a.firstDay:
		a.firstDayGross += gross
	case d < a.firstDay:
		a.days++
		a.firstDay, a.firstDayGross = d, gross
	case d > a.lastDay:
		a.days++
		a.lastDay = d
	case !seen:
		a.days++
	}
}

func actCounter(kind string) int {
	for i, c := range actCounters {
		if c.kind == kind {
			return i
		}
	}
	return -1
}

// add brings the aggregates of st without r and later (records folded
// since they were summed, at a moment whose windows held every other record
// as they do at now) to st with r, at now.
func (a *aggregates) add(st *State, r record, later later, now int64, sf sumFilters) {
	if r.p != nil {
		p := r.p
		a.next = min(a.next, edge(p.At, now))
		w := windowOf(p.At, now)
		if w == nWindows {
			return
		}
		a.addPurchase(p, w, max(p.Amount-refundedOf(st, p.Order, nil, later), 0), sf)
		a.addDay(st, p.At, w, r, later, now, sf.loc)
		return
	}
	act := &r.a
	a.next = min(a.next, edge(act.At, now))
	if act.Kind == KindRefund && act.Order != "" {
		a.refund(st, act, later, now, sf)
	}
	w := windowOf(act.At, now)
	if w == nWindows {
		return
	}
	a.addAct(act, w)
	a.addDay(st, act.At, w, r, later, now, sf.loc)
}

// refund lowers the net amount of the held purchases of the refunded
// order.
func (a *aggregates) refund(st *State, r *Act, later later, now int64, sf sumFilters) {
	var before int64
	done := false
	for _, p := range st.Purchases {
		if p.Order != r.Order || later.purchase(p) {
			continue
		}
		w := windowOf(p.At, now)
		if w == nWindows {
			continue
		}
		if !done {
			before, done = refundedOf(st, r.Order, r, later), true
		}
		d := max(p.Amount-before-r.Amount, 0) - max(p.Amount-before, 0)
		for i := w; i < nWindows; i++ {
			a.win[i][cNet] += d
		}
		if w == w180 {
			a.prevNet += d
		}
		for fi := range sf.filters {
			if p.match(fi, sf.filters, sf.key, sf.loc) == matchYes {
				a.filters[fi][fSpend365] += d
			}
		}
	}
}

// addDay counts the local day of r (at t, held from window w up) in the
// windows that hold no other record of that day, and as a purchase day.
func (a *aggregates) addDay(st *State, t int64, w int, r record, later later, now int64, loc *time.Location) {
	day := localDay(t, loc)
	// A local day lasts at most 26 hours: look at the records within two
	// days of t.
	lo, hi := t-2*86400, t+2*86400
	other := nWindows // the smallest window holding another record of the day
	i, _ := slices.BinarySearchFunc(st.Purchases, lo, func(p *Purchase, t int64) int { return cmp.Compare(p.At, t) })
	for _, p := range st.Purchases[i:] {
		if p.At > hi {
			break
		}
		if p != r.p && !later.purchase(p) && localDay(p.At, loc) == day {
			other = min(other, windowOf(p.At, now))
		}
	}
	purchaseSeen := other < nWindows // every held purchase is in the 365 days
	j, _ := slices.BinarySearchFunc(st.Acts, lo, func(x Act, t int64) int { return cmp.Compare(x.At, t) })
	for k := j; k < len(st.Acts) && st.Acts[k].At <= hi; k++ {
		x := &st.Acts[k]
		if (r.p != nil || x.Event != r.a.Event) && !later.act(x) && localDay(x.At, loc) == day {
			other = min(other, windowOf(x.At, now))
		}
	}
	for k := w; k < other; k++ {
		a.win[k][cActiveDays]++
	}
	if r.p != nil {
		a.addPurchaseDay(day, r.p.Amount, purchaseSeen)
	}
}
