package benefits

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/fault"
)

// A migration gives a member the loyalty a legacy system held (Legacy) as
// one engine operation, OpImport: the engine builds the lots, the tier,
// the months and the coupons in the member's State and the store persists
// them like any operation's effects, so the ledger invariants (balanced
// transactions, lots tied to their transaction, accounts equal to lots)
// hold by construction (docs/benefits.md, "Migrated loyalty").

// MigratedAccount is the counter-account of migrated points: the import
// transaction moves them from it to the member, so minus its sum is every
// point brought in from legacy systems (the programme's liability for
// points it issued itself stays apart).
const MigratedAccount = "programme:migrated"

// NeverExpires is the expiry stored for a lot or coupon that never expires
// (a zero ExpiresAt or ValidUntil in Legacy); LegacyView answers zero again.
var NeverExpires = time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)

// EarliestLegacy is the earliest time an imported record may carry: a
// loyalty programme's members, points and orders are of the Unix era, and
// what the platform exports (ClickHouse's DateTime, protobuf timestamps
// from year 1) holds no earlier time. Year 0 parsed, was stored, and broke
// every read of the member.
var EarliestLegacy = time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)

// ErrAlreadyImported is returned by ImportLegacy for a member that already
// has loyalty (an earlier import, or any operation of the programme): an
// import never adds to loyalty, it only starts it. It is a data error.
var ErrAlreadyImported = errors.New("member already has loyalty: an import only starts it")

// ErrMerged is returned by LegacyView for a member merged into another
// since: its loyalty is the survivor's.
var ErrMerged = errMerged

// maxLegacyPoints bounds one lot and the months' points (the programme's
// bound on what one purchase may earn); maxLegacyTotal the points of one
// member and a month's spend: within them no sum can overflow.
const (
	maxLegacyPoints = 1_000_000_000_000
	maxLegacyTotal  = 1_000_000_000_000_000
)

// legacyCouponStates are the states a migrated coupon may have.
var legacyCouponStates = []string{"issued", "used", "expired"}

// hasLoyalty reports whether the programme ever acted on the member: any
// operation leaves a state (its evaluated month), and lots, months,
// coupons and grants come only with one (or with a merge, which moves them
// to a member that has its own).
func (s *State) hasLoyalty() bool {
	return s.Evaluated != 0 || len(s.Lots) > 0 || len(s.Months) > 0 || len(s.Coupons) > 0 || len(s.Grants) > 0
}

