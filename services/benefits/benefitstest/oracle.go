// Package benefitstest is a TEST ORACLE for the loyalty programme, not production
// code. It re-implements docs/benefits.md independently of the engine in
// services/benefits (it never reads or imports the engine's code), keeps all
// state in memory, and favours clarity over speed. Tests replay the same
// event stream (see Generate and GenerateWith) through the engine and the
// oracle and compare every member's balance, lots, tier history, grants and
// coupons.
//
// Only event-driven operations are modelled: purchases (Transaction),
// refunds (Refund), check-ins, referrals and sign-ups, plus month starts and
// expiry (Apply runs them before each operation; AdvanceTo runs them without
// one). Adjust, Redeem, ClaimCoupon, merges and programme reloads are not.
//
// # Readings of the specification
//
// Where docs/benefits.md leaves room, the oracle takes the most literal
// reading. Each choice is listed here so the engine can be reconciled.
//
//  1. Refusals. A refused purchase or refund changes nothing at all: the
//     month starts and expiry that would have preceded it are not kept, the
//     member's clock (last processed time) does not move, a member whose
//     first event is refused is not created, and the event id is not
//     remembered (a redelivery is evaluated afresh). Refusals are counted by
//     reason (Refused): currency, redeem_not_multiple, coupon_invalid,
//     coupon_min_spend, redeem_over_share, insufficient_points,
//     refund_exceeds_paid, refund_already_full. Purchase checks run in this
//     order: currency, multiple of points_per_unit, coupons, redemption
//     share, then available points — spending happens after the purchase
//     lot is created, as listed in §3 steps 6–7 (this only matters when
//     return_window is 0).
//  2. No-ops. A purchase whose order id was already applied, a refund of an
//     order the programme never saw (or of another member's order), a
//     redelivered event id, and Visit/Browse/Share events "change nothing":
//     no month starts, expiry, benefit evaluation, clock movement or member
//     creation.
//  3. Sign-ups (with or without birth_date), check-ins, referrals and
//     accepted refunds are operations: steps 1, 2 and 5 of "Order of
//     processing" run around them. SignUp.birth_date (a Timestamp) is
//     converted to a date in the programme timezone.
//  4. Refund amount: Refund.amount unset or 0 means everything not yet
//     refunded. When the amount is set its currency must be the programme's
//     (an empty currency is "another currency" and refused, for purchases
//     too). A refund of an order already fully refunded is refused
//     (refund_already_full).
//  5. paid = 0: any refund of such an order is the full refund, whatever
//     amount it names (a = 0, A = paid = 0): all E is reversed and all
//     redeemed points restored, the order count decreases by one and the
//     coupons are restored.
//  6. On a refund the reversal happens before the restore lot is created, so
//     restored points are never used to cover a reversal.
//  7. "Points earned of that month decrease by the points reversed" uses the
//     reversal as computed by the formula, floor(E·A/paid) −
//     floor(E·A0/paid), including any part recorded as unrecovered. The
//     ledger reverse transaction moves only what was held.
//  8. Tier activity (spend, points earned, orders) is recorded only by
//     purchases (§3 step 8) and reduced by refunds (§4); mission and
//     referral bonuses do not count towards points_12m.
//  9. An immediate upgrade after a purchase does not touch grace. At a month
//     start with Q below the current tier: if not in grace, grace starts with
//     end = this month + grace_months; then, if in grace and this month start
//     is at or after the end, the member moves down to Q and grace is
//     cleared (so grace_months 0 downgrades at once).
//  10. Benefits: conditions present are ANDed; labels are the oracle's
//     own (see Labels below). Revocation: immediate revokes at any
//     evaluation where the condition is false; end_of_month revokes only
//     at a month-start evaluation where the condition is false (so a
//     birthday benefit goes at the next month start); never keeps it.
//     Revocation leaves the benefit's coupon as it is. A grant at a month
//     start issues its coupon at the month start instant.
//  11. Coupons: valid_from = issue time, valid_until = issue time +
//     valid_days × 24h. A code is usable when it belongs to the member, its
//     state is issued or restored and valid_from <= t < valid_until; the
//     same code twice in one purchase is refused. min_spend is compared with
//     the basket total (before discounts). A full refund restores a coupon
//     only if it is still "used" and valid at t. Coupons() derives
//     "expired" (issued/restored with valid_until <= t) at the member's
//     clock. per_member_limit/total_limit unset = unlimited.
//  12. Campaigns: the multiplier part and the bonus are computed, summed,
//     then capped by the day cap, month cap and budget left (each cap left
//     floored at 0); best_of compares capped extras. A campaign without
//     multiplier and bonus never applies. CEL: basket and member are
//     map(string, dyn); basket.total = Transaction.total; items carry sku,
//     category, brand, quantity (int) and amount (LineItem.amount minor
//     units, 0 when unset); member.tier is the tier before the purchase;
//     member.labels is always empty (the oracle computes only the labels
//     benefits name, for benefits); member.attributes holds birth_date when
//     known; channel is pos/app/miniprogram/web (crm, backoffice, "" for the
//     others); hour/weekday/day_of_month are those of t in the programme
//     timezone. A condition whose evaluation errors is false.
//  13. Missions: the purchases-in-a-month bonus is checked after each
//     purchase for t's month (orders of the month ≥ count and not yet paid
//     for that month). A second check-in on the same day changes nothing. A
//     referral over the monthly cap earns nothing and is not counted.
//  14. Zero-point lots and transactions are never created (E = 0, a reversal
//     or restore of 0). Expiry runs over lots in creation order.
//  15. AdvanceTo moves the member's clock to t (time never goes backwards for
//     later events). Balance is a pure view: lots with expires_at <= at are
//     excluded, pending means at < available_at. Every time the oracle
//     returns is in UTC (compare with time.Time.Equal).
//  16. A cause may produce two earn transactions (a purchase and the
//     purchases-in-a-month bonus it triggers, or several expire
//     transactions); the oracle tracks only account sums and per-kind
//     totals, not transaction identity.
//  17. Ignored inputs: Transaction.discount, LineItem.unit_price and item
//     currencies, Refund.items and original_event_id, identifiers and
//     resolution. Upgrades are checked only after purchases (and at month
//     starts), never after refunds or other operations.
//  18. Programme parsing is strict (unknown YAML fields are errors).
//     Defaults: currency CNY, timezone Asia/Shanghai, rounding floor,
//     return_window 168h, points_lifetime 8760h, base.points_per_unit 1,
//     grace_months 1, stacking additive, tier multiplier 1.0, revoke
//     immediate. redemption.points_per_unit and max_share are required.
//     Durations use Go syntax or "<n>d". Each tier criterion has exactly
//     one key. Campaign from/until take RFC 3339 or a local date/time.
//
// # Labels
//
// The labels a benefit names are computed by the oracle itself (labels.go),
// from the definitions of docs/labels.md and never from services/tags, for
// the labels it knows (KnownLabels: bought_7d/30d/90d/365d, sharer,
// social_influencer; a programme naming another is refused by New).
//
//  1. Facts. Every Transaction (a purchase), Share and Referral event of
//     the member counts, once per event id, whatever the programme made of
//     it: a refused purchase, a repeated order id, a referral over the
//     monthly cap and a share (which the programme ignores) all count.
//     Malformed events (Apply's errors) do not.
//  2. Windows. "In the last N days" at now holds an event that occurred
//     at r when r <= now < r + N×24h: rolling, exact to the instant, by
//     occurred_at.
//  3. A benefit's condition at t reads the labels at t; at a month start,
//     the labels at the month start.
//  4. Benefits follow labels. When a label a benefit names changes for a
//     member, the member gets an operation without effect at that time:
//     month starts, expiry, then benefits (steps 1, 2 and 5 of "Order of
//     processing"), creating the member if it has no state yet (a member
//     whose only events are shares, or whose first purchase was refused).
//     A change with time alone (an event leaving a window) is acted on at
//     its instant, before anything later of the member: Apply acts on
//     window ends up to the event's time first, AdvanceTo up to t. A change
//     an event makes is acted on right after that event's operation, at its
//     time (so the operation itself still reads the labels before the
//     event; since an event only ever adds to the counts, this grants what
//     reading them after would, at the same time). LabelEdges lists the
//     instants of window ends that change a label, for a harness to run
//     the platform's scheduled jobs at.
//  5. BenefitHistory records every grant and revocation with its time.
//
// # Coupon codes
//
// Codes are CouponCode(member, template, n) = template + "-" + member + "-"
// + decimal(n), where n is the 1-based number of coupons of that template
// issued to that member so far (including this one), counted in issue
// order. Example: "C10-7f0c…-2" is the member's second C10 coupon.
package benefitstest

