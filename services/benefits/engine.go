package benefits

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// The engine is the pure core of the calculator: a member's State and an Op
// in, the State changed and its Effects out, exactly as docs/benefits.md
// says. It does no I/O; the store loads State and persists what changed.

// Month is a calendar month in the programme's timezone: year*12 + month-1.
type Month int

func monthOf(t time.Time, loc *time.Location) Month {
	l := t.In(loc)
	return Month(l.Year()*12 + int(l.Month()) - 1)
}

func (m Month) start(loc *time.Location) time.Time {
	return time.Date(int(m)/12, time.Month(int(m)%12+1), 1, 0, 0, 0, 0, loc)
}

// String renders a month as YYYY-MM.
func (m Month) String() string { return fmt.Sprintf("%04d-%02d", int(m)/12, int(m)%12+1) }

// dayOf is the calendar day number of t in loc.
func dayOf(t time.Time, loc *time.Location) int {
	l := t.In(loc)
	return int(time.Date(l.Year(), l.Month(), l.Day(), 0, 0, 0, 0, time.UTC).Unix() / 86400)
}

// Lot is a parcel of points.
type Lot struct {
	ID          int64 // 0 until stored
	Earned      int64
	Remaining   int64
	EarnedAt    time.Time
	AvailableAt time.Time
	ExpiresAt   time.Time
	OrderID     string
	Origin      string
	TxnKind     string // the ledger transaction that created it
	dirty       bool
	txn         uuid.UUID // the transaction that created a new lot (store only)
	// settled marks the sum of the open lots an operation cannot change
	// (they count in the balance throughout its time, and it spends no
	// more points than the lots read before them in spending order hold),
	// loaded as one (postgres.LoyaltyLoad.SettledAfter): it counts in the
	// balance and is never spent, expired or written. It is available only
	// when the lots pending at the operation's time were read
	// (AvailableFrom); otherwise what it says of availability is not
	// read. The sum of the lots pending throughout is another such lot,
	// never available.
	settled bool
}

// lotsRead says how an operation reads its member's open lots: each, every
// one one by one; otherwise the ones expiring by its time, the ones pending
// at its time (to say how many points are available), and, in the order
// points are spent, as many of the others as hold spend points, with the
// rest summed.
type lotsRead struct {
	each  bool
	spend int64
}

// lotsReadOf says how op reads its member's open lots: one by one when it
// can change an existing lot other than by spending from it — take a
// refund back, replace it — else as far as the points it may spend.
func lotsReadOf(op Op) lotsRead {
	switch op.Kind {
	case OpPurchase:
		return lotsRead{spend: max(op.RedeemPoints, 0)}
	case OpAdjust:
		return lotsRead{spend: max(-op.Points, 0)}
	case OpRedeem:
		return lotsRead{spend: max(op.Points, 0)}
	case OpCheckIn, OpReferral, OpSignUp, OpAdvance, OpIssueCoupon:
		return lotsRead{}
	}
	return lotsRead{each: true}
}

// Activity is a month's tier inputs.
type Activity struct{ Spend, Points, Orders int64 }

// Order is a purchase and what became of it.
type Order struct {
	OrderID        string
	MemberID       string
	Origin         string
	At             time.Time
	Total          int64
	Paid           int64
	CouponDiscount int64
	Redeemed       int64
	Earned         int64
	Refunded       int64
	Reversed       int64
	Restored       int64
	Unrecovered    int64
	FullyRefunded  bool
	CouponIDs      []string
	Lot            *Lot
	Extras         map[string]int64 // campaign → points
	Cause          string
	isNew, dirty   bool
}

// Coupon is an issued coupon.
type Coupon struct {
	ID         string
	Code       string
	Template   string
	State      string // issued | used | restored | expired (migrated so: never usable)
	ValidFrom  time.Time
	ValidUntil time.Time
	OrderID    string
	Origin     string
	IssuedAt   time.Time
	Cause      string
	isNew      bool
	dirty      bool
}

// Usable reports whether the coupon can be used at t.
func (c *Coupon) Usable(t time.Time) bool {
	return (c.State == "issued" || c.State == "restored") && !t.Before(c.ValidFrom) && t.Before(c.ValidUntil)
}

// Grant is a benefit a member holds.
type Grant struct {
	GrantedAt     time.Time
	Cause         string
	PendingRevoke bool
	// stored: the grant was read from PostgreSQL, with storedPending its
	// pending_revoke there; a grant made since (a new row, or one that
	// replaced a stored one) has its pending_revoke written whatever it is.
	stored, storedPending bool
}

// TierMove is one line of tier history.
type TierMove struct {
	From, To string
	At       time.Time
	Reason   string
}

// State is everything the engine needs of one member. The store loads it;
// only the months, lots, orders and coupons an operation can touch need be
// present.
type State struct {
	// staged: operations' effects were staged for writing (store only).
	staged     bool
	MemberID   string
	ChangeSeq  int64     // last outbox sequence of the member (store only)
	Last       time.Time // effective time of the last operation
	Evaluated  Month     // last month whose start was processed; 0 for a new member
	Tier       string
	TierSince  time.Time
	GraceEnd   Month // month start at which a pending downgrade happens; 0 none
	Lots       []*Lot
	Months     map[Month]*Activity
	Usage      map[string]int64 // campaign usage by "campaign|d:<day>" and "campaign|m:<month>"
	Budgets    map[string]int64 // points given by campaign, all members
	Coupons    []*Coupon
	Issued     map[string]int // coupons ever issued to the member, by template
	TplIssued  map[string]int // coupons ever issued, all members, by template
	StreakDay  int
	StreakLen  int64
	BonusMonth map[Month]bool  // purchases-in-month bonus paid
	Referrals  map[Month]int64 // referral bonuses paid
	Grants     map[string]*Grant
	BirthDate  string
	Labels     []string
	Orders     map[string]*Order
	// OthersOrders are order ids other members hold (order ids are unique
	// across members): a purchase under one of them is refused, as under
	// one of takenInBatch, those other members of the same transaction
	// recorded before (shared, read only).
	OthersOrders map[string]bool
	takenInBatch map[string]bool

	// What changed, for the store.
	MonthDelta   map[string]map[Month]Activity // by origin
	UsageDelta   map[string]int64
	BudgetDelta  map[string]int64
	TplDelta     map[string]int
	StateChanged bool
}