// checkLegacy refuses, naming the field, what an import at at cannot take;
// it reads nothing but the programme, so a refused import reads and writes
// nothing.
func (p *Program) checkLegacy(l *Legacy, at time.Time) error {
	if l == nil {
		return fieldErr("legacy", "is required")
	}
	if at.IsZero() {
		return fieldErr("at", "is required")
	}
	ts := func(t time.Time) string { return t.In(p.Location).Format(time.RFC3339) }
	if l.Tier != "" && !slices.ContainsFunc(p.Tiers, func(t Tier) bool { return t.ID == l.Tier }) {
		ids := make([]string, len(p.Tiers))
		for i, t := range p.Tiers {
			ids[i] = t.ID
		}
		return fieldErr("tier", "%q is not a tier of the programme (%s)", l.Tier, strings.Join(ids, ", "))
	}
	if l.TierSince.After(at) {
		return fieldErr("tier_since", "%s is after the import time %s", ts(l.TierSince), ts(at))
	}
	if !l.TierSince.IsZero() && l.TierSince.Before(EarliestLegacy) {
		return fieldErr("tier_since", "%s is before %s", ts(l.TierSince), ts(EarliestLegacy))
	}
	var total int64
	for i, x := range l.Lots {
		f := func(name string) string { return fmt.Sprintf("lots[%d].%s", i, name) }
		switch {
		case x.Earned <= 0:
			return fieldErr(f("earned"), "%d must be positive", x.Earned)
		case x.Earned > maxLegacyPoints:
			return fieldErr(f("earned"), "%d is above the largest lot, %d points", x.Earned, int64(maxLegacyPoints))
		case x.Remaining < 0:
			return fieldErr(f("remaining"), "%d must not be negative", x.Remaining)
		case x.Remaining > x.Earned:
			return fieldErr(f("remaining"), "%d is more than the %d earned", x.Remaining, x.Earned)
		case x.EarnedAt.IsZero():
			return fieldErr(f("earned_at"), "is required")
		case x.EarnedAt.After(at):
			return fieldErr(f("earned_at"), "%s is after the import time %s", ts(x.EarnedAt), ts(at))
		case x.EarnedAt.Before(EarliestLegacy):
			return fieldErr(f("earned_at"), "%s is before %s", ts(x.EarnedAt), ts(EarliestLegacy))
		case !x.ExpiresAt.Before(NeverExpires):
			return fieldErr(f("expires_at"), "%s is the platform's \"never\" or later: leave it empty for points that never expire", ts(x.ExpiresAt))
		case !x.AvailableAt.IsZero() && x.AvailableAt.Before(x.EarnedAt):
			return fieldErr(f("available_at"), "%s is before earned_at %s", ts(x.AvailableAt), ts(x.EarnedAt))
		case !x.ExpiresAt.IsZero() && !x.ExpiresAt.After(x.EarnedAt):
			return fieldErr(f("expires_at"), "%s is not after earned_at %s", ts(x.ExpiresAt), ts(x.EarnedAt))
		case !x.ExpiresAt.IsZero() && x.AvailableAt.After(x.ExpiresAt):
			return fieldErr(f("available_at"), "%s is after expires_at %s", ts(x.AvailableAt), ts(x.ExpiresAt))
		}
		if total += x.Remaining; total > maxLegacyTotal {
			return fieldErr("lots", "hold more than %d points", int64(maxLegacyTotal))
		}
	}
	now := monthOf(at, p.Location)
	months := map[Month]int{}
	for i, m := range l.Months {
		f := func(name string) string { return fmt.Sprintf("months[%d].%s", i, name) }
		switch {
		case m.Year < 1970 || m.Year > 9999:
			return fieldErr(f("year"), "%d is not 1970..9999", m.Year)
		case m.Month < time.January || m.Month > time.December:
			return fieldErr(f("month"), "%d is not 1..12", m.Month)
		}
		k := Month(m.Year*12 + int(m.Month) - 1)
		for name, v := range map[string]int64{"spend": m.Spend, "points": m.Points, "orders": m.Orders} {
			if v < 0 || v > maxLegacyTotal {
				return fieldErr(f(name), "%d is not 0..%d", v, int64(maxLegacyTotal))
			}
		}
		if k > now {
			return fieldErr(f("month"), "%s is after the import month %s", k, now)
		}
		if j, dup := months[k]; dup {
			return fieldErr(f("month"), "%s is given twice (months[%d])", k, j)
		}
		months[k] = i
	}
	codes := map[string]int{}
	perTemplate := map[string]int{}
	for i, c := range l.Coupons {
		f := func(name string) string { return fmt.Sprintf("coupons[%d].%s", i, name) }
		tpl := p.Coupons[c.Template]
		from := c.ValidFrom
		if from.IsZero() {
			from = c.IssuedAt
		}
		switch {
		case c.Code == "":
			return fieldErr(f("code"), "is required")
		case len(c.Code) > 200:
			return fieldErr(f("code"), "is longer than 200 bytes")
		case tpl == nil:
			return fieldErr(f("template"), "%q is not a coupon template of the programme", c.Template)
		case !slices.Contains(legacyCouponStates, c.State):
			return fieldErr(f("state"), "%q: want %s", c.State, strings.Join(legacyCouponStates, ", "))
		case from.IsZero():
			return fieldErr(f("valid_from"), "is required (or issued_at)")
		case !c.ValidUntil.IsZero() && !c.ValidUntil.After(from):
			return fieldErr(f("valid_until"), "%s is not after valid_from %s", ts(c.ValidUntil), ts(from))
		case c.IssuedAt.After(at):
			return fieldErr(f("issued_at"), "%s is after the import time %s", ts(c.IssuedAt), ts(at))
		case from.Before(EarliestLegacy):
			return fieldErr(f("valid_from"), "%s is before %s", ts(from), ts(EarliestLegacy))
		case !c.ValidUntil.Before(NeverExpires):
			return fieldErr(f("valid_until"), "%s is the platform's \"never\" or later: leave it empty for a coupon valid for good", ts(c.ValidUntil))
		}
		if j, dup := codes[c.Code]; dup {
			return fieldErr(f("code"), "%q is given twice (coupons[%d])", c.Code, j)
		}
		codes[c.Code] = i
		if perTemplate[c.Template]++; perTemplate[c.Template] > tpl.PerMemberLimit {
			return fieldErr(f("template"), "%q: a member may be issued %d (per_member_limit); raise it in the programme to import more",
				c.Template, tpl.PerMemberLimit)
		}
	}
	return nil
}

