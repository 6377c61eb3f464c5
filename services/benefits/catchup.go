package benefits

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// A catch-up (membercenter import catch-up / import cdc) brings a migrated
// member's loyalty to what the legacy system holds now, row by row, while
// the legacy system is still the system of record: each changed legacy row
// is given with its new value, and the engine moves the platform's
// legacy-derived state to it as one operation, OpCatchUp, whose effects
// are stored and announced like any operation's (docs/migration.md,
// "Catch-up"). Nothing is earned: points come and go against
// MigratedAccount.

// LegacyDelta is what changed of a migrated member's loyalty in the legacy
// system: the new value of each changed row, by its key.
type LegacyDelta struct {
	// Legacy holds the changed rows: Lots by Ref (a new one is credited as
	// a lot of its own; one whose Remaining went down is debited by the
	// difference, one whose Remaining went up credited back, up to what it
	// earned); Months by month (the month's tier inputs become the given
	// ones); Coupons by Code (a new one is issued as the import issues
	// them; a known one takes the given state). Tier and TierSince are the
	// new tier when SetTier.
	Legacy
	SetTier bool
	// GoneLots are the refs of lots deleted in the legacy system: their
	// points are debited.
	GoneLots []string
}

// legacyRows is the legacy rows an import or a catch-up brings.
func (op Op) legacyRows() *Legacy {
	switch {
	case op.Legacy != nil:
		return op.Legacy
	case op.Delta != nil:
		return &op.Delta.Legacy
	}
	return &Legacy{}
}

// checkDelta refuses, naming the field, what a catch-up at at cannot take:
// the rows are checked as an import checks them, and a lot needs its ref
// (its key).
func (p *Program) checkDelta(d *LegacyDelta, at time.Time) error {
	if d == nil {
		return fieldErr("delta", "is required")
	}
	if err := p.checkLegacy(&d.Legacy, at); err != nil {
		return err
	}
	for i, l := range d.Lots {
		if l.Ref == "" {
			return fieldErr(fmt.Sprintf("lots[%d].ref", i), "is required: it is the key a change finds the lot by")
		}
	}
	return nil
}

// legacyLotOf is the member's open lot a legacy ref became.
func (s *State) legacyLotOf(ref string) *Lot {
	for _, l := range s.Lots {
		if l.TxnKind == "import" && l.OrderID == ref && l.Remaining > 0 {
			return l
		}
	}
	return nil
}

// catchUpLegacy moves the member's legacy-derived loyalty to d's rows.
func (e Engine) catchUpLegacy(s *State, fx *Effects, t time.Time, op Op) error {
	p, d := e.P, op.Delta
	if d.SetTier {
		tier, since := d.Tier, d.TierSince
		if tier == "" {
			tier = p.Tiers[0].ID
		}
		switch {
		case since.IsZero() && tier == s.Tier:
			since = s.TierSince
		case since.IsZero():
			since = t
		}
		if tier != s.Tier || !since.Equal(s.TierSince) {
			fx.TierMoves = append(fx.TierMoves, TierMove{From: s.Tier, To: tier, At: since, Reason: "legacy"})
			s.Tier, s.TierSince, s.GraceEnd = tier, since, 0
		}
	}
	for _, m := range d.Months {
		k := Month(m.Year*12 + int(m.Month) - 1)
		var was Activity
		if a := s.Months[k]; a != nil {
			was = *a
		}
		if diff := (Activity{Spend: m.Spend - was.Spend, Points: m.Points - was.Points, Orders: m.Orders - was.Orders}); diff != (Activity{}) {
			e.activity(s, op.Origin, k, diff)
		}
	}
	for i, x := range d.Lots {
		l := s.legacyLotOf(x.Ref)
		switch {
		case l == nil && x.Remaining > 0 && (x.ExpiresAt.IsZero() || t.Before(x.ExpiresAt)):
			legacyLot(s, x, op.Origin)
			e.ledger(s, fx, LedgerTxn{Kind: "import", Delta: x.Remaining, Counter: MigratedAccount,
				Reason: fmt.Sprintf("lot %s: %d points migrated from the legacy system", x.Ref, x.Remaining)}, t)
		case l == nil:
			// Spent or expired: it holds nothing (its earning is in the months).
		case !l.EarnedAt.Equal(x.EarnedAt) || !l.ExpiresAt.Equal(cmpOr(x.ExpiresAt, NeverExpires)) || l.Earned != x.Earned:
			return fieldErr(fmt.Sprintf("lots[%d]", i), "lot %s: earned, earned_at or expires_at changed in the legacy system; a catch-up moves a migrated lot's points, not its dates (Adjust on the platform)", x.Ref)
		case x.Remaining != l.Remaining:
			e.legacyMove(s, fx, t, l, x.Remaining)
		}
	}
	for _, ref := range d.GoneLots {
		if l := s.legacyLotOf(ref); l != nil {
			e.legacyMove(s, fx, t, l, 0)
		}
	}
	for i, c := range d.Coupons {
		have := s.couponByCode(c.Code)
		switch {
		case have == nil:
			if tpl := p.Coupons[c.Template]; s.Issued[c.Template] >= tpl.PerMemberLimit {
				return fieldErr(fmt.Sprintf("coupons[%d].template", i), "%q: the member holds %d (per_member_limit)", c.Template, s.Issued[c.Template])
			}
			if err := e.legacyCoupon(s, fx, i, c, op.Origin); err != nil {
				return err
			}
		case have.Template != c.Template:
			return fieldErr(fmt.Sprintf("coupons[%d].template", i), "coupon %s is a %s, not a %s", c.Code, have.Template, c.Template)
		case have.State == c.State, have.State == "restored" && c.State == "issued":
		default:
			have.State, have.dirty = c.State, true
			fx.Coupons = append(fx.Coupons, have)
		}
	}
	return nil
}

func cmpOr(t, zero time.Time) time.Time {
	if t.IsZero() {
		return zero
	}
	return t
}

// legacyMove sets a migrated lot's points to what the legacy system says
// it holds, the difference moved against MigratedAccount.
func (e Engine) legacyMove(s *State, fx *Effects, t time.Time, l *Lot, to int64) {
	was := l.Remaining
	l.Remaining, l.dirty = to, true
	e.ledger(s, fx, LedgerTxn{Kind: "adjust", Delta: to - was, Counter: MigratedAccount,
		Reason: fmt.Sprintf("lot %s changed in the legacy system: %d → %d points", l.OrderID, was, to)}, t)
}

// CatchUpLegacy brings member's migrated loyalty, in tx, to the legacy rows
// of d (OpCatchUp at at, caused by cause, unique per change): lots
// credited or debited against MigratedAccount (never earned), months' tier
// inputs set, coupons issued or their state set, the tier set with its
// date. The changes go to the outbox like any operation's. Input the
// programme cannot take is refused with a FieldError naming the row (a
// data error); a refused catch-up writes nothing (a savepoint of tx).
func (s *Service) CatchUpLegacy(ctx context.Context, tx pgx.Tx, member uuid.UUID, d LegacyDelta, cause string, at time.Time) error {
	refused, err := s.legacyBatch(ctx, tx, []Op{{Kind: OpCatchUp, At: at, Cause: cause, Origin: member.String(), Delta: &d}})
	if err != nil {
		return err
	}
	return refused[0]
}
