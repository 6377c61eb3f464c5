package benefits

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

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
// errMerged means an unlocked load found the member merged into another.
var errMerged = errors.New("member was merged")

// batchQuerier runs a load: a transaction, or the pool for a read-only
// load in one round trip.
type batchQuerier interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func (s *Service) load(ctx context.Context, tx batchQuerier, member uuid.UUID, lock bool, t time.Time, orderIDs ...string) (*State, error) {
	p := s.program()
	st := NewState(member.String())
	// One round trip: the member row (locked when writing, which also
	// serialises the member's outbox sequence), its state, and everything
	// below.
	b := &pgx.Batch{}
	memberSQL := `SELECT change_seq, coalesce(attributes->>'birth_date', ''),
		coalesce((SELECT array_agg(label_id ORDER BY label_id) FROM member_labels WHERE member_id = $1 AND value = 'true'), '{}'),
		merged_into IS NOT NULL
		FROM members WHERE member_id = $1`
	if lock {
		memberSQL += ` FOR UPDATE`
	}
	found, merged := false, false
	b.Queue(memberSQL, member).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			found = true
			if err := rows.Scan(&st.ChangeSeq, &st.BirthDate, &st.Labels, &merged); err != nil {
				return err
			}
		}
		return rows.Err()
	})
	var raw []byte
	b.Queue(`SELECT state FROM loyalty_state WHERE member_id = $1`, member).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			if err := rows.Scan(&raw); err != nil {
				return err
			}
		}
		return rows.Err()
	})
	cur := monthOf(t, p.Location)
	b.Queue(`SELECT lot_id, earned, remaining, earned_at, available_at, expires_at, coalesce(order_id, ''), origin_member_id, kind
		FROM (SELECT * FROM point_lots WHERE member_id = $1 AND remaining > 0
		      UNION ALL
		      SELECT l.* FROM orders o JOIN point_lots l ON l.lot_id = o.lot_id WHERE o.order_id = ANY($2) AND o.member_id = $1) x
		ORDER BY lot_id`, member, orderIDs).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				l := &Lot{}
				var origin uuid.UUID
				if err := rows.Scan(&l.ID, &l.Earned, &l.Remaining, &l.EarnedAt, &l.AvailableAt, &l.ExpiresAt, &l.OrderID, &origin, &l.TxnKind); err != nil {
					return err
				}
				// An open lot of a named order comes twice (sorted by id).
				if n := len(st.Lots); n > 0 && st.Lots[n-1].ID == l.ID {
					continue
				}
				l.Origin = origin.String()
				st.Lots = append(st.Lots, l)
			}
			return rows.Err()
		})
	// Month starts since the last evaluated month need their own 12 months.
	b.Queue(`SELECT month, sum(spend), sum(points), sum(orders) FROM member_activity
		WHERE member_id = $1
		  AND month >= least($2::int, coalesce((SELECT (state->>'evaluated')::int FROM loyalty_state WHERE member_id = $1), $2::int) - 12)
		GROUP BY month`, member, int(cur)-13).
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
	// The shared counters the programme limits (campaign budgets, coupon
	// template totals), in one statement.
	b.Queue(`SELECT true, campaign_id, spent FROM campaign_budgets UNION ALL SELECT false, template_id, issued FROM coupon_template_counts`).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var budget bool
				var id string
				var v int64
				if err := rows.Scan(&budget, &id, &v); err != nil {
					return err
				}
				if budget {
					st.Budgets[id] = v
				} else {
					st.TplIssued[id] = int(v)
				}
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
	if len(orderIDs) > 0 {
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
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("load loyalty state: %w", err)
	}
	if !found {
		return nil, fmt.Errorf("member %s: %w", member, postgres.ErrNotFound)
	}
	if merged && !lock {
		return nil, errMerged
	}
	if raw != nil {
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
	if st.Tier == "" {
		st.Tier = p.Tiers[0].ID
	}
	// An event older than the member's last operation is processed at that
	// time (§1): its campaign caps are that day's and month's.
	if st.Last.After(t) {
		if dayOf(st.Last, p.Location) != dayOf(t, p.Location) {
			st.Usage = map[string]int64{}
			rows, err := tx.Query(ctx, `SELECT campaign_id, period, points FROM campaign_usage WHERE member_id = $1 AND period = ANY($2)`, member,
				[]string{fmt.Sprintf("d:%d", dayOf(st.Last, p.Location)), fmt.Sprintf("m:%d", int(monthOf(st.Last, p.Location)))})
			if err != nil {
				return nil, fmt.Errorf("campaign usage: %w", err)
			}
			for rows.Next() {
				var c, period string
				var pts int64
				if err := rows.Scan(&c, &period, &pts); err != nil {
					rows.Close()
					return nil, err
				}
				st.Usage[c+"|"+period] = pts
			}
			rows.Close()
		}
	}
	return st, nil
}