// importLegacy gives the member (without loyalty, checked by Apply) the
// legacy system's: tier and months as they were, the open points as lots
// of one import transaction against MigratedAccount, then the coupons
// counted against their templates' totals. Nothing is earned: no base,
// campaign, mission or tier points. Lots already expired at t are imported
// and expire at once (an expire transaction each), as they would have at
// the legacy system: the import transaction carries every point the legacy
// system held, so the migrated account reconciles with the source's
// totals, and the balance never shows them.
func (e Engine) importLegacy(s *State, fx *Effects, t time.Time, op Op) error {
	p, l := e.P, op.Legacy

	tier, since := l.Tier, l.TierSince
	if tier == "" {
		tier = p.Tiers[0].ID
	}
	if since.IsZero() {
		since = t
	}
	fx.TierMoves = append(fx.TierMoves, TierMove{From: s.Tier, To: tier, At: since, Reason: "imported"})
	s.Tier, s.TierSince, s.GraceEnd = tier, since, 0

	for _, m := range l.Months {
		e.activity(s, op.Origin, Month(m.Year*12+int(m.Month)-1), Activity{Spend: m.Spend, Points: m.Points, Orders: m.Orders})
	}

	var total int64
	var lots int
	for _, x := range l.Lots {
		if x.Remaining == 0 {
			continue // spent: it holds nothing; its earning is in the months
		}
		legacyLot(s, x, op.Origin)
		total += x.Remaining
		lots++
	}
	if total > 0 {
		fx.Ledger = append(fx.Ledger, LedgerTxn{Kind: "import", Delta: total, Counter: MigratedAccount, Balance: total,
			Reason: fmt.Sprintf("%d points in %d lots migrated from the legacy system", total, lots)})
	}

	for i, c := range l.Coupons {
		if err := e.legacyCoupon(s, fx, i, c, op.Origin); err != nil {
			return err
		}
	}

	e.expire(s, fx, t, op)
	return nil
}

// legacyLot gives the member a legacy lot with its dates, created by an
// "import" transaction (tied to it by the store).
func legacyLot(s *State, x LegacyLot, origin string) *Lot {
	avail, exp := x.AvailableAt, x.ExpiresAt
	if avail.IsZero() {
		avail = x.EarnedAt
	}
	if exp.IsZero() {
		exp = NeverExpires
	}
	l := &Lot{Earned: x.Earned, Remaining: x.Remaining, EarnedAt: x.EarnedAt, AvailableAt: avail, ExpiresAt: exp,
		OrderID: x.Ref, Origin: origin, TxnKind: "import", dirty: true}
	s.Lots = append(s.Lots, l)
	return l
}

// legacyCoupon gives the member the i-th coupon of a legacy record as the
// legacy system issued it, counted against its template's limits.
func (e Engine) legacyCoupon(s *State, fx *Effects, i int, c LegacyCoupon, origin string) error {
	tpl := e.P.Coupons[c.Template]
	if tpl.TotalLimit > 0 && s.TplIssued[c.Template] >= tpl.TotalLimit {
		return fieldErr(fmt.Sprintf("coupons[%d].template", i), "%q: all %d have been issued (total_limit); raise it in the programme to import more",
			c.Template, tpl.TotalLimit)
	}
	s.Issued[c.Template]++
	if tpl.TotalLimit > 0 {
		s.TplIssued[c.Template]++
		s.TplDelta[c.Template]++
	}
	from, issued, until := c.ValidFrom, c.IssuedAt, c.ValidUntil
	if from.IsZero() {
		from = issued
	}
	if issued.IsZero() {
		issued = from
	}
	if until.IsZero() {
		until = NeverExpires
	}
	cp := &Coupon{Code: c.Code, Template: c.Template, State: c.State, ValidFrom: from, ValidUntil: until, Origin: origin,
		IssuedAt: issued, Cause: "legacy import", isNew: true, dirty: true}
	s.Coupons = append(s.Coupons, cp)
	fx.Coupons = append(fx.Coupons, cp)
	return nil
}

