package benefits

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
)

// persistedState is the loyalty_state row: the small per-member state.
type persistedState struct {
	Last       time.Time        `json:"last"`
	Evaluated  Month            `json:"evaluated"`
	Tier       string           `json:"tier"`
	TierSince  time.Time        `json:"tier_since"`
	GraceEnd   Month            `json:"grace_end,omitempty"`
	StreakDay  int              `json:"streak_day,omitempty"`
	StreakLen  int64            `json:"streak_len,omitempty"`
	BonusMonth []Month          `json:"bonus_months,omitempty"`
	Referrals  map[string]int64 `json:"referrals,omitempty"`
}

// errBudgetRace means a concurrent operation used the last of a campaign
// budget or coupon limit this one counted on: the operation is retried.
var errBudgetRace = errors.New("campaign budget or coupon limit changed concurrently")

// load reads what the engine needs of member at t (locking the member row
// when the operation will write):
// its state, open lots, the last 13 months of activity, this day's and
// month's campaign usage, campaign budgets, its coupons, grants, birth date
// and labels, and the named orders with their lots.
func (s *Service) load(ctx context.Context, tx pgx.Tx, member uuid.UUID, lock bool, t time.Time, orderIDs ...string) (*State, error) {
	if lock {
		if _, err := postgres.LockMembers(ctx, tx, member); err != nil {
			return nil, err
		}
	}
	p := s.program()
	st := NewState(member.String())
	var raw []byte
	err := tx.QueryRow(ctx, `SELECT state FROM loyalty_state WHERE member_id = $1`, member).Scan(&raw)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return nil, fmt.Errorf("load loyalty state: %w", err)
	default:
		var ps persistedState
		if err := json.Unmarshal(raw, &ps); err != nil {
			return nil, fmt.Errorf("decode loyalty state: %w", err)
		}
		st.Last, st.Evaluated, st.Tier, st.TierSince, st.GraceEnd = ps.Last, ps.Evaluated, ps.Tier, ps.TierSince, ps.GraceEnd
		st.StreakDay, st.StreakLen = ps.StreakDay, ps.StreakLen
		for _, m := range ps.BonusMonth {
			st.BonusMonth[m] = true
		}
		for k, v := range ps.Referrals {
			n, _ := strconv.Atoi(k)
			st.Referrals[Month(n)] = v
		}
	}
	if t.Before(st.Last) {
		t = st.Last
	}
	cur := monthOf(t, p.Location)
	// Month starts since the last evaluated month need their own 12 months.
	from := cur - 13
	if st.Evaluated > 0 && st.Evaluated-12 < from {
		from = st.Evaluated - 12
	}

	b := &pgx.Batch{}
	b.Queue(`SELECT lot_id, earned, remaining, earned_at, available_at, expires_at, coalesce(order_id, ''), origin_member_id, kind
		FROM point_lots WHERE member_id = $1 AND (remaining > 0 OR order_id = ANY($2)) ORDER BY lot_id`, member, orderIDs).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				l := &Lot{}
				var origin uuid.UUID
				if err := rows.Scan(&l.ID, &l.Earned, &l.Remaining, &l.EarnedAt, &l.AvailableAt, &l.ExpiresAt, &l.OrderID, &origin, &l.TxnKind); err != nil {
					return err
				}
				l.Origin = origin.String()
				st.Lots = append(st.Lots, l)
			}
			return rows.Err()
		})
	b.Queue(`SELECT month, sum(spend), sum(points), sum(orders) FROM member_activity
		WHERE member_id = $1 AND month >= $2 GROUP BY month`, member, int(from)).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var m int
				a := &Activity{}
				if err := rows.Scan(&m, &a.Spend, &a.Points, &a.Orders); err != nil {
					return err
				}
				st.Months[Month(m)] = a
			}
			return rows.Err()
		})
	periods := []string{fmt.Sprintf("d:%d", dayOf(t, p.Location)), fmt.Sprintf("m:%d", int(cur))}
	b.Queue(`SELECT campaign_id, period, points FROM campaign_usage WHERE member_id = $1 AND period = ANY($2)`, member, periods).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var c, period string
				var pts int64
				if err := rows.Scan(&c, &period, &pts); err != nil {
					return err
				}
				st.Usage[c+"|"+period] = pts
			}
			return rows.Err()
		})
	b.Queue(`SELECT campaign_id, spent FROM campaign_budgets`).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var c string
			var v int64
			if err := rows.Scan(&c, &v); err != nil {
				return err
			}
			st.Budgets[c] = v
		}
		return rows.Err()
	})
	b.Queue(`SELECT code, template_id, state, valid_from, valid_until, coalesce(order_id, ''), origin_member_id, issued_at, cause
		FROM coupons WHERE member_id = $1 ORDER BY issued_at, code`, member).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			c := &Coupon{}
			var origin uuid.UUID
			if err := rows.Scan(&c.Code, &c.Template, &c.State, &c.ValidFrom, &c.ValidUntil, &c.OrderID, &origin, &c.IssuedAt, &c.Cause); err != nil {
				return err
			}
			c.Origin = origin.String()
			st.Coupons = append(st.Coupons, c)
			st.Issued[c.Template]++
		}
		return rows.Err()
	})
	b.Queue(`SELECT template_id, issued FROM coupon_template_counts`).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var tpl string
			var n int
			if err := rows.Scan(&tpl, &n); err != nil {
				return err
			}
			st.TplIssued[tpl] = n
		}
		return rows.Err()
	})
	b.Queue(`SELECT benefit_id, granted_at, cause, pending_revoke FROM benefit_grants WHERE member_id = $1`, member).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var id string
				g := &Grant{}
				if err := rows.Scan(&id, &g.GrantedAt, &g.Cause, &g.PendingRevoke); err != nil {
					return err
				}
				st.Grants[id] = g
			}
			return rows.Err()
		})
	b.Queue(`SELECT coalesce(attributes->>'birth_date', ''),
		coalesce((SELECT array_agg(label_id ORDER BY label_id) FROM member_labels WHERE member_id = $1 AND value = 'true'), '{}')
		FROM members WHERE member_id = $1`, member).QueryRow(func(row pgx.Row) error {
		return row.Scan(&st.BirthDate, &st.Labels)
	})
	b.Queue(`SELECT order_id, member_id, origin_member_id, at, total, paid, coupon_discount, redeemed, earned, refunded, reversed,
		restored, unrecovered, fully_refunded, coupon_codes, coalesce(lot_id, 0), extras, cause FROM orders WHERE order_id = ANY($1)`, orderIDs).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				o := &Order{}
				var m, origin uuid.UUID
				var lotID int64
				var extras []byte
				if err := rows.Scan(&o.OrderID, &m, &origin, &o.At, &o.Total, &o.Paid, &o.CouponDiscount, &o.Redeemed, &o.Earned,
					&o.Refunded, &o.Reversed, &o.Restored, &o.Unrecovered, &o.FullyRefunded, &o.CouponIDs, &lotID, &extras, &o.Cause); err != nil {
					return err
				}
				o.MemberID, o.Origin = m.String(), origin.String()
				_ = json.Unmarshal(extras, &o.Extras)
				for _, l := range st.Lots {
					if l.ID == lotID && lotID != 0 {
						o.Lot = l
					}
				}
				// An order held by another member (before a merge) is not
				// this member's to change.
				if o.MemberID == st.MemberID {
					st.Orders[o.OrderID] = o
				}
			}
			return rows.Err()
		})
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("load loyalty state: %w", err)
	}
	if st.Tier == "" {
		st.Tier = p.Tiers[0].ID
	}
	return st, nil
}