// NewState returns the state of a member the programme has never seen.
func NewState(member string) *State {
	s := &State{MemberID: member}
	s.init()
	return s
}

func (s *State) init() {
	if s.Months == nil {
		s.Months = map[Month]*Activity{}
	}
	for _, m := range []*map[string]int64{&s.Usage, &s.Budgets, &s.UsageDelta, &s.BudgetDelta} {
		if *m == nil {
			*m = map[string]int64{}
		}
	}
	for _, m := range []*map[string]int{&s.Issued, &s.TplIssued, &s.TplDelta} {
		if *m == nil {
			*m = map[string]int{}
		}
	}
	if s.BonusMonth == nil {
		s.BonusMonth = map[Month]bool{}
	}
	if s.Referrals == nil {
		s.Referrals = map[Month]int64{}
	}
	if s.Grants == nil {
		s.Grants = map[string]*Grant{}
	}
	if s.Orders == nil {
		s.Orders = map[string]*Order{}
	}
	if s.MonthDelta == nil {
		s.MonthDelta = map[string]map[Month]Activity{}
	}
}

// takeOrder notes that another member holds order id.
func (s *State) takeOrder(id string) {
	if s.OthersOrders == nil {
		s.OthersOrders = map[string]bool{}
	}
	s.OthersOrders[id] = true
}

// Balance returns the member's points at t: total held, available, pending.
func (s *State) Balance(t time.Time) (balance, available, pending int64) {
	for _, l := range s.Lots {
		if l.Remaining == 0 || !t.Before(l.ExpiresAt) {
			continue
		}
		balance += l.Remaining
		if t.Before(l.AvailableAt) {
			pending += l.Remaining
		} else {
			available += l.Remaining
		}
	}
	return balance, available, pending
}

// OpKind is what an operation does.
type OpKind int

// Operations.
const (
	OpPurchase OpKind = iota + 1
	OpRefund
	OpCheckIn
	OpReferral
	OpSignUp
	OpAdjust
	OpRedeem
	OpAdvance     // month starts and expiry only
	OpIssueCoupon // one coupon of Template (claims, operators)
	OpImport      // a legacy system's loyalty given to a member without any (import.go)
	OpCatchUp     // legacy rows changed since a member's import (catchup.go)
)

// Item is a basket line.
type Item struct {
	SKU, Category, Brand string
	Quantity             int64
	Amount               int64
}

// Op is one operation on a member.
type Op struct {
	Kind    OpKind
	At      time.Time
	Cause   string // event id, RPC key or job
	Origin  string // member the operation is attributed to
	Channel string // pos, app, miniprogram, web
	Store   string

	OrderID      string
	Total        int64
	Items        []Item
	CouponCodes  []string
	RedeemPoints int64

	Amount    int64        // refund amount; 0 = the rest
	Points    int64        // adjust (±) and redeem
	Reason    string       // adjust and redeem
	BirthDate string       // sign-up, YYYY-MM-DD
	Template  string       // coupon issuance
	Claim     bool         // a member's claim: the template must be claimable
	Legacy    *Legacy      // import
	Delta     *LegacyDelta // catch-up

	// Actor is the operator an operator action (an Adjust, a coupon issue)
	// is made by; Approver the second operator who approved it when it
	// needed approval (ApprovalID). With an Actor, the operation's changes
	// carry both and its effect is recorded in the operator audit.
	Actor, Approver, ApprovalID string
}

// LedgerTxn is a balanced movement the engine made.
type LedgerTxn struct {
	Kind    string
	Delta   int64 // member leg
	Counter string
	Reason  string
	Balance int64 // member balance after
}

// Effects is what an operation did.
type Effects struct {
	At        time.Time
	Ledger    []LedgerTxn
	TierMoves []TierMove
	Granted   []string
	Revoked   []string
	Coupons   []*Coupon // issued or changed
	Issued    []*Coupon // issued
	Order     *Order
	Duplicate bool // the order was applied before; nothing changed
	NoOp      bool
	Trace     []*mcv1.RuleTrace
	// Purchase figures, for Quote and Commit: Earned is the order's own
	// points, MissionBonus what missions paid for it on top.
	Earned, Redeemed, RedemptionValue, CouponDiscount, Paid int64
	MissionBonus                                            int64
	CouponsUsed                                             []string
}

// Refusal is a request the programme refuses; nothing changed.
type Refusal struct {
	Reason    string
	Available int64 // set for overspends
}

func (r *Refusal) Error() string { return r.Reason }

// ErrOrderTaken is returned for a purchase whose order id another
// member's order holds: order ids are unique across members, so the order
// cannot be recorded (AlreadyExists over gRPC; a stage dead-letters the
// event, a data error retrying cannot help).
var ErrOrderTaken = errors.New("is another member's order (order ids are unique across members)")

// ErrRefused is matched by every Refusal (FailedPrecondition).
var ErrRefused = errors.New("refused by the loyalty programme")

// Is makes a Refusal match ErrRefused.
func (r *Refusal) Is(target error) bool { return target == ErrRefused }

// LiabilityAccount is the counter-account of every movement of a member's
// points (transfers between members aside): the programme owes exactly the
// sum of all balances.
const LiabilityAccount = "programme:liability"

// Engine applies operations under one programme.
type Engine struct{ P *Program }

// mulDiv returns R(a*b*c / d) for non-negative a, b, c and positive d.
func (e Engine) mulDiv(a, b, c, d int64) int64 {
	n := new(big.Int).Mul(big.NewInt(a), big.NewInt(b))
	n.Mul(n, big.NewInt(c))
	q, r := new(big.Int).QuoRem(n, big.NewInt(d), new(big.Int))
	switch e.P.Rounding {
	case "ceil":
		if r.Sign() > 0 {
			q.Add(q, big.NewInt(1))
		}
	case "round":
		if new(big.Int).Mul(r, big.NewInt(2)).Cmp(big.NewInt(d)) >= 0 {
			q.Add(q, big.NewInt(1))
		}
	}
	return q.Int64()
}