// ImportLegacy gives member — created by the caller in tx, with no loyalty
// yet — the loyalty a legacy system held (l), in tx, as one operation of
// the programme at at (OpImport): the open points as one "import" ledger
// transaction against MigratedAccount and one lot per LegacyLot with points
// left, with its earned, available and expiry dates (never re-earned: no
// base, campaign, mission or tier points); the tier with its effective
// date (a tier history row, reason "imported"); the monthly tier inputs;
// and the coupons, counted against their templates' limits like issued
// ones. Lots already expired at at are imported and expire at once (an
// "expire" transaction each), so the import carries every point the
// source held and the balance never shows expired points. Benefits the
// tier unlocks are granted at at, as after any operation.
//
// The changes (points, tier, benefits, coupons) go to the outbox like any
// operation's, caused by cause, which must be unique per member (the
// ledger keeps one import per cause). A member that already has loyalty is
// refused with ErrAlreadyImported; input the programme cannot take is
// refused with a FieldError (ErrInvalid) naming the field — a lot with
// Remaining above Earned or negative, an expiry not after its earning, a
// tier or coupon template the programme does not know, a coupon state
// other than issued, used or expired, a coupon code given twice or held by
// another member, more coupons of a template than its limits. Both are
// data errors (fault.IsData). A refused import writes nothing: the writes
// run under a savepoint of tx, which stays usable.
func (s *Service) ImportLegacy(ctx context.Context, tx pgx.Tx, member uuid.UUID, l Legacy, cause string, at time.Time) error {
	refused, err := s.ImportLegacyBatch(ctx, tx, []LegacyImport{{Member: member, Legacy: l, Cause: cause}}, at)
	if err != nil {
		return err
	}
	return refused[0]
}

// LegacyImport is one member's import in a batch.
type LegacyImport struct {
	Member uuid.UUID
	Legacy Legacy
	Cause  string
}

// ImportLegacyBatch is ImportLegacy for many members at once, as the
// stream core applies events: the members locked and loaded in one round
// trip, each import applied by the engine, and every write of the batch
// sent in one round trip, one statement per kind of row. An import refused
// on its own (its index in refused: a FieldError, ErrAlreadyImported, a
// member not found) writes nothing and does not hold back the others; what
// one import takes of a template's total_limit counts for the imports
// after it. err is the batch's (a database failure): then nothing of the
// batch is written, and tx stays usable.
func (s *Service) ImportLegacyBatch(ctx context.Context, tx pgx.Tx, imports []LegacyImport, at time.Time) (map[int]error, error) {
	ops := make([]Op, len(imports))
	for i, im := range imports {
		ops[i] = Op{Kind: OpImport, At: at, Cause: im.Cause, Origin: im.Member.String(), Legacy: &imports[i].Legacy}
	}
	return s.legacyBatch(ctx, tx, ops)
}

// legacyBatch applies legacy operations (OpImport, OpCatchUp) of distinct
// members, each op's Origin its member, as ImportLegacyBatch says.
func (s *Service) legacyBatch(ctx context.Context, tx pgx.Tx, ops []Op) (map[int]error, error) {
	p := s.program()
	e := Engine{P: p}
	checked := map[int]error{}
	members := map[uuid.UUID]int{}
	codes := map[string]int{} // code → op
	var allCodes []string
	for i, op := range ops {
		member, err := uuid.Parse(op.Origin)
		if err == nil {
			err = e.checkOp(op)
		}
		switch j, dup := members[member]; {
		case err != nil:
		case op.Cause == "":
			err = fieldErr("cause", "is required")
		case dup:
			err = fault.Permanent(fmt.Errorf("member %s is imported twice in the batch (import %d): %w", member, j, ErrAlreadyImported))
		}
		for k, c := range op.legacyRows().Coupons {
			if err != nil {
				break
			}
			if j, dup := codes[c.Code]; dup {
				err = fieldErr(fmt.Sprintf("coupons[%d].code", k), "%q is another member's coupon (import %d of the batch)", c.Code, j)
			}
		}
		if err != nil {
			checked[i] = err
			continue
		}
		members[member] = i
		for _, c := range op.legacyRows().Coupons {
			codes[c.Code] = i
			allCodes = append(allCodes, c.Code)
		}
	}
	if len(members) == 0 {
		return checked, nil
	}
	var refused map[int]error
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		refused = maps.Clone(checked)
		err = pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error {
			return s.importBatch(ctx, sp, p, ops, members, codes, allCodes, refused)
		})
		// A concurrent issuance took the last of a template's total, or a
		// concurrent import the same code: the next attempt reads it.
		if !errors.Is(err, errBudgetRace) && !postgres.IsUniqueViolation(err) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("import legacy loyalty: %w", err)
	}
	return refused, nil
}