// persist writes what op changed: ledger, lots, account, activity, usage,
// budgets, coupons, grants, tier history, orders, the state row and one
// outbox change per effect.
func (s *Service) persist(ctx context.Context, tx pgx.Tx, st *State, fx *Effects, op Op, ch mcv1.Channel, store string) error {
	if fx.Duplicate || fx.NoOp {
		return nil
	}
	p := s.program()
	member := uuid.MustParse(st.MemberID)
	origin := uuid.MustParse(op.Origin)

	// Lots first: ledger rows reference them only by transaction, orders by id.
	var txnIDs []uuid.UUID
	var earned int64
	var delta int64
	for i, l := range fx.Ledger {
		id := uuid.Must(uuid.NewV7())
		txnIDs = append(txnIDs, id)
		counter := l.Counter
		entries := []postgres.LedgerEntry{
			{Account: postgres.MemberAccount(member), MemberID: &member, Delta: l.Delta},
			{Account: counter, Delta: -l.Delta},
		}
		if err := postgres.InsertLedgerTransaction(ctx, tx, postgres.LedgerTransaction{
			TransactionID: id, MemberID: member, OriginMemberID: origin, Kind: l.Kind, Reason: l.Reason,
			CauseID: fmt.Sprintf("%s#%d", op.Cause, i), CreatedAt: fx.At, Entries: entries,
		}); err != nil {
			return err
		}
		if l.Kind == "earn" {
			earned += l.Delta
		}
		delta += l.Delta
	}
	if len(fx.Ledger) > 0 {
		if _, err := tx.Exec(ctx, `UPDATE ledger_transactions SET program_version = $2 WHERE transaction_id = ANY($1)`, txnIDs, p.Version); err != nil {
			return fmt.Errorf("stamp programme version: %w", err)
		}
	}
	txnOf := func(kind string) uuid.UUID {
		for i, l := range fx.Ledger {
			if l.Kind == kind {
				return txnIDs[i]
			}
		}
		if len(txnIDs) > 0 {
			return txnIDs[0]
		}
		return uuid.Nil
	}
	for _, l := range st.Lots {
		if !l.dirty {
			continue
		}
		if l.ID == 0 {
			lo := uuid.MustParse(l.Origin)
			err := tx.QueryRow(ctx, `INSERT INTO point_lots (member_id, origin_member_id, transaction_id, earned, remaining, earned_at,
				available_at, expires_at, order_id, kind) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, nullif($9, ''), $10) RETURNING lot_id`,
				member, lo, txnOf(l.TxnKind), l.Earned, l.Remaining, l.EarnedAt, l.AvailableAt, l.ExpiresAt, l.OrderID, l.TxnKind).Scan(&l.ID)
			if err != nil {
				return fmt.Errorf("insert lot: %w", err)
			}
		} else if _, err := tx.Exec(ctx, `UPDATE point_lots SET remaining = $2 WHERE lot_id = $1`, l.ID, l.Remaining); err != nil {
			return fmt.Errorf("update lot: %w", err)
		}
		l.dirty = false
	}
	if delta != 0 || earned != 0 {
		if _, err := postgres.AddToAccount(ctx, tx, member, delta, earned); err != nil {
			return err
		}
	}

	for o, months := range st.MonthDelta {
		for m, a := range months {
			if _, err := tx.Exec(ctx, `INSERT INTO member_activity AS a (member_id, origin_member_id, month, spend, points, orders)
				VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (member_id, origin_member_id, month) DO UPDATE
				SET spend = a.spend + EXCLUDED.spend, points = a.points + EXCLUDED.points, orders = a.orders + EXCLUDED.orders`,
				member, uuid.MustParse(o), int(m), a.Spend, a.Points, a.Orders); err != nil {
				return fmt.Errorf("activity: %w", err)
			}
		}
	}
	for k, v := range st.UsageDelta {
		c, period, _ := strings.Cut(k, "|")
		if _, err := tx.Exec(ctx, `INSERT INTO campaign_usage AS u (campaign_id, member_id, period, points) VALUES ($1, $2, $3, $4)
			ON CONFLICT (member_id, campaign_id, period) DO UPDATE SET points = u.points + EXCLUDED.points`, c, member, period, v); err != nil {
			return fmt.Errorf("campaign usage: %w", err)
		}
	}
	for c, v := range st.BudgetDelta {
		var budget int64
		for _, camp := range p.Campaigns {
			if camp.ID == c {
				budget = camp.Budget
			}
		}
		tag, err := tx.Exec(ctx, `INSERT INTO campaign_budgets AS b (campaign_id, spent) VALUES ($1, $2)
			ON CONFLICT (campaign_id) DO UPDATE SET spent = b.spent + EXCLUDED.spent
			WHERE $3 = 0 OR b.spent + EXCLUDED.spent <= $3`, c, v, budget)
		if err != nil {
			return fmt.Errorf("campaign budget: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return errBudgetRace
		}
	}
	for tpl, n := range st.TplDelta {
		limit := 0
		if t := p.Coupons[tpl]; t != nil {
			limit = t.TotalLimit
		}
		tag, err := tx.Exec(ctx, `INSERT INTO coupon_template_counts AS c (template_id, issued) VALUES ($1, $2)
			ON CONFLICT (template_id) DO UPDATE SET issued = c.issued + EXCLUDED.issued
			WHERE $3 = 0 OR c.issued + EXCLUDED.issued <= $3`, tpl, n, limit)
		if err != nil {
			return fmt.Errorf("coupon count: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return errBudgetRace
		}
	}
	for _, c := range st.Coupons {
		if !c.dirty {
			continue
		}
		if c.isNew {
			if _, err := tx.Exec(ctx, `INSERT INTO coupons (code, member_id, origin_member_id, template_id, state, valid_from, valid_until,
				issued_at, cause, order_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, nullif($10, ''))`,
				c.Code, member, uuid.MustParse(c.Origin), c.Template, c.State, c.ValidFrom, c.ValidUntil, c.IssuedAt, c.Cause, c.OrderID); err != nil {
				return fmt.Errorf("insert coupon: %w", err)
			}
		} else if _, err := tx.Exec(ctx, `UPDATE coupons SET state = $2, order_id = nullif($3, '') WHERE code = $1`, c.Code, c.State, c.OrderID); err != nil {
			return fmt.Errorf("update coupon: %w", err)
		}
		c.dirty, c.isNew = false, false
	}
	for _, id := range fx.Granted {
		g := st.Grants[id]
		if g == nil {
			continue // granted and revoked within the operation
		}
		if _, err := tx.Exec(ctx, `INSERT INTO benefit_grants (member_id, benefit_id, granted_at, cause) VALUES ($1, $2, $3, $4)
			ON CONFLICT (member_id, benefit_id) DO NOTHING`, member, id, g.GrantedAt, g.Cause); err != nil {
			return fmt.Errorf("grant: %w", err)
		}
	}
	for _, id := range fx.Revoked {
		if _, err := tx.Exec(ctx, `DELETE FROM benefit_grants WHERE member_id = $1 AND benefit_id = $2`, member, id); err != nil {
			return fmt.Errorf("revoke: %w", err)
		}
	}
	for id, g := range st.Grants {
		if _, err := tx.Exec(ctx, `UPDATE benefit_grants SET pending_revoke = $3 WHERE member_id = $1 AND benefit_id = $2 AND pending_revoke <> $3`,
			member, id, g.PendingRevoke); err != nil {
			return fmt.Errorf("grant state: %w", err)
		}
	}
	for _, pair := range []struct {
		ids     []string
		granted bool
	}{{fx.Granted, true}, {fx.Revoked, false}} {
		for _, id := range pair.ids {
			if _, err := tx.Exec(ctx, `INSERT INTO benefit_history (member_id, benefit_id, granted, at, cause) VALUES ($1, $2, $3, $4, $5)`,
				member, id, pair.granted, fx.At, op.Cause); err != nil {
				return fmt.Errorf("benefit history: %w", err)
			}
		}
	}
	for _, m := range fx.TierMoves {
		if _, err := tx.Exec(ctx, `INSERT INTO tier_history (member_id, from_tier, to_tier, at, reason, cause) VALUES ($1, $2, $3, $4, $5, $6)`,
			member, m.From, m.To, m.At, m.Reason, op.Cause); err != nil {
			return fmt.Errorf("tier history: %w", err)
		}
	}
	for _, o := range st.Orders {
		if !o.dirty {
			continue
		}
		var lotID *int64
		if o.Lot != nil {
			lotID = &o.Lot.ID
		}
		extras, _ := json.Marshal(o.Extras)
		if o.CouponIDs == nil {
			o.CouponIDs = []string{}
		}
		if o.isNew {
			if _, err := tx.Exec(ctx, `INSERT INTO orders (order_id, member_id, origin_member_id, at, total, paid, coupon_discount, redeemed,
				earned, coupon_codes, lot_id, extras, cause, program_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)`,
				o.OrderID, member, uuid.MustParse(o.Origin), o.At, o.Total, o.Paid, o.CouponDiscount, o.Redeemed, o.Earned,
				o.CouponIDs, lotID, extras, o.Cause, p.Version); err != nil {
				if postgres.IsUniqueViolation(err) {
					return fmt.Errorf("order %s was committed concurrently: %w", o.OrderID, err)
				}
				return fmt.Errorf("insert order: %w", err)
			}
		} else if _, err := tx.Exec(ctx, `UPDATE orders SET refunded = $2, reversed = $3, restored = $4, unrecovered = $5, fully_refunded = $6 WHERE order_id = $1`,
			o.OrderID, o.Refunded, o.Reversed, o.Restored, o.Unrecovered, o.FullyRefunded); err != nil {
			return fmt.Errorf("update order: %w", err)
		}
		o.dirty, o.isNew = false, false
	}
	ps := persistedState{Last: st.Last, Evaluated: st.Evaluated, Tier: st.Tier, TierSince: st.TierSince, GraceEnd: st.GraceEnd,
		StreakDay: st.StreakDay, StreakLen: st.StreakLen, Referrals: map[string]int64{}}
	for m := range st.BonusMonth {
		ps.BonusMonth = append(ps.BonusMonth, m)
	}
	for m, n := range st.Referrals {
		ps.Referrals[strconv.Itoa(int(m))] = n
	}
	raw, _ := json.Marshal(ps)
	if _, err := tx.Exec(ctx, `INSERT INTO loyalty_state (member_id, state, updated_at) VALUES ($1, $2, now())
		ON CONFLICT (member_id) DO UPDATE SET state = EXCLUDED.state, updated_at = now()`, member, raw); err != nil {
		return fmt.Errorf("loyalty state: %w", err)
	}
	if op.BirthDate != "" {
		if _, err := tx.Exec(ctx, `UPDATE members SET attributes = attributes || jsonb_build_object('birth_date', $2::text) WHERE member_id = $1`,
			member, op.BirthDate); err != nil {
			return fmt.Errorf("birth date: %w", err)
		}
	}
	for _, c := range fx.Changes(p) {
		c.CauseId, c.Channel, c.StoreId = op.Cause, ch, store
		if _, err := s.changes.Append(ctx, tx, member, c); err != nil {
			return err
		}
	}
	return nil
}