// floorMulDiv returns floor(a*b/d).
func floorMulDiv(a, b, d int64) int64 {
	n := new(big.Int).Mul(big.NewInt(a), big.NewInt(b))
	return n.Quo(n, big.NewInt(d)).Int64()
}

// Apply runs op on s. On a Refusal (or any error) s must be discarded: the
// store never persists it, so nothing changes.
func (e Engine) Apply(s *State, op Op) (*Effects, error) {
	if err := e.checkOp(op); err != nil {
		return nil, err
	}
	s.init()
	p := e.P
	t := op.At
	if t.Before(s.Last) {
		t = s.Last
	}
	fx := &Effects{At: t}
	if op.Origin == "" {
		op.Origin = s.MemberID
	}
	if op.Kind == OpPurchase {
		if o := s.Orders[op.OrderID]; o != nil {
			fx.Duplicate, fx.Order = true, o
			return fx, nil
		}
		if s.OthersOrders[op.OrderID] || s.takenInBatch[op.OrderID] {
			return nil, fmt.Errorf("order %q %w", op.OrderID, ErrOrderTaken)
		}
	}
	if op.Kind == OpRefund && s.Orders[op.OrderID] == nil {
		fx.NoOp = true
		return fx, nil
	}
	if op.Kind == OpImport && s.hasLoyalty() {
		return nil, fmt.Errorf("member %s: %w", s.MemberID, ErrAlreadyImported)
	}
	s.StateChanged = true
	s.Last = t
	cur := monthOf(t, p.Location)
	if s.Evaluated == 0 {
		s.Evaluated = cur
		if s.Tier == "" {
			s.Tier, s.TierSince = p.Tiers[0].ID, t
		}
	}
	for m := s.Evaluated + 1; m <= cur; m++ {
		at := m.start(p.Location)
		e.monthStart(s, fx, m, at, op)
		e.benefits(s, fx, at, true, op)
		s.Evaluated = m
	}
	e.expire(s, fx, t, op)

	var err error
	switch op.Kind {
	case OpPurchase:
		err = e.purchase(s, fx, t, op)
	case OpRefund:
		err = e.refund(s, fx, t, op)
	case OpCheckIn:
		e.checkIn(s, fx, t, op)
	case OpReferral:
		if m := p.Missions; m.ReferralBonus > 0 && (m.ReferralCapMonth == 0 || s.Referrals[cur] < m.ReferralCapMonth) {
			s.Referrals[cur]++
			e.addLot(s, fx, t, op, m.ReferralBonus, "earn", "referral reward", false, "")
		}
	case OpSignUp:
		if op.BirthDate != "" {
			s.BirthDate = op.BirthDate
		}
	case OpAdjust:
		if op.Points > 0 {
			e.addLot(s, fx, t, op, op.Points, "adjust", op.Reason, false, "")
		} else if op.Points < 0 {
			err = e.spend(s, fx, t, op, -op.Points, "adjust", op.Reason)
		}
	case OpRedeem:
		err = e.spend(s, fx, t, op, op.Points, "redeem", op.Reason)
	case OpAdvance:
	case OpImport:
		err = e.importLegacy(s, fx, t, op)
	case OpCatchUp:
		err = e.catchUpLegacy(s, fx, t, op)
	case OpIssueCoupon:
		tpl := p.Coupons[op.Template]
		switch {
		case tpl == nil:
			err = &Refusal{Reason: fmt.Sprintf("unknown coupon template %q", op.Template)}
		case op.Claim && !tpl.Claimable:
			err = &Refusal{Reason: fmt.Sprintf("coupon %s cannot be claimed; it is issued by campaigns, benefits or operators", op.Template)}
		default:
			_, err = e.issueCoupon(s, fx, t, op, op.Template, op.Reason)
		}
	}
	if err != nil {
		return nil, err
	}
	e.benefits(s, fx, t, false, op)
	return fx, nil
}

// monthStart evaluates tiers at the start of month m.
func (e Engine) monthStart(s *State, fx *Effects, m Month, at time.Time, op Op) {
	q := e.qualifying(s, m)
	cur := e.P.tierIndex(s.Tier)
	switch {
	case q > cur:
		e.move(s, fx, q, at, "upgrade")
		s.GraceEnd = 0
	case q == cur:
		s.GraceEnd = 0
	default:
		if s.GraceEnd == 0 {
			s.GraceEnd = m + Month(e.P.GraceMonths)
		}
		if m >= s.GraceEnd {
			e.move(s, fx, q, at, "downgrade")
			s.GraceEnd = 0
		}
	}
}

func (e Engine) move(s *State, fx *Effects, to int, at time.Time, reason string) {
	id := e.P.Tiers[to].ID
	fx.TierMoves = append(fx.TierMoves, TierMove{From: s.Tier, To: id, At: at, Reason: reason})
	s.Tier, s.TierSince = id, at
}

// qualifying is the highest tier whose criteria hold with evaluation month m.
func (e Engine) qualifying(s *State, m Month) int {
	best := 0
	for i := 1; i < len(e.P.Tiers); i++ {
		for _, c := range e.P.Tiers[i].Criteria {
			if e.meets(s, c, m) {
				best = i
				break
			}
		}
	}
	return best
}

func (e Engine) window(s *State, m Month) Activity {
	var a Activity
	for k := m - 11; k <= m; k++ {
		if x := s.Months[k]; x != nil {
			a.Spend += x.Spend
			a.Points += x.Points
			a.Orders += x.Orders
		}
	}
	return a
}

func (e Engine) meets(s *State, c Criterion, m Month) bool {
	switch {
	case c.EachMonth != nil:
		for k := m - Month(c.EachMonth.Months); k < m; k++ {
			x := s.Months[k]
			if x == nil || x.Spend < c.EachMonth.Min {
				return false
			}
		}
		return true
	case c.Spend12m > 0:
		return e.window(s, m).Spend >= c.Spend12m
	case c.Points12m > 0:
		return e.window(s, m).Points >= c.Points12m
	case c.Orders12m > 0:
		return e.window(s, m).Orders >= c.Orders12m
	}
	return false
}