// importBatch applies the imports of members (member → import) in sp,
// members in id order, and writes them in one round trip.
func (s *Service) importBatch(ctx context.Context, sp pgx.Tx, p *Program, ops []Op, members map[uuid.UUID]int,
	codes map[string]int, allCodes []string, refused map[int]error) error {
	ids := slices.SortedFunc(maps.Keys(members), postgres.CompareMemberIDs)
	loads := make([]postgres.LoyaltyLoad, len(ids))
	for k, id := range ids {
		loads[k] = postgres.LoyaltyLoad{Member: id, Lock: true, ActivityFrom: int(monthOf(ops[members[id]].At, p.Location)) - 13, Labels: p.labels}
		if ops[members[id]].Kind == OpCatchUp {
			loads[k].ActivityFrom = 0 // a changed month may be any month
		}
	}
	rows, err := postgres.LoadLoyaltyBatch(ctx, sp, loads)
	if err != nil {
		return err
	}
	if len(allCodes) > 0 {
		held, err := postgres.ExistingCouponCodes(ctx, sp, allCodes)
		if err != nil {
			return err
		}
		for _, code := range held {
			i := codes[code]
			if r := rows[uuid.MustParse(ops[i].Origin)]; ops[i].Kind == OpCatchUp && r != nil &&
				slices.ContainsFunc(r.Coupons, func(c postgres.CouponRow) bool { return c.Code == code }) {
				continue // the member's own: a catch-up changes its state
			}
			k := slices.IndexFunc(ops[i].legacyRows().Coupons, func(c LegacyCoupon) bool { return c.Code == code })
			if refused[i] == nil {
				refused[i] = fieldErr(fmt.Sprintf("coupons[%d].code", k), "%q is another member's coupon (codes are unique)", code)
			}
		}
	}
	w := postgres.NewLoyaltyWrites(p.Version)
	var issued map[string]int
	for _, id := range ids {
		i := members[id]
		r := rows[id]
		switch {
		case refused[i] != nil:
			continue
		case r == nil || !r.Found:
			refused[i] = fault.Permanent(fmt.Errorf("member %s: %w", id, postgres.ErrNotFound))
			continue
		case r.Merged:
			refused[i] = fault.Permanent(fmt.Errorf("member %s: %w", id, ErrMerged))
			continue
		}
		if issued == nil {
			issued = maps.Clone(r.TplIssued)
		}
		r.TplIssued = issued
		st, err := toState(id, *r, p)
		if err != nil {
			return err
		}
		fx, err := Engine{P: p}.Apply(st, ops[i])
		if err != nil {
			if errors.Is(err, ErrAlreadyImported) {
				err = fault.Permanent(err)
			}
			refused[i] = err
			continue
		}
		if err := s.stageOp(ctx, w, st, fx, ops[i], mcv1.Channel_CHANNEL_BACKOFFICE, "", st.Lots); err != nil {
			return err
		}
		s.stageState(w, st)
		for t, n := range st.TplDelta {
			issued[t] += n
		}
	}
	return s.flush(ctx, sp, w)
}

// LegacyView is what the platform holds of a member's loyalty in the shape
// of Legacy, as the member's reads see it now (GetBalance, GetTierStatus,
// ListCoupons): month starts and expiry due by now applied (without being
// written). Lots are the open ones (points left, not expired), earliest
// expiry first, Ref the lot's order id (the legacy Ref for imported lots);
// Tier is "" for the base tier; Months every stored month, oldest first;
// Coupons every coupon in issue order, their state issued (restored ones
// included), used, expired (stored so, or no longer valid now) or revoked.
// A NeverExpires expiry or validity is zero. The balance is the open lots'
// points, pending included. A member without loyalty has a zero Legacy; a
// merged one is ErrMerged. Compare times with Equal: they come back in the
// database session's zone.
func (s *Service) LegacyView(ctx context.Context, q postgres.Batcher, member uuid.UUID) (Legacy, int64, error) {
	rows, err := postgres.LoadLoyalty(ctx, q, postgres.LoyaltyLoad{Member: member, ActivityFrom: 0, Labels: s.program().labels})
	if err != nil {
		return Legacy{}, 0, err
	}
	return s.legacyView(member, rows)
}