// persist writes what op changed — ledger, lots, account, activity, usage,
// budgets, coupons, grants, tier history, orders, the state row and one
// outbox change per effect — in one round trip. The member's row is locked
// (load), so the outbox sequence read there is the member's.
func (s *Service) persist(ctx context.Context, tx pgx.Tx, st *State, fx *Effects, op Op, ch mcv1.Channel, store string) error {
	if fx.Duplicate || fx.NoOp {
		return nil
	}
	p := s.program()
	member := uuid.MustParse(st.MemberID)
	origin := uuid.MustParse(op.Origin)
	b := &pgx.Batch{}

	var txnIDs []uuid.UUID
	var earned, delta int64
	for i, l := range fx.Ledger {
		id := uuid.Must(uuid.NewV7())
		txnIDs = append(txnIDs, id)
		postgres.QueueLedgerTransaction(b, postgres.LedgerTransaction{
			TransactionID: id, MemberID: member, OriginMemberID: origin, Kind: l.Kind, Reason: l.Reason,
			CauseID: fmt.Sprintf("%s#%d", op.Cause, i), CreatedAt: fx.At,
			Entries: []postgres.LedgerEntry{
				{Account: postgres.MemberAccount(member), MemberID: &member, Delta: l.Delta},
				{Account: l.Counter, Delta: -l.Delta},
			},
		}, p.Version)
		if l.Kind == "earn" {
			earned += l.Delta
		}
		delta += l.Delta
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
		l.dirty = false
		if l.ID == 0 {
			lot := l
			b.Queue(`INSERT INTO point_lots (member_id, origin_member_id, transaction_id, earned, remaining, earned_at,
				available_at, expires_at, order_id, kind) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, nullif($9, ''), $10) RETURNING lot_id`,
				member, uuid.MustParse(l.Origin), txnOf(l.TxnKind), l.Earned, l.Remaining, l.EarnedAt, l.AvailableAt, l.ExpiresAt, l.OrderID, l.TxnKind).
				QueryRow(func(row pgx.Row) error { return row.Scan(&lot.ID) })
			continue
		}
		b.Queue(`UPDATE point_lots SET remaining = $2 WHERE lot_id = $1`, l.ID, l.Remaining)
	}
	if delta != 0 || earned != 0 {
		b.Queue(`UPDATE points_accounts SET balance = balance + $2, lifetime_earned = lifetime_earned + $3, updated_at = now() WHERE member_id = $1`,
			member, delta, earned)
		b.Queue(`INSERT INTO points_accounts (member_id, balance, lifetime_earned) SELECT $1, $2, $3
			WHERE NOT EXISTS (SELECT FROM points_accounts WHERE member_id = $1)`, member, delta, earned)
	}
	for o, months := range st.MonthDelta {
		for m, a := range months {
			b.Queue(`INSERT INTO member_activity AS a (member_id, origin_member_id, month, spend, points, orders)
				VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (member_id, origin_member_id, month) DO UPDATE
				SET spend = a.spend + EXCLUDED.spend, points = a.points + EXCLUDED.points, orders = a.orders + EXCLUDED.orders`,
				member, uuid.MustParse(o), int(m), a.Spend, a.Points, a.Orders)
		}
	}
	for k, v := range st.UsageDelta {
		c, period, _ := strings.Cut(k, "|")
		b.Queue(`INSERT INTO campaign_usage AS u (campaign_id, member_id, period, points) VALUES ($1, $2, $3, $4)
			ON CONFLICT (member_id, campaign_id, period) DO UPDATE SET points = u.points + EXCLUDED.points`, c, member, period, v)
	}
	raced := false
	// Shared rows are updated in a fixed order, so two operations never wait
	// for each other's rows in opposite orders.
	for _, c := range slices.Sorted(maps.Keys(st.BudgetDelta)) {
		v := st.BudgetDelta[c]
		var budget int64
		for _, camp := range p.Campaigns {
			if camp.ID == c {
				budget = camp.Budget
			}
		}
		b.Queue(`INSERT INTO campaign_budgets AS b (campaign_id, spent) VALUES ($1, $2)
			ON CONFLICT (campaign_id) DO UPDATE SET spent = b.spent + EXCLUDED.spent
			WHERE $3 = 0 OR b.spent + EXCLUDED.spent <= $3`, c, v, budget).
			Exec(func(tag pgconn.CommandTag) error {
				raced = raced || tag.RowsAffected() == 0
				return nil
			})
	}
	for _, tpl := range slices.Sorted(maps.Keys(st.TplDelta)) {
		n := st.TplDelta[tpl]
		limit := 0
		if t := p.Coupons[tpl]; t != nil {
			limit = t.TotalLimit
		}
		b.Queue(`INSERT INTO coupon_template_counts AS c (template_id, issued) VALUES ($1, $2)
			ON CONFLICT (template_id) DO UPDATE SET issued = c.issued + EXCLUDED.issued
			WHERE $3 = 0 OR c.issued + EXCLUDED.issued <= $3`, tpl, n, limit).
			Exec(func(tag pgconn.CommandTag) error {
				raced = raced || tag.RowsAffected() == 0
				return nil
			})
	}
	for _, c := range st.Coupons {
		if !c.dirty {
			continue
		}
		if c.isNew {
			b.Queue(`INSERT INTO coupons (code, member_id, origin_member_id, template_id, state, valid_from, valid_until,
				issued_at, cause, order_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, nullif($10, ''))`,
				c.Code, member, uuid.MustParse(c.Origin), c.Template, c.State, c.ValidFrom, c.ValidUntil, c.IssuedAt, c.Cause, c.OrderID)
		} else {
			b.Queue(`UPDATE coupons SET state = $2, order_id = nullif($3, '') WHERE code = $1`, c.Code, c.State, c.OrderID)
		}
		c.dirty, c.isNew = false, false
	}
	for _, id := range fx.Granted {
		if g := st.Grants[id]; g != nil { // nil: granted and revoked within the operation
			b.Queue(`INSERT INTO benefit_grants (member_id, benefit_id, granted_at, cause) VALUES ($1, $2, $3, $4)
				ON CONFLICT (member_id, benefit_id) DO NOTHING`, member, id, g.GrantedAt, g.Cause)
		}
	}
	for _, id := range fx.Revoked {
		b.Queue(`DELETE FROM benefit_grants WHERE member_id = $1 AND benefit_id = $2`, member, id)
	}
	if len(st.Grants) > 0 {
		var ids []string
		var pending []bool
		for id, g := range st.Grants {
			ids, pending = append(ids, id), append(pending, g.PendingRevoke)
		}
		b.Queue(`UPDATE benefit_grants g SET pending_revoke = x.pending
			FROM unnest($2::text[], $3::bool[]) AS x(benefit_id, pending)
			WHERE g.member_id = $1 AND g.benefit_id = x.benefit_id AND g.pending_revoke <> x.pending`, member, ids, pending)
	}
	for _, pair := range []struct {
		ids     []string
		granted bool
	}{{fx.Granted, true}, {fx.Revoked, false}} {
		for _, id := range pair.ids {
			b.Queue(`INSERT INTO benefit_history (member_id, benefit_id, granted, at, cause) VALUES ($1, $2, $3, $4, $5)`,
				member, id, pair.granted, fx.At, op.Cause)
		}
	}
	for _, m := range fx.TierMoves {
		b.Queue(`INSERT INTO tier_history (member_id, from_tier, to_tier, at, reason, cause) VALUES ($1, $2, $3, $4, $5, $6)`,
			member, m.From, m.To, m.At, m.Reason, op.Cause)
	}
	for _, o := range st.Orders {
		if !o.dirty {
			continue
		}
		extras, _ := json.Marshal(o.Extras)
		if o.CouponIDs == nil {
			o.CouponIDs = []string{}
		}
		if o.isNew {
			// The order's lot was inserted earlier in this batch.
			b.Queue(`INSERT INTO orders (order_id, member_id, origin_member_id, at, total, paid, coupon_discount, redeemed,
				earned, coupon_codes, lot_id, extras, cause, program_version)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
				        (SELECT max(lot_id) FROM point_lots WHERE member_id = $2 AND order_id = $1 AND kind = 'earn'), $11, $12, $13)`,
				o.OrderID, member, uuid.MustParse(o.Origin), o.At, o.Total, o.Paid, o.CouponDiscount, o.Redeemed, o.Earned,
				o.CouponIDs, extras, o.Cause, p.Version)
		} else {
			b.Queue(`UPDATE orders SET refunded = $2, reversed = $3, restored = $4, unrecovered = $5, fully_refunded = $6 WHERE order_id = $1`,
				o.OrderID, o.Refunded, o.Reversed, o.Restored, o.Unrecovered, o.FullyRefunded)
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
	b.Queue(`INSERT INTO loyalty_state (member_id, state, updated_at) VALUES ($1, $2, now())
		ON CONFLICT (member_id) DO UPDATE SET state = EXCLUDED.state, updated_at = now()`, member, raw)
	if op.BirthDate != "" {
		b.Queue(`UPDATE members SET attributes = attributes || jsonb_build_object('birth_date', $2::text) WHERE member_id = $1`,
			member, op.BirthDate)
	}
	var rows []postgres.OutboxRow
	for _, c := range fx.Changes(p) {
		c.CauseId, c.Channel, c.StoreId = op.Cause, ch, store
		st.ChangeSeq++
		row, err := s.changes.Row(ctx, member, st.ChangeSeq, c)
		if err != nil {
			return err
		}
		rows = append(rows, row)
	}
	postgres.QueueOutbox(b, rows)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("persist loyalty effects: %w", err)
	}
	if raced {
		return errBudgetRace
	}
	return nil
}