// expire ends lots whose time has come.
func (e Engine) expire(s *State, fx *Effects, t time.Time, op Op) {
	for _, l := range s.Lots {
		if l.Remaining > 0 && !t.Before(l.ExpiresAt) {
			p := l.Remaining
			l.Remaining, l.dirty = 0, true
			e.ledger(s, fx, LedgerTxn{Kind: "expire", Delta: -p, Counter: LiabilityAccount,
				Reason: fmt.Sprintf("points earned %s expired", l.EarnedAt.In(e.P.Location).Format("2006-01-02"))}, t)
		}
	}
}

func (e Engine) ledger(s *State, fx *Effects, txn LedgerTxn, t time.Time) {
	txn.Balance, _, _ = s.Balance(t)
	fx.Ledger = append(fx.Ledger, txn)
}

// addLot credits points as a new lot; purchase lots are pending for the
// return window.
func (e Engine) addLot(s *State, fx *Effects, t time.Time, op Op, points int64, kind, reason string, purchase bool, orderID string) *Lot {
	avail := t
	if purchase {
		avail = t.Add(e.P.ReturnWindow)
	}
	l := &Lot{Earned: points, Remaining: points, EarnedAt: t, AvailableAt: avail, ExpiresAt: t.Add(e.P.PointsLifetime),
		OrderID: orderID, Origin: op.Origin, TxnKind: kind, dirty: true}
	s.Lots = append(s.Lots, l)
	e.ledger(s, fx, LedgerTxn{Kind: kind, Delta: points, Counter: LiabilityAccount, Reason: reason}, t)
	return l
}

// spendOrder is the order lots are spent in: earliest expiry, then creation.
func spendOrder(lots []*Lot) []*Lot {
	out := append([]*Lot(nil), lots...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].ExpiresAt.Before(out[j].ExpiresAt) })
	return out
}

// spend takes p available points, refusing when there are fewer.
func (e Engine) spend(s *State, fx *Effects, t time.Time, op Op, p int64, kind, reason string) error {
	if p <= 0 {
		return &Refusal{Reason: "points to spend must be positive"}
	}
	_, avail, _ := s.Balance(t)
	if avail < p {
		return &Refusal{Reason: fmt.Sprintf("only %d points are available (%d requested)", avail, p), Available: avail}
	}
	left := p
	for _, l := range spendOrder(s.Lots) {
		if left == 0 {
			break
		}
		if l.Remaining == 0 || t.Before(l.AvailableAt) || !t.Before(l.ExpiresAt) {
			continue
		}
		take := min(left, l.Remaining)
		l.Remaining -= take
		l.dirty = true
		left -= take
	}
	e.ledger(s, fx, LedgerTxn{Kind: kind, Delta: -p, Counter: LiabilityAccount, Reason: reason}, t)
	return nil
}

func (s *State) couponByCode(code string) *Coupon {
	for _, c := range s.Coupons {
		if c.Code == code {
			return c
		}
	}
	return nil
}

// CouponCode is the code of a member's n-th coupon of a template (n counts
// from 1 in issue order): a pure function, so a retried issuance produces the
// same code. The whole member id keeps codes unique across members.
func CouponCode(template, member string, n int) string {
	return template + "-" + member + "-" + strconv.Itoa(n)
}

// issueCoupon issues one coupon of a template when the limits allow.
func (e Engine) issueCoupon(s *State, fx *Effects, t time.Time, op Op, template, why string) (*Coupon, error) {
	tpl := e.P.Coupons[template]
	if tpl == nil {
		return nil, &Refusal{Reason: fmt.Sprintf("unknown coupon template %q", template)}
	}
	if s.Issued[template] >= tpl.PerMemberLimit {
		return nil, &Refusal{Reason: fmt.Sprintf("coupon %s: the member already has %d (limit %d)", template, s.Issued[template], tpl.PerMemberLimit)}
	}
	if tpl.TotalLimit > 0 && s.TplIssued[template] >= tpl.TotalLimit {
		return nil, &Refusal{Reason: fmt.Sprintf("coupon %s: all %d have been issued", template, tpl.TotalLimit)}
	}
	s.Issued[template]++
	if tpl.TotalLimit > 0 { // only limited templates keep a shared count
		s.TplIssued[template]++
		s.TplDelta[template]++
	}
	c := &Coupon{Code: CouponCode(template, s.MemberID, s.Issued[template]), Template: template, State: "issued",
		ValidFrom: t, ValidUntil: t.AddDate(0, 0, tpl.ValidDays), Origin: cmp.Or(op.Origin, s.MemberID), IssuedAt: t, Cause: why, isNew: true, dirty: true}
	s.Coupons = append(s.Coupons, c)
	fx.Coupons = append(fx.Coupons, c)
	fx.Issued = append(fx.Issued, c)
	return c, nil
}