// LegacyOf is a member's answer in LegacyViews.
type LegacyOf struct {
	Legacy  Legacy
	Balance int64
	Err     error // as LegacyView's: not found, ErrMerged
}

// LegacyViews is LegacyView for many members, read in one round trip (one
// statement per kind of row), for a reconciliation of a chunk of members.
func (s *Service) LegacyViews(ctx context.Context, q postgres.Batcher, members []uuid.UUID) (map[uuid.UUID]LegacyOf, error) {
	loads := make([]postgres.LoyaltyLoad, len(members))
	labels := s.program().labels
	for i, m := range members {
		loads[i] = postgres.LoyaltyLoad{Member: m, ActivityFrom: 0, Labels: labels}
	}
	rows, err := postgres.LoadLoyaltyBatch(ctx, q, loads)
	if err != nil {
		return nil, err
	}
	out := make(map[uuid.UUID]LegacyOf, len(members))
	for _, m := range members {
		var v LegacyOf
		v.Legacy, v.Balance, v.Err = s.legacyView(m, *rows[m])
		out[m] = v
	}
	return out, nil
}

// legacyView is LegacyView on the member's rows as read.
func (s *Service) legacyView(member uuid.UUID, rows postgres.LoyaltyRows) (Legacy, int64, error) {
	p := s.program()
	now := s.now()
	switch {
	case !rows.Found:
		return Legacy{}, 0, fmt.Errorf("member %s: %w", member, postgres.ErrNotFound)
	case rows.Merged:
		return Legacy{}, 0, fmt.Errorf("member %s: %w", member, ErrMerged)
	case rows.State == nil && len(rows.Lots) == 0 && len(rows.Coupons) == 0 && len(rows.Activity) == 0:
		return Legacy{}, 0, nil
	}
	st, err := toState(member, rows, p)
	if err != nil {
		return Legacy{}, 0, err
	}
	// What a read sees: month starts and expiry up to now.
	if _, err := (Engine{P: p}).Apply(st, Op{Kind: OpAdvance, At: now, Cause: "read"}); err != nil {
		return Legacy{}, 0, err
	}
	never := func(t time.Time) time.Time {
		if t.Equal(NeverExpires) {
			return time.Time{}
		}
		return t
	}
	var v Legacy
	if st.Tier != p.Tiers[0].ID {
		v.Tier = st.Tier
	}
	v.TierSince = st.TierSince
	for _, l := range spendOrder(st.Lots) {
		if l.Remaining == 0 || !now.Before(l.ExpiresAt) {
			continue
		}
		v.Lots = append(v.Lots, LegacyLot{Ref: l.OrderID, Earned: l.Earned, Remaining: l.Remaining, EarnedAt: l.EarnedAt,
			AvailableAt: l.AvailableAt, ExpiresAt: never(l.ExpiresAt)})
	}
	months := make([]Month, 0, len(st.Months))
	for m := range st.Months {
		months = append(months, m)
	}
	slices.Sort(months)
	for _, m := range months {
		a := st.Months[m]
		v.Months = append(v.Months, LegacyMonth{Year: int(m) / 12, Month: time.Month(int(m)%12 + 1), Spend: a.Spend, Points: a.Points, Orders: a.Orders})
	}
	cs := slices.Clone(st.Coupons)
	sort.SliceStable(cs, func(i, j int) bool { return cs[i].IssuedAt.Before(cs[j].IssuedAt) })
	for _, c := range cs {
		if c.isNew {
			continue // issued by the read's own month starts, never stored
		}
		state := c.State
		if state == "restored" {
			state = "issued"
		}
		if state == "issued" && !now.Before(c.ValidUntil) {
			state = "expired"
		}
		v.Coupons = append(v.Coupons, LegacyCoupon{Code: c.Code, Template: c.Template, State: state, ValidFrom: c.ValidFrom,
			ValidUntil: never(c.ValidUntil), IssuedAt: c.IssuedAt})
	}
	balance, _, _ := st.Balance(now)
	return v, balance, nil
}