import (
	"errors"
	"fmt"
	"math/big"
	"sort"
	"strconv"
	"time"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// Account names of the programme side of the ledger.
const (
	AccountLiability   = "programme:liability"
	AccountRedemptions = "programme:redemptions"
	AccountAdjustments = "programme:adjustments"
)

// Ledger transaction kinds tracked in Totals.
const (
	KindEarn    = "earn"
	KindRedeem  = "redeem"
	KindExpire  = "expire"
	KindReverse = "reverse"
	KindRestore = "restore"
)

// Coupon states.
const (
	CouponIssued   = "issued"
	CouponUsed     = "used"
	CouponRestored = "restored"
	CouponExpired  = "expired"
)

// Lot is a parcel of points (§2).
type Lot struct {
	Earned, Remaining                int64
	EarnedAt, AvailableAt, ExpiresAt time.Time
}

// TierMove is one entry of a member's tier history (§5).
type TierMove struct {
	From, To string
	At       time.Time
	Reason   string
}

// OrderInfo is what the oracle recorded for a purchase (§3 step 6) and its
// refunds (§4).
type OrderInfo struct {
	OrderID, Member string
	At              time.Time
	Total, Paid     int64
	CouponDiscount  int64
	Redeemed        int64
	Earned          int64
	Extras          map[string]int64 // campaign id → counted extra
	Coupons         []string
	Refunded        int64 // A so far
	FullyRefunded   bool
	Reversed        int64 // points actually taken back
	Unrecovered     int64
	Restored        int64
}

// Coupon is one issued coupon.
type Coupon struct {
	Code, Template, State string
	IssuedAt              time.Time
	ValidFrom, ValidUntil time.Time
}

// CouponCode is the deterministic code of the n-th (1-based) coupon of a
// template issued to a member.
func CouponCode(member, template string, n int) string {
	return template + "-" + member + "-" + strconv.Itoa(n)
}

type lot struct {
	Lot
	order string // purchase lots only
}

type activity struct{ spend, points, orders int64 }

type campKey struct{ campaign, period int }

type member struct {
	id        string
	clock     time.Time
	evalMonth int

	lots     []lot
	tier     int
	inGrace  bool
	graceEnd int
	history  []TierMove
	activity map[int]activity

	campDay   map[campKey]int64
	campMonth map[campKey]int64

	coupons      []Coupon
	couponByCode map[string]int
	couponSeq    map[string]int

	held       map[string]bool
	benefitLog []BenefitChange
	birthDate  string

	hasCheckIn  bool
	lastCheckIn int
	streak      int

	referrals      map[int]int
	monthlyAwarded map[int]bool
}

func copyMap[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (m *member) clone() *member {
	c := *m
	c.lots = append([]lot(nil), m.lots...)
	c.history = append([]TierMove(nil), m.history...)
	c.activity = copyMap(m.activity)
	c.campDay = copyMap(m.campDay)
	c.campMonth = copyMap(m.campMonth)
	c.coupons = append([]Coupon(nil), m.coupons...)
	c.couponByCode = copyMap(m.couponByCode)
	c.couponSeq = copyMap(m.couponSeq)
	c.held = copyMap(m.held)
	c.benefitLog = append([]BenefitChange(nil), m.benefitLog...)
	c.referrals = copyMap(m.referrals)
	c.monthlyAwarded = copyMap(m.monthlyAwarded)
	return &c
}

type order struct {
	OrderInfo
	lotIndex int // index of the purchase lot in the member's lots, -1 if none
}

// Oracle is the in-memory model of the programme.
type Oracle struct {
	prog         *program
	members      map[string]*member
	orders       map[string]*order
	seen         map[string]bool
	ledger       map[string]int64
	totals       map[string]int64
	budgetUsed   []int64
	couponIssued map[string]int
	refused      map[string]int
	refusedIDs   map[string]string // event id → reason

	// Labels: the facts each member's labels are computed from, and the
	// labels the programme's benefits name (sorted).
	labels map[string]*labelFacts
	named  []string
}

// New parses a programme (program.yaml syntax) and returns an empty oracle.
func New(programYAML []byte) (*Oracle, error) {
	p, err := parseProgram(programYAML)
	if err != nil {
		return nil, err
	}
	return &Oracle{
		prog:         p,
		members:      map[string]*member{},
		orders:       map[string]*order{},
		seen:         map[string]bool{},
		ledger:       map[string]int64{},
		totals:       map[string]int64{},
		budgetUsed:   make([]int64, len(p.campaigns)),
		couponIssued: map[string]int{},
		refused:      map[string]int{},
		refusedIDs:   map[string]string{},
		labels:       map[string]*labelFacts{},
		named:        p.namedLabels(),
	}, nil
}

// ---------------------------------------------------------------- calendar

func (o *Oracle) monthOf(t time.Time) int {
	lt := t.In(o.prog.loc)
	return lt.Year()*12 + int(lt.Month()) - 1
}

func (o *Oracle) monthStart(idx int) time.Time {
	return time.Date(idx/12, time.Month(idx%12+1), 1, 0, 0, 0, 0, o.prog.loc).UTC()
}

func (o *Oracle) dayOf(t time.Time) int {
	y, mo, d := t.In(o.prog.loc).Date()
	return int(time.Date(y, mo, d, 0, 0, 0, 0, time.UTC).Unix() / 86400)
}

func (o *Oracle) birthdayMonth(m *member, t time.Time) bool {
	if len(m.birthDate) < 7 {
		return false
	}
	mo, err := strconv.Atoi(m.birthDate[5:7])
	return err == nil && mo == int(t.In(o.prog.loc).Month())
}

// ---------------------------------------------------------------- arithmetic

// roundQuo applies the programme's rounding mode to num/den (num >= 0,
// den > 0), exactly.
func (o *Oracle) roundQuo(num, den *big.Int) int64 {
	q, r := new(big.Int).QuoRem(num, den, new(big.Int))
	switch o.prog.rounding {
	case "ceil":
		if r.Sign() > 0 {
			q.Add(q, big.NewInt(1))
		}
	case "round":
		if new(big.Int).Lsh(r, 1).Cmp(den) >= 0 {
			q.Add(q, big.NewInt(1))
		}
	}
	return q.Int64()
}

func product(factors ...int64) *big.Int {
	p := big.NewInt(1)
	for _, f := range factors {
		p.Mul(p, big.NewInt(f))
	}
	return p
}

var tenPow10 = big.NewInt(10_000_000_000)

// floorMulDiv is floor(a*b/c) for a, b >= 0, c > 0.
func floorMulDiv(a, b, c int64) int64 {
	return new(big.Int).Quo(product(a, b), big.NewInt(c)).Int64()
}

// ---------------------------------------------------------------- ledger

func (o *Oracle) post(kind, memberID string, p int64) {
	if p == 0 {
		return
	}
	acct := "member:" + memberID
	switch kind {
	case KindEarn:
		o.ledger[acct] += p
		o.ledger[AccountLiability] -= p
	case KindRedeem:
		o.ledger[acct] -= p
		o.ledger[AccountRedemptions] += p
	case KindExpire, KindReverse:
		o.ledger[acct] -= p
		o.ledger[AccountLiability] += p
	case KindRestore:
		o.ledger[acct] += p
		o.ledger[AccountRedemptions] -= p
	default:
		panic("oracle: unknown ledger kind " + kind)
	}
	o.totals[kind] += p
}

func (o *Oracle) addLot(m *member, points int64, t, availableAt time.Time, orderID string) int {
	m.lots = append(m.lots, lot{Lot: Lot{Earned: points, Remaining: points, EarnedAt: t,
		AvailableAt: availableAt, ExpiresAt: t.Add(o.prog.lifetime)}, order: orderID})
	return len(m.lots) - 1
}

// earn creates an available lot and its earn transaction.
func (o *Oracle) earn(m *member, points int64, t time.Time) {
	if points <= 0 {
		return
	}
	o.addLot(m, points, t, t, "")
	o.post(KindEarn, m.id, points)
}

// sortedLots returns indices of lots with remaining > 0 that pass keep, in
// spending order: expires_at, then creation order.
func sortedLots(m *member, keep func(int, *lot) bool) []int {
	var idx []int
	for i := range m.lots {
		if m.lots[i].Remaining > 0 && keep(i, &m.lots[i]) {
			idx = append(idx, i)
		}
	}
	sort.SliceStable(idx, func(a, b int) bool {
		la, lb := m.lots[idx[a]], m.lots[idx[b]]
		if !la.ExpiresAt.Equal(lb.ExpiresAt) {
			return la.ExpiresAt.Before(lb.ExpiresAt)
		}
		return idx[a] < idx[b]
	})
	return idx
}

func availableAt(l *lot, t time.Time) bool {
	return !t.Before(l.AvailableAt) && t.Before(l.ExpiresAt)
}

// spend takes p points from available lots (§2); false (and no change) if
// fewer are available.
func (o *Oracle) spend(m *member, p int64, t time.Time) bool {
	idx := sortedLots(m, func(_ int, l *lot) bool { return availableAt(l, t) })
	var have int64
	for _, i := range idx {
		have += m.lots[i].Remaining
	}
	if have < p {
		return false
	}
	need := p
	for _, i := range idx {
		if need == 0 {
			break
		}
		x := min(need, m.lots[i].Remaining)
		m.lots[i].Remaining -= x
		need -= x
	}
	return true
}

// ---------------------------------------------------------------- coupons

func (o *Oracle) issueCoupon(m *member, templateID string, t time.Time) {
	tmpl := o.prog.coupons[templateID]
	if tmpl == nil {
		return
	}
	if tmpl.perMemberLimit != nil && m.couponSeq[templateID] >= *tmpl.perMemberLimit {
		return
	}
	if tmpl.totalLimit != nil && o.couponIssued[templateID] >= *tmpl.totalLimit {
		return
	}
	m.couponSeq[templateID]++
	o.couponIssued[templateID]++
	code := CouponCode(m.id, templateID, m.couponSeq[templateID])
	m.couponByCode[code] = len(m.coupons)
	m.coupons = append(m.coupons, Coupon{Code: code, Template: templateID, State: CouponIssued,
		IssuedAt: t, ValidFrom: t, ValidUntil: t.Add(time.Duration(tmpl.validDays) * 24 * time.Hour)})
}

func couponValidAt(c *Coupon, t time.Time) bool {
	return !t.Before(c.ValidFrom) && t.Before(c.ValidUntil)
}

// ---------------------------------------------------------------- tiers

func (o *Oracle) qualifies(m *member, ti, em int) bool {
	for _, c := range o.prog.tiers[ti].criteria {
		switch c.kind {
		case "spend_12m", "points_12m", "orders_12m":
			var sum int64
			for mo := em - 11; mo <= em; mo++ {
				a := m.activity[mo]
				switch c.kind {
				case "spend_12m":
					sum += a.spend
				case "points_12m":
					sum += a.points
				default:
					sum += a.orders
				}
			}
			if sum >= c.threshold {
				return true
			}
		case "each_month_spend":
			ok := true
			for k := 1; k <= c.months; k++ {
				if m.activity[em-k].spend < c.threshold {
					ok = false
					break
				}
			}
			if ok {
				return true
			}
		}
	}
	return false
}

func (o *Oracle) highestQualifying(m *member, em int) int {
	for i := len(o.prog.tiers) - 1; i >= 1; i-- {
		if o.qualifies(m, i, em) {
			return i
		}
	}
	return 0
}

func (o *Oracle) moveTier(m *member, to int, at time.Time, reason string) {
	m.history = append(m.history, TierMove{From: o.prog.tiers[m.tier].id, To: o.prog.tiers[to].id, At: at, Reason: reason})
	m.tier = to
}

// ---------------------------------------------------------------- month starts, expiry, benefits

func (o *Oracle) monthStarts(m *member, t time.Time) {
	tm := o.monthOf(t)
	for mm := m.evalMonth + 1; mm <= tm; mm++ {
		ms := o.monthStart(mm)
		q := o.highestQualifying(m, mm)
		switch {
		case q > m.tier:
			o.moveTier(m, q, ms, "upgrade")
			m.inGrace = false
		case q == m.tier:
			m.inGrace = false
		default:
			if !m.inGrace {
				m.inGrace = true
				m.graceEnd = mm + o.prog.graceMonths
			}
			if mm >= m.graceEnd {
				o.moveTier(m, q, ms, "downgrade")
				m.inGrace = false
			}
		}
		o.evalBenefits(m, ms, true)
		m.evalMonth = mm
	}
}

func (o *Oracle) expire(m *member, t time.Time) {
	for i := range m.lots {
		l := &m.lots[i]
		if l.Remaining > 0 && !t.Before(l.ExpiresAt) {
			o.post(KindExpire, m.id, l.Remaining)
			l.Remaining = 0
		}
	}
}

func (o *Oracle) benefitCondition(m *member, b *benefit, t time.Time) bool {
	if b.minTier >= 0 && m.tier < b.minTier {
		return false
	}
	if len(b.labels) > 0 && !o.holdsLabels(m.id, b.labels, t) {
		return false
	}
	if b.birthdayMonth && !o.birthdayMonth(m, t) {
		return false
	}
	return true
}

func (o *Oracle) evalBenefits(m *member, t time.Time, monthStart bool) {
	for i := range o.prog.benefits {
		b := &o.prog.benefits[i]
		cond := o.benefitCondition(m, b, t)
		held := m.held[b.id]
		switch {
		case cond && !held:
			m.held[b.id] = true
			m.benefitLog = append(m.benefitLog, BenefitChange{Benefit: b.id, Granted: true, At: t})
			if b.coupon != "" {
				o.issueCoupon(m, b.coupon, t)
			}
		case !cond && held:
			if b.revoke == "immediate" || (b.revoke == "end_of_month" && monthStart) {
				delete(m.held, b.id)
				m.benefitLog = append(m.benefitLog, BenefitChange{Benefit: b.id, Granted: false, At: t})
			}
		}
	}
}

// ---------------------------------------------------------------- Apply

type snapshot struct {
	memberID string
	m        *member // clone, nil if the member did not exist
	accounts map[string]int64
	totals   map[string]int64
	budget   []int64
	issued   map[string]int
	ord      *order
	ordCopy  order
}

func (o *Oracle) takeSnapshot(memberID string, m *member, ord *order) *snapshot {
	s := &snapshot{memberID: memberID, accounts: map[string]int64{}, totals: copyMap(o.totals),
		budget: append([]int64(nil), o.budgetUsed...), issued: copyMap(o.couponIssued), ord: ord}
	if m != nil {
		s.m = m.clone()
	}
	for _, a := range []string{"member:" + memberID, AccountLiability, AccountRedemptions, AccountAdjustments} {
		if v, ok := o.ledger[a]; ok {
			s.accounts[a] = v
		}
	}
	if ord != nil {
		s.ordCopy = *ord
		s.ordCopy.Coupons = append([]string(nil), ord.Coupons...)
		s.ordCopy.Extras = copyMap(ord.Extras)
	}
	return s
}

func (o *Oracle) rollback(s *snapshot) {
	if s.m == nil {
		delete(o.members, s.memberID)
	} else {
		o.members[s.memberID] = s.m
	}
	for _, a := range []string{"member:" + s.memberID, AccountLiability, AccountRedemptions, AccountAdjustments} {
		if v, ok := s.accounts[a]; ok {
			o.ledger[a] = v
		} else {
			delete(o.ledger, a)
		}
	}
	o.totals, o.budgetUsed, o.couponIssued = s.totals, s.budget, s.issued
	if s.ord != nil {
		*s.ord = s.ordCopy
	}
}

func newMember(id string, t time.Time, month int) *member {
	return &member{
		id: id, clock: t, evalMonth: month,
		activity: map[int]activity{}, campDay: map[campKey]int64{}, campMonth: map[campKey]int64{},
		couponByCode: map[string]int{}, couponSeq: map[string]int{}, held: map[string]bool{},
		referrals: map[int]int{}, monthlyAwarded: map[int]bool{},
	}
}

// Apply processes one member event. It returns an error only for malformed
// input; refusals are counted (Refused) and change nothing in the
// programme. When the programme's benefits name labels, the member's labels
// follow every event (a refused or ignored one too): window ends up to the
// event's time are acted on first, each at its instant, then the
// operation, then a change of a named label the event made (see
// labelChange).
func (o *Oracle) Apply(ev *mcv1.MemberEvent) error {
	if len(o.named) == 0 || ev == nil || ev.GetEventId() == "" || ev.GetMemberId() == "" ||
		ev.GetOccurredAt() == nil || ev.GetOccurredAt().CheckValid() != nil {
		return o.apply(ev)
	}
	mid := ev.GetMemberId()
	t := o.effectiveTime(mid, ev.GetOccurredAt().AsTime())
	o.followLabels(mid, t)
	if err := o.apply(ev); err != nil {
		return err
	}
	o.foldLabelFact(ev, t)
	return nil
}

// effectiveTime is an operation's time for the member: occurred, or the
// member's last processed time if later.
func (o *Oracle) effectiveTime(memberID string, occurred time.Time) time.Time {
	if m := o.members[memberID]; m != nil && occurred.Before(m.clock) {
		return m.clock
	}
	return occurred
}

// eventCheck is a condition that makes an event unreadable (the platform
// dead-letters it), and what to call it.
type eventCheck struct {
	bad  bool
	what string
}

// refuse names the first of checks that holds, nil when none does.
func refuse(ev *mcv1.MemberEvent, checks ...eventCheck) error {
	for _, c := range checks {
		if c.bad {
			return fmt.Errorf("oracle: event %s: %s", ev.GetEventId(), c.what)
		}
	}
	return nil
}

func (o *Oracle) apply(ev *mcv1.MemberEvent) error {
	if ev == nil {
		return errors.New("oracle: nil event")
	}
	if ev.GetEventId() == "" {
		return errors.New("oracle: event without event_id")
	}
	if ev.GetMemberId() == "" {
		return fmt.Errorf("oracle: event %s without member_id", ev.GetEventId())
	}
	if ev.GetOccurredAt() == nil || ev.GetOccurredAt().CheckValid() != nil {
		return fmt.Errorf("oracle: event %s without a valid occurred_at", ev.GetEventId())
	}
	if o.seen[ev.GetEventId()] {
		return nil
	}
	mid := ev.GetMemberId()
	occurred := ev.GetOccurredAt().AsTime() // UTC; all times the oracle returns are UTC

	var ord *order
	switch p := ev.GetPayload().(type) {
	case *mcv1.MemberEvent_Transaction:
		tx := p.Transaction
		if err := refuse(ev,
			eventCheck{tx == nil, "empty transaction"},
			eventCheck{tx.GetOrderId() == "", "transaction without order_id"},
			eventCheck{tx.GetTotal() == nil, "transaction without total"},
			eventCheck{tx.GetTotal().GetAmountMinor() < 0, "negative total"},
			eventCheck{tx.GetPointsRedeemed() < 0, "negative points_redeemed"}); err != nil {
			return err
		}
		if o.orders[tx.GetOrderId()] != nil {
			o.seen[ev.GetEventId()] = true
			return nil
		}
	case *mcv1.MemberEvent_Refund:
		r := p.Refund
		if err := refuse(ev,
			eventCheck{r == nil, "empty refund"},
			eventCheck{r.GetOrderId() == "", "refund without order_id"},
			eventCheck{r.GetAmount().GetAmountMinor() < 0, "negative refund amount"}); err != nil {
			return err
		}
		ord = o.orders[r.GetOrderId()]
		if ord == nil || ord.Member != mid {
			o.seen[ev.GetEventId()] = true
			return nil
		}
	case *mcv1.MemberEvent_CheckIn, *mcv1.MemberEvent_Referral, *mcv1.MemberEvent_SignUp:
	case *mcv1.MemberEvent_Visit, *mcv1.MemberEvent_Browse, *mcv1.MemberEvent_Share:
		o.seen[ev.GetEventId()] = true
		return nil
	default:
		return fmt.Errorf("oracle: event %s without payload", ev.GetEventId())
	}

	m := o.members[mid]
	var snap *snapshot
	switch ev.GetPayload().(type) {
	case *mcv1.MemberEvent_Transaction, *mcv1.MemberEvent_Refund:
		snap = o.takeSnapshot(mid, m, ord)
	}
	var t time.Time
	if m == nil {
		t = occurred
		m = newMember(mid, t, o.monthOf(t))
		o.members[mid] = m
	} else {
		t = occurred
		if t.Before(m.clock) {
			t = m.clock
		}
		o.monthStarts(m, t)
		o.expire(m, t)
	}

	var reason string
	switch p := ev.GetPayload().(type) {
	case *mcv1.MemberEvent_Transaction:
		reason = o.purchase(m, ev, p.Transaction, t)
	case *mcv1.MemberEvent_Refund:
		reason = o.refund(m, ord, p.Refund, t)
	case *mcv1.MemberEvent_CheckIn:
		o.checkIn(m, t)
	case *mcv1.MemberEvent_Referral:
		o.referral(m, t)
	case *mcv1.MemberEvent_SignUp:
		if bd := p.SignUp.GetBirthDate(); bd != nil {
			m.birthDate = bd.AsTime().In(o.prog.loc).Format("2006-01-02")
		}
	}
	if reason != "" {
		o.rollback(snap)
		o.refused[reason]++
		o.refusedIDs[ev.GetEventId()] = reason
		return nil
	}
	o.evalBenefits(m, t, false)
	m.clock = t
	o.seen[ev.GetEventId()] = true
	return nil
}

func channelName(c mcv1.Channel) string {
	switch c {
	case mcv1.Channel_CHANNEL_POS:
		return "pos"
	case mcv1.Channel_CHANNEL_APP:
		return "app"
	case mcv1.Channel_CHANNEL_MINIPROGRAM:
		return "miniprogram"
	case mcv1.Channel_CHANNEL_WEB:
		return "web"
	case mcv1.Channel_CHANNEL_CRM:
		return "crm"
	case mcv1.Channel_CHANNEL_BACKOFFICE:
		return "backoffice"
	}
	return ""
}

func (o *Oracle) activation(m *member, ev *mcv1.MemberEvent, tx *mcv1.Transaction, t time.Time) map[string]any {
	items := make([]any, 0, len(tx.GetItems()))
	for _, it := range tx.GetItems() {
		items = append(items, map[string]any{
			"sku": it.GetSku(), "category": it.GetCategory(), "brand": it.GetBrand(),
			"quantity": int64(it.GetQuantity()), "amount": it.GetAmount().GetAmountMinor(),
		})
	}
	attrs := map[string]any{}
	if m.birthDate != "" {
		attrs["birth_date"] = m.birthDate
	}
	lt := t.In(o.prog.loc)
	return map[string]any{
		"basket": map[string]any{"total": tx.GetTotal().GetAmountMinor(), "items": items},
		"member": map[string]any{
			"tier": o.prog.tiers[m.tier].id, "labels": []any{},
			"birthday_month": o.birthdayMonth(m, t), "attributes": attrs,
		},
		"channel":      channelName(ev.GetChannel()),
		"store":        ev.GetStoreId(),
		"hour":         int64(lt.Hour()),
		"weekday":      int64(lt.Weekday()),
		"day_of_month": int64(lt.Day()),
	}
}

func (o *Oracle) campaignApplies(c *campaign, t time.Time, act func() map[string]any) bool {
	if c.from != nil && t.Before(*c.from) {
		return false
	}
	if c.until != nil && !t.Before(*c.until) {
		return false
	}
	lt := t.In(o.prog.loc)
	if c.weekdays != nil && !c.weekdays[int(lt.Weekday())] {
		return false
	}
	if c.hours != nil && !c.hours[lt.Hour()] {
		return false
	}
	if c.prg != nil {
		v, _, err := c.prg.Eval(act())
		if err != nil {
			return false
		}
		b, ok := v.Value().(bool)
		return ok && b
	}
	return true
}

// purchase implements §3. It returns a refusal reason or "".
func (o *Oracle) purchase(m *member, ev *mcv1.MemberEvent, tx *mcv1.Transaction, t time.Time) string {
	p := o.prog
	if tx.GetTotal().GetCurrency() != p.currency {
		return "currency"
	}
	total := tx.GetTotal().GetAmountMinor()
	redeem := tx.GetPointsRedeemed()
	if redeem%p.redeemPPU != 0 {
		return "redeem_not_multiple"
	}

	// 2. Coupons.
	var usedIdx []int
	var discount int64
	inBasket := map[string]bool{}
	for _, code := range tx.GetCouponCodes() {
		i, ok := m.couponByCode[code]
		if !ok || inBasket[code] {
			return "coupon_invalid"
		}
		inBasket[code] = true
		c := &m.coupons[i]
		if (c.State != CouponIssued && c.State != CouponRestored) || !couponValidAt(c, t) {
			return "coupon_invalid"
		}
		tmpl := p.coupons[c.Template]
		if total < tmpl.minSpend {
			return "coupon_min_spend"
		}
		if tmpl.amountOff != nil {
			discount += *tmpl.amountOff
		} else {
			discount += o.roundQuo(product(total, tmpl.percentBP), big.NewInt(10000))
		}
		usedIdx = append(usedIdx, i)
	}
	discount = min(discount, total)

	// 1. Redemption value and share.
	value := new(big.Int).Quo(product(redeem, 100), big.NewInt(p.redeemPPU))
	limit := floorMulDiv(total-discount, p.maxShareBP, 10000)
	if value.Cmp(big.NewInt(limit)) > 0 {
		return "redeem_over_share"
	}
	paid := total - discount - value.Int64()

	// 4. Base points.
	base := o.roundQuo(product(paid, p.rateBP, p.tiers[m.tier].multiplierBP), tenPow10)

	// 5. Campaigns.
	var act map[string]any
	lazyAct := func() map[string]any {
		if act == nil {
			act = o.activation(m, ev, tx, t)
		}
		return act
	}
	type candidate struct {
		c     *campaign
		extra int64
	}
	day, month := o.dayOf(t), o.monthOf(t)
	var cands []candidate
	for _, c := range p.campaigns {
		if !o.campaignApplies(c, t, lazyAct) {
			continue
		}
		var extra int64
		if c.multiplierBP > 0 {
			extra += o.roundQuo(product(paid, p.rateBP, c.multiplierBP-10000), tenPow10)
		}
		extra += c.bonus
		if c.capDay != nil {
			extra = min(extra, max(*c.capDay-m.campDay[campKey{c.index, day}], 0))
		}
		if c.capMonth != nil {
			extra = min(extra, max(*c.capMonth-m.campMonth[campKey{c.index, month}], 0))
		}
		if c.budget != nil {
			extra = min(extra, max(*c.budget-o.budgetUsed[c.index], 0))
		}
		if extra <= 0 {
			continue
		}
		cands = append(cands, candidate{c, extra})
	}
	if p.bestOf && len(cands) > 1 {
		best := cands[0]
		for _, cd := range cands[1:] {
			if cd.extra > best.extra {
				best = cd
			}
		}
		cands = []candidate{best}
	}
	extras := map[string]int64{}
	var sumExtras int64
	for _, cd := range cands {
		c := cd.c
		m.campDay[campKey{c.index, day}] += cd.extra
		m.campMonth[campKey{c.index, month}] += cd.extra
		o.budgetUsed[c.index] += cd.extra
		extras[c.id] = cd.extra
		sumExtras += cd.extra
		if c.coupon != "" {
			o.issueCoupon(m, c.coupon, t)
		}
	}

	// 6. Earned.
	earned := base + sumExtras
	lotIndex := -1
	if earned > 0 {
		lotIndex = o.addLot(m, earned, t, t.Add(p.returnWindow), tx.GetOrderId())
		o.post(KindEarn, m.id, earned)
	}

	// 7. Spend redeemed points; coupons become used.
	if redeem > 0 {
		if !o.spend(m, redeem, t) {
			return "insufficient_points"
		}
		o.post(KindRedeem, m.id, redeem)
	}
	var codes []string
	for _, i := range usedIdx {
		m.coupons[i].State = CouponUsed
		codes = append(codes, m.coupons[i].Code)
	}
	o.orders[tx.GetOrderId()] = &order{OrderInfo: OrderInfo{
		OrderID: tx.GetOrderId(), Member: m.id, At: t, Total: total, Paid: paid, CouponDiscount: discount,
		Redeemed: redeem, Earned: earned, Extras: extras, Coupons: codes,
	}, lotIndex: lotIndex}

	// 8. Tier activity.
	a := m.activity[month]
	a.spend += paid
	a.points += earned
	a.orders++
	m.activity[month] = a

	// 9. Upgrade, then missions.
	if q := o.highestQualifying(m, month); q > m.tier {
		o.moveTier(m, q, t, "upgrade")
	}
	if mm := p.monthly; mm != nil && m.activity[month].orders >= mm.count && !m.monthlyAwarded[month] {
		m.monthlyAwarded[month] = true
		o.earn(m, mm.bonus, t)
	}
	return ""
}

// refund implements §4. It returns a refusal reason or "".
func (o *Oracle) refund(m *member, ord *order, r *mcv1.Refund, t time.Time) string {
	if ord.FullyRefunded {
		return "refund_already_full"
	}
	if r.GetAmount() != nil && r.GetAmount().GetCurrency() != o.prog.currency {
		return "currency"
	}
	paid, a0 := ord.Paid, ord.Refunded
	var a int64
	switch {
	case paid == 0:
		a = 0
	case r.GetAmount().GetAmountMinor() == 0:
		a = paid - a0
	default:
		a = r.GetAmount().GetAmountMinor()
	}
	total := a0 + a
	if total > paid {
		return "refund_exceeds_paid"
	}
	var reverse, restore int64
	if paid == 0 {
		reverse, restore = ord.Earned, ord.Redeemed
	} else {
		reverse = floorMulDiv(ord.Earned, total, paid) - floorMulDiv(ord.Earned, a0, paid)
		restore = floorMulDiv(ord.Redeemed, total, paid) - floorMulDiv(ord.Redeemed, a0, paid)
	}
	full := total == paid

	if reverse > 0 {
		need := reverse
		if ord.lotIndex >= 0 {
			l := &m.lots[ord.lotIndex]
			x := min(need, l.Remaining)
			l.Remaining -= x
			need -= x
		}
		if need > 0 {
			for _, i := range sortedLots(m, func(i int, _ *lot) bool { return i != ord.lotIndex }) {
				if need == 0 {
					break
				}
				x := min(need, m.lots[i].Remaining)
				m.lots[i].Remaining -= x
				need -= x
			}
		}
		taken := reverse - need
		o.post(KindReverse, m.id, taken)
		ord.Reversed += taken
		ord.Unrecovered += need
	}
	if restore > 0 {
		o.addLot(m, restore, t, t, "")
		o.post(KindRestore, m.id, restore)
		ord.Restored += restore
	}
	if full {
		for _, code := range ord.Coupons {
			c := &m.coupons[m.couponByCode[code]]
			if c.State == CouponUsed && couponValidAt(c, t) {
				c.State = CouponRestored
			}
		}
	}
	mo := o.monthOf(ord.At)
	act := m.activity[mo]
	act.spend -= a
	act.points -= reverse
	if full {
		act.orders--
	}
	m.activity[mo] = act
	ord.Refunded = total
	ord.FullyRefunded = full
	return ""
}

func (o *Oracle) checkIn(m *member, t time.Time) {
	d := o.dayOf(t)
	changed := true
	switch {
	case m.hasCheckIn && d == m.lastCheckIn:
		changed = false
	case m.hasCheckIn && d == m.lastCheckIn+1:
		m.streak++
	default:
		m.streak = 1
	}
	m.hasCheckIn, m.lastCheckIn = true, d
	if s := o.prog.streak; s != nil && changed && m.streak%s.days == 0 {
		o.earn(m, s.bonus, t)
	}
}

func (o *Oracle) referral(m *member, t time.Time) {
	r := o.prog.referral
	if r == nil {
		return
	}
	mo := o.monthOf(t)
	if r.cap != nil && m.referrals[mo] >= *r.cap {
		return
	}
	m.referrals[mo]++
	o.earn(m, r.bonus, t)
}

// AdvanceTo processes month starts and expiry for a member up to t without
// an operation, as the engine's scheduled jobs do, and moves the member's
// clock to t (never backwards). Window ends of the labels benefits name up
// to t are acted on first, each at its instant (Labels, 4). Unknown
// members are ignored.
func (o *Oracle) AdvanceTo(memberID string, t time.Time) {
	t = o.effectiveTime(memberID, t.UTC())
	o.followLabels(memberID, t)
	m := o.members[memberID]
	if m == nil {
		return
	}
	if t.Before(m.clock) {
		t = m.clock
	}
	o.monthStarts(m, t)
	o.expire(m, t)
	m.clock = t
}

// AdvanceAll is AdvanceTo for every member (and every member whose labels
// the oracle follows).
func (o *Oracle) AdvanceAll(t time.Time) {
	for id := range o.members {
		o.AdvanceTo(id, t)
	}
	for id := range o.labels {
		if o.members[id] == nil {
			o.AdvanceTo(id, t)
		}
	}
}

// ---------------------------------------------------------------- reads

// Members returns the ids of all members the oracle knows, sorted.
func (o *Oracle) Members() []string {
	ids := make([]string, 0, len(o.members))
	for id := range o.members {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Balance returns the member's balance (remaining of lots not expired at
// at), available and pending points at at.
func (o *Oracle) Balance(memberID string, at time.Time) (balance, available, pending int64) {
	m := o.members[memberID]
	if m == nil {
		return 0, 0, 0
	}
	for i := range m.lots {
		l := &m.lots[i]
		if l.Remaining == 0 || !at.Before(l.ExpiresAt) {
			continue
		}
		balance += l.Remaining
		if at.Before(l.AvailableAt) {
			pending += l.Remaining
		} else {
			available += l.Remaining
		}
	}
	return balance, available, pending
}

// Lots returns the member's lots in creation order (spent and expired lots
// included, with Remaining 0).
func (o *Oracle) Lots(memberID string) []Lot {
	m := o.members[memberID]
	if m == nil {
		return nil
	}
	out := make([]Lot, len(m.lots))
	for i, l := range m.lots {
		out[i] = l.Lot
	}
	return out
}

// TierHistory returns every tier move of the member.
func (o *Oracle) TierHistory(memberID string) []TierMove {
	m := o.members[memberID]
	if m == nil {
		return nil
	}
	return append([]TierMove(nil), m.history...)
}

// Tier returns the member's current tier id (the base tier for unknown
// members).
func (o *Oracle) Tier(memberID string) string {
	if m := o.members[memberID]; m != nil {
		return o.prog.tiers[m.tier].id
	}
	return o.prog.tiers[0].id
}

// Grace reports whether the member is in grace and the month start at which
// the grace ends.
func (o *Oracle) Grace(memberID string) (endsAt time.Time, inGrace bool) {
	m := o.members[memberID]
	if m == nil || !m.inGrace {
		return time.Time{}, false
	}
	return o.monthStart(m.graceEnd), true
}

// Clock returns the member's last processed time.
func (o *Oracle) Clock(memberID string) time.Time {
	if m := o.members[memberID]; m != nil {
		return m.clock
	}
	return time.Time{}
}

// Grants returns the ids of the benefits the member holds, sorted.
func (o *Oracle) Grants(memberID string) []string {
	m := o.members[memberID]
	if m == nil {
		return nil
	}
	out := make([]string, 0, len(m.held))
	for id := range m.held {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

func couponStateAt(c *Coupon, t time.Time) string {
	if (c.State == CouponIssued || c.State == CouponRestored) && !t.Before(c.ValidUntil) {
		return CouponExpired
	}
	return c.State
}

// Coupons returns template → state → count for the member, with "expired"
// derived at the member's clock.
func (o *Oracle) Coupons(memberID string) map[string]map[string]int {
	out := map[string]map[string]int{}
	m := o.members[memberID]
	if m == nil {
		return out
	}
	for i := range m.coupons {
		c := &m.coupons[i]
		if out[c.Template] == nil {
			out[c.Template] = map[string]int{}
		}
		out[c.Template][couponStateAt(c, m.clock)]++
	}
	return out
}

// CouponList returns the member's coupons in issue order, with "expired"
// derived at the member's clock.
func (o *Oracle) CouponList(memberID string) []Coupon {
	m := o.members[memberID]
	if m == nil {
		return nil
	}
	out := make([]Coupon, len(m.coupons))
	for i := range m.coupons {
		out[i] = m.coupons[i]
		out[i].State = couponStateAt(&m.coupons[i], m.clock)
	}
	return out
}

// Order returns what the oracle recorded for an order id.
func (o *Oracle) Order(orderID string) (OrderInfo, bool) {
	ord := o.orders[orderID]
	if ord == nil {
		return OrderInfo{}, false
	}
	info := ord.OrderInfo
	info.Extras = copyMap(ord.Extras)
	info.Coupons = append([]string(nil), ord.Coupons...)
	return info, true
}

// Ledger returns the sum of entries per account: "member:<id>",
// "programme:liability", "programme:redemptions", "programme:adjustments".
func (o *Oracle) Ledger() map[string]int64 {
	out := copyMap(o.ledger)
	for _, a := range []string{AccountLiability, AccountRedemptions, AccountAdjustments} {
		out[a] += 0
	}
	return out
}

// Totals returns the points moved per transaction kind (earn, redeem,
// expire, reverse, restore).
func (o *Oracle) Totals() map[string]int64 { return copyMap(o.totals) }

// Refused returns the number of refused operations per reason.
func (o *Oracle) Refused() map[string]int { return copyMap(o.refused) }

// RefusedEvents returns the refused events' ids, each with its reason.
func (o *Oracle) RefusedEvents() map[string]string { return copyMap(o.refusedIDs) }

// ProgramVersion returns the programme's version string.
func (o *Oracle) ProgramVersion() string { return o.prog.version }