func (e Engine) purchase(s *State, fx *Effects, t time.Time, op Op) error {
	p := e.P
	if op.Total < 0 {
		return &Refusal{Reason: "basket total must not be negative"}
	}
	// Coupons.
	var discount int64
	var used []*Coupon
	for _, code := range op.CouponCodes {
		c := s.couponByCode(code)
		switch {
		case c == nil:
			return &Refusal{Reason: fmt.Sprintf("coupon %s does not belong to this member", code)}
		case c.State == "used":
			return &Refusal{Reason: fmt.Sprintf("coupon %s was already used (order %s)", code, c.OrderID)}
		case c.State == "expired":
			return &Refusal{Reason: fmt.Sprintf("coupon %s has expired", code)}
		case !c.Usable(t):
			return &Refusal{Reason: fmt.Sprintf("coupon %s is not valid now (valid %s to %s)", code,
				c.ValidFrom.In(p.Location).Format(time.RFC3339), c.ValidUntil.In(p.Location).Format(time.RFC3339))}
		}
		for _, u := range used {
			if u == c {
				return &Refusal{Reason: fmt.Sprintf("coupon %s is given twice", code)}
			}
		}
		tpl := p.Coupons[c.Template]
		if tpl == nil {
			return &Refusal{Reason: fmt.Sprintf("coupon %s: template %s is no longer in the programme", code, c.Template)}
		}
		if op.Total < tpl.MinSpend {
			return &Refusal{Reason: fmt.Sprintf("coupon %s needs a basket of at least %d (basket %d)", code, tpl.MinSpend, op.Total)}
		}
		d := tpl.AmountOff
		if tpl.PercentOffBP > 0 {
			d = e.mulDiv(op.Total, tpl.PercentOffBP, 1, 10000)
		}
		d = min(d, op.Total-discount)
		discount += d
		used = append(used, c)
		fx.Trace = append(fx.Trace, &mcv1.RuleTrace{RuleId: "coupon:" + c.Template, RuleVersion: p.Version, Applied: true,
			Explanation: fmt.Sprintf("coupon %s takes %d off", code, d)})
	}
	// Redemption.
	var value int64
	if op.RedeemPoints > 0 {
		var maxValue int64
		var whole bool
		value, maxValue, whole = p.redeemValue(op.RedeemPoints, op.Total-discount)
		if !whole {
			return &Refusal{Reason: fmt.Sprintf("points to redeem must be a multiple of %d", p.RedeemPerUnit)}
		}
		if value > maxValue {
			return &Refusal{Reason: fmt.Sprintf("points may pay at most %d of this basket (%d requested)", maxValue, value)}
		}
		if _, avail, _ := s.Balance(t); avail < op.RedeemPoints {
			return &Refusal{Reason: fmt.Sprintf("only %d points are available (%d requested)", avail, op.RedeemPoints), Available: avail}
		}
	}
	paid := op.Total - discount - value
	tier := p.Tiers[p.tierIndex(s.Tier)]
	base := e.mulDiv(paid, p.RateBP, tier.MultiplierBP, 1e10)
	fx.Trace = append(fx.Trace, &mcv1.RuleTrace{RuleId: "base", RuleVersion: p.Version, Applied: true, Points: base,
		Explanation: fmt.Sprintf("%s per currency unit on %d paid × tier %s %s", bpString(p.RateBP), paid, tier.ID, bpString(tier.MultiplierBP))})

	extras := map[string]int64{}
	var earned int64 = base
	type cand struct {
		c     *Campaign
		extra int64
	}
	var cands []cand
	vars := e.celVars(s, t, op)
	day, mon := dayOf(t, p.Location), monthOf(t, p.Location)
	for _, c := range p.Campaigns {
		if why := e.scheduled(c, t); why != "" {
			fx.Trace = append(fx.Trace, &mcv1.RuleTrace{RuleId: "campaign:" + c.ID, RuleVersion: p.Version, Explanation: why})
			continue
		}
		if c.program != nil {
			out, _, err := c.program.Eval(vars)
			if err != nil || out.Value() != true {
				why := "condition is false: " + c.Condition
				if err != nil {
					why = "condition could not be evaluated: " + err.Error()
				}
				fx.Trace = append(fx.Trace, &mcv1.RuleTrace{RuleId: "campaign:" + c.ID, RuleVersion: p.Version, Explanation: why})
				continue
			}
		}
		var extra int64
		if c.MultiplierBP > 0 {
			extra = e.mulDiv(paid, p.RateBP, c.MultiplierBP-10000, 1e10)
		}
		extra += c.Bonus
		capped, capWhy := extra, ""
		limit := func(cap, used int64, what string) {
			if cap > 0 && cap-used < capped {
				capped, capWhy = max(0, cap-used), what
			}
		}
		limit(c.CapDay, s.Usage[usageKey(c.ID, "d", day)], "daily cap per member")
		limit(c.CapMonth, s.Usage[usageKey(c.ID, "m", int(mon))], "monthly cap per member")
		limit(c.Budget, s.Budgets[c.ID], "campaign budget")
		if capped <= 0 {
			fx.Trace = append(fx.Trace, &mcv1.RuleTrace{RuleId: "campaign:" + c.ID, RuleVersion: p.Version,
				Explanation: fmt.Sprintf("would give %d points but its %s is used up", extra, capWhy)})
			continue
		}
		cands = append(cands, cand{c, capped})
	}
	counting := cands
	if p.BestOf && len(cands) > 1 {
		best := 0
		for i, c := range cands {
			if c.extra > cands[best].extra {
				best = i
			}
		}
		for i, c := range cands {
			if i != best {
				fx.Trace = append(fx.Trace, &mcv1.RuleTrace{RuleId: "campaign:" + c.c.ID, RuleVersion: p.Version,
					Explanation: fmt.Sprintf("would give %d points; best-of stacking chose %s", c.extra, cands[best].c.ID)})
			}
		}
		counting = []cand{cands[best]}
	}
	for _, c := range counting {
		earned += c.extra
		extras[c.c.ID] = c.extra
		for _, k := range []string{usageKey(c.c.ID, "d", day), usageKey(c.c.ID, "m", int(mon))} {
			s.Usage[k] += c.extra
			s.UsageDelta[k] += c.extra
		}
		if c.c.Budget > 0 { // only budgets are shared across members
			s.Budgets[c.c.ID] += c.extra
			s.BudgetDelta[c.c.ID] += c.extra
		}
		fx.Trace = append(fx.Trace, &mcv1.RuleTrace{RuleId: "campaign:" + c.c.ID, RuleVersion: p.Version, Applied: true, Points: c.extra,
			Explanation: c.c.Name})
		if c.c.Benefit != "" {
			e.grantByCampaign(s, fx, t, op, c.c)
		}
		if c.c.Coupon != "" {
			if cp, err := e.issueCoupon(s, fx, t, op, c.c.Coupon, "campaign "+c.c.ID); err != nil {
				fx.Trace = append(fx.Trace, &mcv1.RuleTrace{RuleId: "coupon:" + c.c.Coupon, RuleVersion: p.Version, Explanation: err.Error()})
			} else {
				fx.Trace = append(fx.Trace, &mcv1.RuleTrace{RuleId: "coupon:" + c.c.Coupon, RuleVersion: p.Version, Applied: true,
					Explanation: "issued " + cp.Code})
			}
		}
	}

	order := &Order{OrderID: op.OrderID, MemberID: s.MemberID, Origin: op.Origin, At: t, Total: op.Total, Paid: paid,
		CouponDiscount: discount, Redeemed: op.RedeemPoints, Earned: earned, Extras: extras, Cause: op.Cause, isNew: true, dirty: true}
	if earned > 0 {
		order.Lot = e.addLot(s, fx, t, op, earned, "earn", "purchase "+op.OrderID, true, op.OrderID)
	}
	if op.RedeemPoints > 0 {
		if err := e.spend(s, fx, t, op, op.RedeemPoints, "redeem", "points paid part of order "+op.OrderID); err != nil {
			return err
		}
	}
	for _, c := range used {
		c.State, c.OrderID, c.dirty = "used", op.OrderID, true
		order.CouponIDs = append(order.CouponIDs, c.Code)
		fx.Coupons = append(fx.Coupons, c)
		fx.CouponsUsed = append(fx.CouponsUsed, c.Code)
	}
	s.Orders[op.OrderID] = order
	fx.Order = order
	fx.Earned, fx.Redeemed, fx.RedemptionValue, fx.CouponDiscount, fx.Paid = earned, op.RedeemPoints, value, discount, paid
	e.activity(s, op.Origin, monthOf(t, p.Location), Activity{Spend: paid, Points: earned, Orders: 1})

	if q := e.qualifying(s, monthOf(t, p.Location)); q > p.tierIndex(s.Tier) {
		e.move(s, fx, q, t, "upgrade")
		s.GraceEnd = 0
	}
	e.purchaseMission(s, fx, t, op)
	return nil
}

func bpString(v int64) string { return fmt.Sprintf("%d.%04d", v/10000, v%10000) }

func usageKey(campaign, period string, n int) string {
	return fmt.Sprintf("%s|%s:%d", campaign, period, n)
}

func (e Engine) activity(s *State, origin string, m Month, d Activity) {
	a := s.Months[m]
	if a == nil {
		a = &Activity{}
		s.Months[m] = a
	}
	a.Spend += d.Spend
	a.Points += d.Points
	a.Orders += d.Orders
	byOrigin := s.MonthDelta[origin]
	if byOrigin == nil {
		byOrigin = map[Month]Activity{}
		s.MonthDelta[origin] = byOrigin
	}
	x := byOrigin[m]
	x.Spend += d.Spend
	x.Points += d.Points
	x.Orders += d.Orders
	byOrigin[m] = x
}

func (e Engine) purchaseMission(s *State, fx *Effects, t time.Time, op Op) {
	mi := e.P.Missions
	m := monthOf(t, e.P.Location)
	if mi.PurchasesBonus > 0 && !s.BonusMonth[m] && s.Months[m] != nil && s.Months[m].Orders >= mi.PurchasesCount {
		s.BonusMonth[m] = true
		why := fmt.Sprintf("%d purchases in %s", mi.PurchasesCount, m)
		e.addLot(s, fx, t, op, mi.PurchasesBonus, "earn", why, false, "")
		fx.MissionBonus += mi.PurchasesBonus
		fx.Trace = append(fx.Trace, &mcv1.RuleTrace{RuleId: "mission:purchases_in_month", RuleVersion: e.P.Version, Applied: true,
			Points: mi.PurchasesBonus, Explanation: why})
	}
}

func (e Engine) checkIn(s *State, fx *Effects, t time.Time, op Op) {
	d := dayOf(t, e.P.Location)
	switch {
	case s.StreakDay == d:
		return
	case s.StreakDay == d-1:
		s.StreakLen++
	default:
		s.StreakLen = 1
	}
	s.StreakDay = d
	if mi := e.P.Missions; mi.StreakDays > 0 && mi.StreakBonus > 0 && s.StreakLen%mi.StreakDays == 0 {
		e.addLot(s, fx, t, op, mi.StreakBonus, "earn", fmt.Sprintf("%d-day check-in streak", s.StreakLen), false, "")
	}
}

func (e Engine) refund(s *State, fx *Effects, t time.Time, op Op) error {
	o := s.Orders[op.OrderID]
	if o.FullyRefunded {
		return &Refusal{Reason: fmt.Sprintf("order %s is already fully refunded", o.OrderID)}
	}
	a := op.Amount
	if a == 0 || o.Paid == 0 {
		// Unset means the rest; an order paid entirely with points and
		// coupons can only be refunded whole.
		a = o.Paid - o.Refunded
	}
	if a < 0 || o.Refunded+a > o.Paid {
		return &Refusal{Reason: fmt.Sprintf("order %s: %d refunded of %d paid; %d more cannot be refunded", o.OrderID, o.Refunded, o.Paid, a)}
	}
	a0, a1 := o.Refunded, o.Refunded+a
	var reverse, restore int64
	if o.Paid > 0 {
		reverse = floorMulDiv(o.Earned, a1, o.Paid) - floorMulDiv(o.Earned, a0, o.Paid)
		restore = floorMulDiv(o.Redeemed, a1, o.Paid) - floorMulDiv(o.Redeemed, a0, o.Paid)
	} else {
		reverse, restore = o.Earned-o.Reversed, o.Redeemed-o.Restored
	}
	full := a1 == o.Paid
	if reverse > 0 {
		left := reverse
		if o.Lot != nil && o.Lot.Remaining > 0 {
			take := min(left, o.Lot.Remaining)
			o.Lot.Remaining -= take
			o.Lot.dirty = true
			left -= take
		}
		for _, l := range spendOrder(s.Lots) {
			if left == 0 {
				break
			}
			if l.Remaining == 0 || !t.Before(l.ExpiresAt) {
				continue
			}
			take := min(left, l.Remaining)
			l.Remaining -= take
			l.dirty = true
			left -= take
		}
		taken := reverse - left
		o.Unrecovered += left
		if taken > 0 {
			e.ledger(s, fx, LedgerTxn{Kind: "reverse", Delta: -taken, Counter: LiabilityAccount,
				Reason: fmt.Sprintf("refund of %d on order %s", a, o.OrderID)}, t)
		}
	}
	if restore > 0 {
		e.addLot(s, fx, t, op, restore, "restore", fmt.Sprintf("refund of %d on order %s returns redeemed points", a, o.OrderID), false, "")
	}
	o.Refunded, o.Reversed, o.Restored, o.FullyRefunded, o.dirty = a1, o.Reversed+reverse, o.Restored+restore, full, true
	if full {
		for _, code := range o.CouponIDs {
			if c := s.couponByCode(code); c != nil && c.State == "used" && t.Before(c.ValidUntil) {
				c.State, c.dirty = "restored", true
				fx.Coupons = append(fx.Coupons, c)
			}
		}
	}
	d := Activity{Spend: -a, Points: -reverse}
	if full {
		d.Orders = -1
	}
	e.activity(s, o.Origin, monthOf(o.At, e.P.Location), d)
	fx.Order = o
	return nil
}

// campaignCause marks a grant made by a campaign's benefit effect.
const campaignCause = "campaign:"

// grantByCampaign gives the member a catalogue benefit as a campaign's
// effect, if not held. Such a grant lasts until the next month start, when it
// is revoked unless the benefit's own condition holds then (§5).
func (e Engine) grantByCampaign(s *State, fx *Effects, t time.Time, op Op, c *Campaign) {
	p := e.P
	if s.Grants[c.Benefit] != nil {
		fx.Trace = append(fx.Trace, &mcv1.RuleTrace{RuleId: "benefit:" + c.Benefit, RuleVersion: p.Version, Explanation: "already held"})
		return
	}
	s.Grants[c.Benefit] = &Grant{GrantedAt: t, Cause: campaignCause + c.ID + ":" + op.Cause}
	fx.Granted = append(fx.Granted, c.Benefit)
	fx.Trace = append(fx.Trace, &mcv1.RuleTrace{RuleId: "benefit:" + c.Benefit, RuleVersion: p.Version, Applied: true,
		Explanation: "granted by campaign " + c.ID + " until the next month start"})
	for _, b := range p.Benefits {
		if b.ID == c.Benefit && b.Coupon != "" {
			_, _ = e.issueCoupon(s, fx, t, op, b.Coupon, "benefit "+b.ID)
		}
	}
}

// benefits grants and revokes catalogue benefits at τ.
func (e Engine) benefits(s *State, fx *Effects, at time.Time, monthStart bool, op Op) {
	for _, b := range e.P.Benefits {
		ok := e.holds(s, b, at)
		g := s.Grants[b.ID]
		switch {
		case ok && g == nil:
			s.Grants[b.ID] = &Grant{GrantedAt: at, Cause: op.Cause}
			fx.Granted = append(fx.Granted, b.ID)
			if b.Coupon != "" {
				_, _ = e.issueCoupon(s, fx, at, op, b.Coupon, "benefit "+b.ID)
			}
		case ok && g != nil:
			g.PendingRevoke = false
		case !ok && g != nil:
			switch {
			case strings.HasPrefix(g.Cause, campaignCause) && !monthStart:
				g.PendingRevoke = true // a campaign's grant lasts the month
			case strings.HasPrefix(g.Cause, campaignCause):
				delete(s.Grants, b.ID)
				fx.Revoked = append(fx.Revoked, b.ID)
			case b.Revoke == "never":
			case b.Revoke == "end_of_month" && !monthStart:
				g.PendingRevoke = true
			default:
				delete(s.Grants, b.ID)
				fx.Revoked = append(fx.Revoked, b.ID)
			}
		}
	}
}

func (e Engine) holds(s *State, b *BenefitDef, at time.Time) bool {
	if b.MinTier != "" && e.P.tierIndex(s.Tier) < e.P.tierIndex(b.MinTier) {
		return false
	}
	for _, l := range b.Labels {
		found := false
		for _, have := range s.Labels {
			if have == l {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	if b.BirthdayMonth && !e.birthdayMonth(s, at) {
		return false
	}
	return true
}

func (e Engine) birthdayMonth(s *State, at time.Time) bool {
	if len(s.BirthDate) < 7 {
		return false
	}
	bd, err := time.Parse("2006-01-02", s.BirthDate)
	if err != nil {
		return false
	}
	return bd.Month() == at.In(e.P.Location).Month()
}

// scheduled says why a campaign is outside its schedule at t ("" if inside).
func (e Engine) scheduled(c *Campaign, t time.Time) string {
	l := t.In(e.P.Location)
	switch {
	case !c.From.IsZero() && t.Before(c.From):
		return "starts " + c.From.Format("2006-01-02")
	case !c.Until.IsZero() && !t.Before(c.Until):
		return "ended " + c.Until.Format("2006-01-02")
	case c.Weekdays != nil && !c.Weekdays[int(l.Weekday())]:
		return "not on " + l.Weekday().String()
	case c.Hours != nil && !c.Hours[l.Hour()]:
		return fmt.Sprintf("not at %02d:00", l.Hour())
	}
	return ""
}

func (e Engine) celVars(s *State, t time.Time, op Op) map[string]any {
	items := make([]any, len(op.Items))
	for i, it := range op.Items {
		items[i] = map[string]any{"sku": it.SKU, "category": it.Category, "brand": it.Brand, "quantity": it.Quantity, "amount": it.Amount}
	}
	labels := make([]any, len(s.Labels))
	for i, l := range s.Labels {
		labels[i] = l
	}
	l := t.In(e.P.Location)
	return map[string]any{
		"basket":       map[string]any{"total": op.Total, "items": items},
		"member":       map[string]any{"tier": s.Tier, "labels": labels, "birthday_month": e.birthdayMonth(s, t), "attributes": map[string]any{"birth_date": s.BirthDate}},
		"channel":      op.Channel,
		"store":        op.Store,
		"hour":         int64(l.Hour()),
		"weekday":      int64(l.Weekday()),
		"day_of_month": int64(l.Day()),
	}
}

// Changes renders effects as the member changes channels receive.
func (fx *Effects) Changes(p *Program) []*mcv1.MemberChange {
	var out []*mcv1.MemberChange
	at := timestamppb.New(fx.At)
	for _, l := range fx.Ledger {
		out = append(out, &mcv1.MemberChange{OccurredAt: at, Change: &mcv1.MemberChange_PointsChanged{PointsChanged: &mcv1.PointsChanged{
			Kind: kindToProto(l.Kind), Delta: l.Delta, Balance: l.Balance, Reason: l.Reason}}})
	}
	for _, m := range fx.TierMoves {
		out = append(out, &mcv1.MemberChange{OccurredAt: timestamppb.New(m.At), Change: &mcv1.MemberChange_TierChanged{TierChanged: &mcv1.TierChanged{
			FromTier: m.From, ToTier: m.To, Reason: m.Reason}}})
	}
	for _, b := range fx.Granted {
		out = append(out, &mcv1.MemberChange{OccurredAt: at, Change: &mcv1.MemberChange_BenefitChanged{BenefitChanged: &mcv1.BenefitChanged{BenefitId: b, Granted: true}}})
	}
	for _, b := range fx.Revoked {
		out = append(out, &mcv1.MemberChange{OccurredAt: at, Change: &mcv1.MemberChange_BenefitChanged{BenefitChanged: &mcv1.BenefitChanged{BenefitId: b}}})
	}
	for _, c := range fx.Coupons {
		out = append(out, &mcv1.MemberChange{OccurredAt: at, Change: &mcv1.MemberChange_CouponChanged{CouponChanged: &mcv1.CouponChanged{
			CouponId: c.Code, TemplateId: c.Template, State: couponStateToProto(c)}}})
	}
	return out
}

func kindToProto(k string) mcv1.LedgerEntryKind {
	switch k {
	case "earn":
		return mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_EARN
	case "redeem":
		return mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_REDEEM
	case "expire":
		return mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_EXPIRE
	case "adjust":
		return mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_ADJUST
	case "transfer":
		return mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_TRANSFER
	case "reverse", "restore":
		return mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_REVERSE
	case "import":
		return mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_IMPORT
	}
	return mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_UNSPECIFIED
}

func couponStateToProto(c *Coupon) mcv1.CouponState {
	switch c.State {
	case "issued":
		return mcv1.CouponState_COUPON_STATE_ISSUED
	case "used":
		return mcv1.CouponState_COUPON_STATE_USED
	case "restored":
		return mcv1.CouponState_COUPON_STATE_RESTORED
	case "expired":
		return mcv1.CouponState_COUPON_STATE_EXPIRED
	}
	return mcv1.CouponState_COUPON_STATE_UNSPECIFIED
}

// Recompute re-derives the member's tier from its tier inputs (after an
// unmerge took some of them away, or a merge added some): the ladder is
// replayed over the last 13 months from the base tier, with month-start
// evaluation and grace as in §5 and each month's purchases counted at once.
// A different result is recorded as a "recomputed" move at t; benefits are
// evaluated at t.
func (e Engine) Recompute(s *State, t time.Time, cause string) *Effects {
	s.init()
	p := e.P
	if t.Before(s.Last) {
		t = s.Last
	}
	fx := &Effects{At: t}
	cur := monthOf(t, p.Location)
	saved := s.Months
	tier, grace := 0, Month(0)
	for m := cur - 13; m <= cur; m++ {
		// At the start of m, month m is still empty.
		view := map[Month]*Activity{}
		for k, v := range saved {
			if k < m {
				view[k] = v
			}
		}
		s.Months = view
		q := e.qualifying(s, m)
		switch {
		case q > tier:
			tier, grace = q, 0
		case q == tier:
			grace = 0
		default:
			if grace == 0 {
				grace = m + Month(p.GraceMonths)
			}
			if m >= grace {
				tier, grace = q, 0
			}
		}
		// Then the month's purchases.
		view[m] = saved[m]
		if q := e.qualifying(s, m); q > tier {
			tier, grace = q, 0
		}
	}
	s.Months = saved
	if id := p.Tiers[tier].ID; id != s.Tier {
		fx.TierMoves = append(fx.TierMoves, TierMove{From: s.Tier, To: id, At: t, Reason: "recomputed"})
		s.Tier, s.TierSince = id, t
	}
	s.GraceEnd, s.Evaluated, s.Last, s.StateChanged = grace, cur, t, true
	e.benefits(s, fx, t, false, Op{Cause: cause, Origin: s.MemberID})
	return fx
}

// Clone returns a deep copy of the state without its pending changes, for
// in-memory runs (tests, simulations) that must throw away a refused
// operation.
func (s *State) Clone() *State {
	c := &State{MemberID: s.MemberID, Last: s.Last, Evaluated: s.Evaluated, Tier: s.Tier, TierSince: s.TierSince, GraceEnd: s.GraceEnd,
		StreakDay: s.StreakDay, StreakLen: s.StreakLen, BirthDate: s.BirthDate, Labels: append([]string(nil), s.Labels...)}
	c.init()
	lots := map[*Lot]*Lot{}
	for _, l := range s.Lots {
		cp := *l
		lots[l] = &cp
		c.Lots = append(c.Lots, &cp)
	}
	for k, v := range s.Months {
		cp := *v
		c.Months[k] = &cp
	}
	maps.Copy(c.Usage, s.Usage)
	maps.Copy(c.Budgets, s.Budgets)
	for _, cp := range s.Coupons {
		x := *cp
		c.Coupons = append(c.Coupons, &x)
	}
	maps.Copy(c.Issued, s.Issued)
	maps.Copy(c.TplIssued, s.TplIssued)
	maps.Copy(c.BonusMonth, s.BonusMonth)
	maps.Copy(c.Referrals, s.Referrals)
	for k, v := range s.Grants {
		g := *v
		c.Grants[k] = &g
	}
	for k, o := range s.Orders {
		x := *o
		x.CouponIDs = append([]string(nil), o.CouponIDs...)
		if o.Lot != nil {
			x.Lot = lots[o.Lot]
		}
		c.Orders[k] = &x
	}
	c.OthersOrders = maps.Clone(s.OthersOrders)
	c.takenInBatch = s.takenInBatch // shared and read only
	return c
}
