package postgres

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// usageOfPeriods selects the campaign usage of pairs of members ($1) and
// periods ($2).
const usageOfPeriods = `SELECT u.member_id, u.campaign_id, u.period, u.points FROM campaign_usage u
	JOIN unnest($1::uuid[], $2::text[]) AS w(member_id, period) ON u.member_id = w.member_id AND u.period = w.period`

// AddCampaignUsage adds to each member's loaded rows the campaign usage of
// the periods asked for it (pairs of members and periods), in one
// statement.
func AddCampaignUsage(ctx context.Context, q Batcher, rows map[uuid.UUID]*LoyaltyRows, members []uuid.UUID, periods []string) error {
	if len(members) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	queueMemberRows(b, func(id uuid.UUID) *LoyaltyRows {
		if r := rows[id]; r != nil {
			return r
		}
		return &LoyaltyRows{}
	}, func(r *LoyaltyRows) *[]UsageRow { return &r.Usage }, usageColumns, usageOfPeriods, members, periods)
	if err := q.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("campaign usage: %w", err)
	}
	return nil
}

// LoadLoyaltyBatch is LoadLoyalty for many members at once: one statement
// per kind of row for all of them, in one round trip. Every member row is
// locked when any load asks for it.
func LoadLoyaltyBatch(ctx context.Context, q Batcher, loads []LoyaltyLoad) (map[uuid.UUID]*LoyaltyRows, error) {
	out := make(map[uuid.UUID]*LoyaltyRows, len(loads))
	members := make([]uuid.UUID, 0, len(loads))
	lock := false
	var actM []uuid.UUID
	var actFrom []int
	var useM []uuid.UUID
	var useP []string
	var orders []string
	for _, l := range loads {
		out[l.Member] = &LoyaltyRows{Budgets: map[string]int64{}, TplIssued: map[string]int{}}
		members = append(members, l.Member)
		lock = lock || l.Lock
		actM, actFrom = append(actM, l.Member), append(actFrom, l.ActivityFrom)
		for _, p := range l.Periods {
			useM, useP = append(useM, l.Member), append(useP, p)
		}
		orders = append(orders, l.Orders...)
	}
	of := func(id uuid.UUID) *LoyaltyRows {
		if r := out[id]; r != nil {
			return r
		}
		return &LoyaltyRows{} // not asked for: dropped
	}
	b := &pgx.Batch{}
	labels, labelArgs := labelsSQL(batchLabels(loads), "m.member_id", "$2")
	memberSQL := `SELECT member_id, change_seq, coalesce(attributes->>'birth_date', ''),
		` + labels + `,
		merged_into IS NOT NULL
		FROM members m WHERE member_id = ANY($1) AND status <> 'erased' ORDER BY member_id`
	if lock {
		memberSQL += lockMemberRow
	}
	b.Queue(memberSQL, append([]any{members}, labelArgs...)...).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var id uuid.UUID
			var r LoyaltyRows
			if err := rows.Scan(&id, &r.ChangeSeq, &r.BirthDate, &r.Labels, &r.Merged); err != nil {
				return err
			}
			o := of(id)
			o.Found, o.ChangeSeq, o.BirthDate, o.Labels, o.Merged = true, r.ChangeSeq, r.BirthDate, r.Labels, r.Merged
		}
		return rows.Err()
	})
	queueMemberValues(b, of, func(r *LoyaltyRows, st []byte) { r.State = st },
		`SELECT member_id, state FROM loyalty_state WHERE member_id = ANY($1)`, members)
	windowed, err := queueLots(b, of, loads)
	if err != nil {
		return nil, err
	}
	// Month starts since each member's last evaluated month need their own
	// 12 months.
	queueMemberRows(b, of, func(r *LoyaltyRows) *[]ActivityRow { return &r.Activity }, activityColumns,
		`SELECT a.member_id, a.month, sum(a.spend)::bigint, sum(a.points)::bigint, sum(a.orders)::bigint
		  FROM unnest($1::uuid[], $2::int[]) AS w(member_id, from_month)
		  LEFT JOIN loyalty_state s ON s.member_id = w.member_id
		  JOIN member_activity a ON a.member_id = w.member_id
		   AND a.month >= least(w.from_month, coalesce(s.evaluated, w.from_month) - 12)
		 GROUP BY a.member_id, a.month`, actM, actFrom)
	if len(useM) > 0 {
		queueMemberRows(b, of, func(r *LoyaltyRows) *[]UsageRow { return &r.Usage }, usageColumns, usageOfPeriods, useM, useP)
	}
	// The shared counters the programme limits, once for the batch.
	budgets, tpl := map[string]int64{}, map[string]int{}
	queueCounters(b, budgets, tpl)
	queueMemberRows(b, of, func(r *LoyaltyRows) *[]CouponRow { return &r.Coupons }, couponColumns,
		`SELECT member_id, code, template_id, state, valid_from, valid_until, coalesce(order_id, ''), origin_member_id, issued_at, cause
		FROM coupons WHERE member_id = ANY($1) ORDER BY member_id, issued_at, code`, members)
	queueMemberRows(b, of, func(r *LoyaltyRows) *[]GrantRow { return &r.Grants }, grantColumns,
		`SELECT member_id, benefit_id, granted_at, cause, pending_revoke FROM benefit_grants WHERE member_id = ANY($1)`, members)
	var orderRows []OrderRow
	if len(orders) > 0 {
		queueRows(b, &orderRows, orderColumns, `SELECT order_id, member_id, origin_member_id, at, total, paid, coupon_discount, redeemed, earned, refunded, reversed,
			restored, unrecovered, fully_refunded, coupon_codes, coalesce(lot_id, 0), extras, cause FROM orders WHERE order_id = ANY($1)`, orders)
	}
	if err := q.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("load loyalty state: %w", err)
	}
	var again []LoyaltyLoad
	for _, l := range loads {
		if spendShort(l, out[l.Member]) {
			again = append(again, l.everyLot())
		}
	}
	for _, m := range windowed {
		if err := settle(m, out[m]); err != nil {
			return nil, err
		}
	}
	for _, r := range out {
		r.Budgets, r.TplIssued = budgets, tpl
	}
	// An order goes to every member of the batch that named it (the engine
	// keeps it for the member holding it, and refuses a purchase under it
	// by another), not to every member of the batch.
	namedBy := map[string][]uuid.UUID{}
	for _, l := range loads {
		for _, o := range l.Orders {
			if ms := namedBy[o]; !slices.Contains(ms, l.Member) {
				namedBy[o] = append(ms, l.Member)
			}
		}
	}
	for _, o := range orderRows {
		for _, m := range namedBy[o.OrderID] {
			out[m].OrderRows = append(out[m].OrderRows, o)
		}
	}
	if len(again) > 0 {
		// In the load's transaction, with the members locked as before.
		more, err := LoadLoyaltyBatch(ctx, q, again)
		if err != nil {
			return nil, err
		}
		for m, r := range more {
			r.Budgets, r.TplIssued = budgets, tpl
			out[m] = r
		}
	}
	return out, nil
}

// queueMemberValues queues a statement whose rows are a member id and one
// value, and hands each value to set with its member's row; row answers nil
// for a member not asked for, whose value is dropped.
func queueMemberValues[R, V any](b *pgx.Batch, row func(uuid.UUID) *R, set func(*R, V), sql string, args ...any) {
	b.Queue(sql, args...).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var id uuid.UUID
			var v V
			if err := rows.Scan(&id, &v); err != nil {
				return err
			}
			if r := row(id); r != nil {
				set(r, v)
			}
		}
		return rows.Err()
	})
}

// queueMemberRows queues a statement whose rows are a member id and then
// columns, and appends each row to the list of its member's rows that list
// picks (of drops a member not asked for).
func queueMemberRows[T any](b *pgx.Batch, of func(uuid.UUID) *LoyaltyRows, list func(*LoyaltyRows) *[]T, columns func(*T) []any,
	sql string, args ...any) {
	b.Queue(sql, args...).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var id uuid.UUID
			var v T
			if err := rows.Scan(append([]any{&id}, columns(&v)...)...); err != nil {
				return err
			}
			l := list(of(id))
			*l = append(*l, v)
		}
		return rows.Err()
	})
}

// LoyaltyWrites gathers what operations on members write, to be queued as
// one statement per kind of row.
type LoyaltyWrites struct {
	ProgramVersion string
	Ledger         []LedgerTransaction
	NewLots        []NewLot
	Remaining      map[int64]int64 // lot → what is left of it
	Accounts       map[uuid.UUID]*AccountDelta
	Activity       []ActivityRow
	Usage          []UsageWrite
	Budgets        map[string]*Spend // campaign → points spent
	Templates      map[string]*Spend // coupon template → coupons issued
	NewCoupons     []CouponWrite
	CouponStates   []CouponRow // Code, State, OrderID
	Grants         []GrantWrite
	Revokes        []GrantWrite
	PendingRevokes []PendingRevoke
	History        []BenefitEvent
	TierMoves      []TierMove
	NewOrders      []OrderRow
	Refunds        []OrderRow
	States         map[uuid.UUID][]byte
	BirthDates     map[uuid.UUID]string
	Outbox         []OutboxRow
	Audit          []OperatorAudit      // the operator actions among the operations
	Responses      []IdempotentResponse // answers of the RPCs that made the writes
}

// NewLot is a lot a member earned.
type NewLot struct {
	Member uuid.UUID
	LotRow
}

// AccountDelta changes a member's balance and lifetime points.
type AccountDelta struct{ Delta, Earned int64 }

// UsageWrite is points a campaign gave a member in a period.
type UsageWrite struct {
	Member uuid.UUID
	UsageRow
}

// Spend is an amount taken from a shared limit (0: none).
type Spend struct{ Amount, Limit int64 }

// CouponWrite is a coupon issued to a member.
type CouponWrite struct {
	Member uuid.UUID
	CouponRow
}

// GrantWrite is a benefit granted to (or revoked from) a member.
type GrantWrite struct {
	Member uuid.UUID
	GrantRow
}

// PendingRevoke says whether a held benefit awaits revocation.
type PendingRevoke struct {
	Member  uuid.UUID
	Benefit string
	Pending bool
}

// BenefitEvent is a grant or revocation for the history.
type BenefitEvent struct {
	Member  uuid.UUID
	Benefit string
	Granted bool
	At      time.Time
	Cause   string
}

// TierMove is a tier change for the history.
type TierMove struct {
	Member        uuid.UUID
	From, To      string
	At            time.Time
	Reason, Cause string
}

// NewLoyaltyWrites returns empty writes of programme version v.
func NewLoyaltyWrites(v string) *LoyaltyWrites {
	return &LoyaltyWrites{ProgramVersion: v, Remaining: map[int64]int64{}, Accounts: map[uuid.UUID]*AccountDelta{},
		Budgets: map[string]*Spend{}, Templates: map[string]*Spend{}, States: map[uuid.UUID][]byte{}, BirthDates: map[uuid.UUID]string{}}
}

// Queue queues the writes in b, one statement per kind of row (ledger
// transactions and their entries in one), in an order that respects the
// references between them: lots after their transactions, orders after
// their lots. refused is called when a shared limit (a campaign budget, a
// coupon template's total) would be exceeded: the caller must retry with
// fresh counts.
func (w *LoyaltyWrites) Queue(b *pgx.Batch, refused func()) {
	w.queueLedger(b)
	if n := len(w.NewLots); n > 0 {
		ms, os, txs := make([]uuid.UUID, n), make([]uuid.UUID, n), make([]uuid.UUID, n)
		earned, rem := make([]int64, n), make([]int64, n)
		eat, aat, xat := make([]time.Time, n), make([]time.Time, n), make([]time.Time, n)
		ords, kinds := make([]string, n), make([]string, n)
		for i, l := range w.NewLots {
			ms[i], os[i], txs[i], earned[i], rem[i], eat[i], aat[i], xat[i], ords[i], kinds[i] =
				l.Member, l.Origin, l.TransactionID, l.Earned, l.Remaining, l.EarnedAt, l.AvailableAt, l.ExpiresAt, l.OrderID, l.Kind
		}
		b.Queue(`INSERT INTO point_lots (member_id, origin_member_id, transaction_id, earned, remaining, earned_at,
			available_at, expires_at, order_id, kind)
			SELECT m, o, t, e, r, ea, aa, xa, nullif(ord, ''), k
			  FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[], $5::bigint[], $6::timestamptz[], $7::timestamptz[],
			              $8::timestamptz[], $9::text[], $10::text[]) AS x(m, o, t, e, r, ea, aa, xa, ord, k)`,
			ms, os, txs, earned, rem, eat, aat, xat, ords, kinds)
	}
	if len(w.Remaining) > 0 {
		ids, rem := make([]int64, 0, len(w.Remaining)), make([]int64, 0, len(w.Remaining))
		for id, r := range w.Remaining {
			ids, rem = append(ids, id), append(rem, r)
		}
		b.Queue(`UPDATE point_lots l SET remaining = x.r FROM unnest($1::bigint[], $2::bigint[]) AS x(id, r) WHERE l.lot_id = x.id`, ids, rem)
	}
	if len(w.Accounts) > 0 {
		ms, ds, es := make([]uuid.UUID, 0, len(w.Accounts)), make([]int64, 0, len(w.Accounts)), make([]int64, 0, len(w.Accounts))
		for m, a := range w.Accounts {
			ms, ds, es = append(ms, m), append(ds, a.Delta), append(es, a.Earned)
		}
		// An update, then an insert of the accounts that do not exist: an
		// upsert would check the inserted row (a negative delta) first.
		b.Queue(`UPDATE points_accounts p SET balance = p.balance + x.d, lifetime_earned = p.lifetime_earned + x.e, updated_at = now()
			FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS x(m, d, e) WHERE p.member_id = x.m`, ms, ds, es)
		b.Queue(`INSERT INTO points_accounts (member_id, balance, lifetime_earned, updated_at)
			SELECT m, d, e, now() FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS x(m, d, e)
			 WHERE NOT EXISTS (SELECT FROM points_accounts p WHERE p.member_id = x.m)`, ms, ds, es)
	}
	if n := len(w.Activity); n > 0 {
		ms, os, mo := make([]uuid.UUID, n), make([]uuid.UUID, n), make([]int, n)
		sp, pt, or := make([]int64, n), make([]int64, n), make([]int64, n)
		for i, a := range w.Activity {
			ms[i], os[i], mo[i], sp[i], pt[i], or[i] = a.Member, a.Origin, a.Month, a.Spend, a.Points, a.Orders
		}
		b.Queue(`INSERT INTO member_activity AS a (member_id, origin_member_id, month, spend, points, orders)
			SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::bigint[], $5::bigint[], $6::bigint[])
			ON CONFLICT (member_id, origin_member_id, month) DO UPDATE
			SET spend = a.spend + EXCLUDED.spend, points = a.points + EXCLUDED.points, orders = a.orders + EXCLUDED.orders`,
			ms, os, mo, sp, pt, or)
	}
	if n := len(w.Usage); n > 0 {
		cs, ms, ps, pts := make([]string, n), make([]uuid.UUID, n), make([]string, n), make([]int64, n)
		for i, u := range w.Usage {
			cs[i], ms[i], ps[i], pts[i] = u.Campaign, u.Member, u.Period, u.Points
		}
		b.Queue(`INSERT INTO campaign_usage AS u (campaign_id, member_id, period, points)
			SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::bigint[])
			ON CONFLICT (member_id, campaign_id, period) DO UPDATE SET points = u.points + EXCLUDED.points`, cs, ms, ps, pts)
	}
	// Shared rows in a fixed order, so two batches never wait for each
	// other's rows in opposite orders.
	for _, c := range sortedKeys(w.Budgets) {
		QueueBudgetSpend(b, c, w.Budgets[c].Amount, w.Budgets[c].Limit, refused)
	}
	for _, t := range sortedKeys(w.Templates) {
		QueueCouponsIssued(b, t, int(w.Templates[t].Amount), int(w.Templates[t].Limit), refused)
	}
	if n := len(w.NewCoupons); n > 0 {
		codes, ms, os, tpls, sts := make([]string, n), make([]uuid.UUID, n), make([]uuid.UUID, n), make([]string, n), make([]string, n)
		vf, vu, ia := make([]time.Time, n), make([]time.Time, n), make([]time.Time, n)
		causes, ords := make([]string, n), make([]string, n)
		for i, c := range w.NewCoupons {
			codes[i], ms[i], os[i], tpls[i], sts[i], vf[i], vu[i], ia[i], causes[i], ords[i] =
				c.Code, c.Member, c.Origin, c.Template, c.State, c.ValidFrom, c.ValidUntil, c.IssuedAt, c.Cause, c.OrderID
		}
		b.Queue(`INSERT INTO coupons (code, member_id, origin_member_id, template_id, state, valid_from, valid_until, issued_at, cause, order_id)
			SELECT c, m, o, t, s, vf, vu, ia, ca, nullif(ord, '')
			  FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::timestamptz[], $7::timestamptz[],
			              $8::timestamptz[], $9::text[], $10::text[]) AS x(c, m, o, t, s, vf, vu, ia, ca, ord)`,
			codes, ms, os, tpls, sts, vf, vu, ia, causes, ords)
	}
	if n := len(w.CouponStates); n > 0 {
		codes, sts, ords := make([]string, n), make([]string, n), make([]string, n)
		for i, c := range w.CouponStates {
			codes[i], sts[i], ords[i] = c.Code, c.State, c.OrderID
		}
		b.Queue(`UPDATE coupons c SET state = x.s, order_id = nullif(x.o, '') FROM unnest($1::text[], $2::text[], $3::text[]) AS x(code, s, o)
			WHERE c.code = x.code`, codes, sts, ords)
	}
	if n := len(w.Grants); n > 0 {
		ms, bs, at, cs := make([]uuid.UUID, n), make([]string, n), make([]time.Time, n), make([]string, n)
		for i, g := range w.Grants {
			ms[i], bs[i], at[i], cs[i] = g.Member, g.Benefit, g.GrantedAt, g.Cause
		}
		b.Queue(`INSERT INTO benefit_grants (member_id, benefit_id, granted_at, cause)
			SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[]) ON CONFLICT (member_id, benefit_id) DO NOTHING`,
			ms, bs, at, cs)
	}
	if n := len(w.Revokes); n > 0 {
		ms, bs := make([]uuid.UUID, n), make([]string, n)
		for i, g := range w.Revokes {
			ms[i], bs[i] = g.Member, g.Benefit
		}
		b.Queue(`DELETE FROM benefit_grants g USING unnest($1::uuid[], $2::text[]) AS x(m, b) WHERE g.member_id = x.m AND g.benefit_id = x.b`, ms, bs)
	}
	if n := len(w.PendingRevokes); n > 0 {
		ms, bs, ps := make([]uuid.UUID, n), make([]string, n), make([]bool, n)
		for i, p := range w.PendingRevokes {
			ms[i], bs[i], ps[i] = p.Member, p.Benefit, p.Pending
		}
		b.Queue(`UPDATE benefit_grants g SET pending_revoke = x.p FROM unnest($1::uuid[], $2::text[], $3::bool[]) AS x(m, b, p)
			WHERE g.member_id = x.m AND g.benefit_id = x.b AND g.pending_revoke <> x.p`, ms, bs, ps)
	}
	if n := len(w.History); n > 0 {
		ms, bs, gs, at, cs := make([]uuid.UUID, n), make([]string, n), make([]bool, n), make([]time.Time, n), make([]string, n)
		for i, h := range w.History {
			ms[i], bs[i], gs[i], at[i], cs[i] = h.Member, h.Benefit, h.Granted, h.At, h.Cause
		}
		b.Queue(`INSERT INTO benefit_history (member_id, benefit_id, granted, at, cause)
			SELECT * FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::timestamptz[], $5::text[])`, ms, bs, gs, at, cs)
	}
	if n := len(w.TierMoves); n > 0 {
		ms, fs, ts, at, rs, cs := make([]uuid.UUID, n), make([]string, n), make([]string, n), make([]time.Time, n), make([]string, n), make([]string, n)
		for i, m := range w.TierMoves {
			ms[i], fs[i], ts[i], at[i], rs[i], cs[i] = m.Member, m.From, m.To, m.At, m.Reason, m.Cause
		}
		b.Queue(`INSERT INTO tier_history (member_id, from_tier, to_tier, at, reason, cause)
			SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[])`, ms, fs, ts, at, rs, cs)
	}
	if n := len(w.NewOrders); n > 0 {
		ids, ms, os := make([]string, n), make([]uuid.UUID, n), make([]uuid.UUID, n)
		at := make([]time.Time, n)
		tot, paid, cd, red, earn := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
		codes, extras, causes := make([]string, n), make([][]byte, n), make([]string, n)
		for i, o := range w.NewOrders {
			ids[i], ms[i], os[i], at[i], tot[i], paid[i], cd[i], red[i], earn[i], extras[i], causes[i] =
				o.OrderID, o.Member, o.Origin, o.At, o.Total, o.Paid, o.CouponDiscount, o.Redeemed, o.Earned, o.Extras, o.Cause
			codes[i] = textArray(o.CouponCodes)
		}
		// The order's earning lot was inserted earlier in the batch.
		b.Queue(`INSERT INTO orders (order_id, member_id, origin_member_id, at, total, paid, coupon_discount, redeemed,
			earned, coupon_codes, lot_id, extras, cause, program_version)
			SELECT x.id, x.m, x.o, x.at, x.tot, x.paid, x.cd, x.red, x.earn, x.codes::text[],
			       (SELECT max(lot_id) FROM point_lots WHERE member_id = x.m AND order_id = x.id AND kind = 'earn'), x.extras, x.cause, $13
			  FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::timestamptz[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[],
			              $9::bigint[], $10::text[], $11::jsonb[], $12::text[]) AS x(id, m, o, at, tot, paid, cd, red, earn, codes, extras, cause)`,
			ids, ms, os, at, tot, paid, cd, red, earn, codes, extras, causes, w.ProgramVersion)
	}
	if n := len(w.Refunds); n > 0 {
		ids := make([]string, n)
		ref, rev, res, unr := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
		full := make([]bool, n)
		for i, o := range w.Refunds {
			ids[i], ref[i], rev[i], res[i], unr[i], full[i] = o.OrderID, o.Refunded, o.Reversed, o.Restored, o.Unrecovered, o.FullyRefunded
		}
		b.Queue(`UPDATE orders o SET refunded = x.ref, reversed = x.rev, restored = x.res, unrecovered = x.unr, fully_refunded = x.fully
			FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bool[]) AS x(id, ref, rev, res, unr, fully)
			WHERE o.order_id = x.id`, ids, ref, rev, res, unr, full)
	}
	if len(w.States) > 0 {
		ms, sts := make([]uuid.UUID, 0, len(w.States)), make([][]byte, 0, len(w.States))
		for m, st := range w.States {
			ms, sts = append(ms, m), append(sts, st)
		}
		b.Queue(`INSERT INTO loyalty_state (member_id, state, updated_at) SELECT m, s, now() FROM unnest($1::uuid[], $2::jsonb[]) AS x(m, s)
			ON CONFLICT (member_id) DO UPDATE SET state = EXCLUDED.state, updated_at = now()`, ms, sts)
	}
	if len(w.BirthDates) > 0 {
		ms, ds := make([]uuid.UUID, 0, len(w.BirthDates)), make([]string, 0, len(w.BirthDates))
		for m, d := range w.BirthDates {
			ms, ds = append(ms, m), append(ds, d)
		}
		b.Queue(`UPDATE members m SET attributes = m.attributes || jsonb_build_object('birth_date', x.d)
			FROM unnest($1::uuid[], $2::text[]) AS x(id, d) WHERE m.member_id = x.id`, ms, ds)
	}
	QueueOutbox(b, w.Outbox)
	QueueOperatorAudit(b, w.Audit)
	QueueIdempotentResponses(b, w.Responses)
}

// queueLedger writes the transactions and their entries in one statement.
func (w *LoyaltyWrites) queueLedger(b *pgx.Batch) {
	if len(w.Ledger) == 0 {
		return
	}
	n := len(w.Ledger)
	ids, ms, os := make([]uuid.UUID, n), make([]uuid.UUID, n), make([]uuid.UUID, n)
	kinds, reasons, causes := make([]string, n), make([]string, n), make([]string, n)
	at := make([]time.Time, n)
	var eTx []uuid.UUID
	var eAcct []string
	var eMember []*uuid.UUID
	var eDelta []int64
	var eAt []time.Time
	for i, t := range w.Ledger {
		origin := t.OriginMemberID
		if origin == uuid.Nil {
			origin = t.MemberID
		}
		ids[i], ms[i], os[i], kinds[i], reasons[i], causes[i], at[i] = t.TransactionID, t.MemberID, origin, t.Kind, t.Reason, t.CauseID, t.CreatedAt
		for _, e := range t.Entries {
			eTx, eAcct, eMember, eDelta, eAt = append(eTx, t.TransactionID), append(eAcct, e.Account), append(eMember, e.MemberID),
				append(eDelta, e.Delta), append(eAt, t.CreatedAt)
		}
	}
	b.Queue(`WITH t AS (
		INSERT INTO ledger_transactions (transaction_id, member_id, origin_member_id, kind, reason, cause_id, created_at, program_version)
		SELECT x.id, x.m, x.o, x.k, x.r, x.c, x.at, $8
		  FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::timestamptz[]) AS x(id, m, o, k, r, c, at)
		RETURNING transaction_id)
		INSERT INTO ledger_entries (transaction_id, account, member_id, delta, created_at)
		SELECT e.tx, e.account, e.member_id, e.delta, e.at FROM unnest($9::uuid[], $10::text[], $11::uuid[], $12::bigint[], $13::timestamptz[])
		       AS e(tx, account, member_id, delta, at)
		 WHERE e.tx IN (SELECT transaction_id FROM t)`,
		ids, ms, os, kinds, reasons, causes, at, w.ProgramVersion, eTx, eAcct, eMember, eDelta, eAt)
}

// textArray renders a list as a PostgreSQL array literal, for an array of
// arrays passed through unnest (which would flatten a text[][]).
func textArray(xs []string) string {
	var b []byte
	b = append(b, '{')
	for i, x := range xs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		for _, c := range []byte(x) {
			if c == '"' || c == '\\' {
				b = append(b, '\\')
			}
			b = append(b, c)
		}
		b = append(b, '"')
	}
	return string(append(b, '}'))
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// batchLabels is what a batch of loads reads of its members' labels: every
// true label when a load asks for every one, else the labels any load
// names.
func batchLabels(loads []LoyaltyLoad) LabelsRead {
	out := LabelsRead{Named: true}
	for _, l := range loads {
		if !l.Labels.Named {
			return LabelsRead{}
		}
		for _, id := range l.Labels.Only {
			if !slices.Contains(out.Only, id) {
				out.Only = append(out.Only, id)
			}
		}
	}
	return out
}

// windowSQL is the members whose open lots are read with a window ($1), the
// window's start and end ($2, $3: the earliest and latest of their
// operations' times) and the points their operations may spend ($4), with
// t the end or the member's last operation, whichever is later (an older
// event is applied at that time). Materialized, so that t is computed once
// a member, not once a lot.
const windowSQL = `WITH w AS MATERIALIZED (
	SELECT w.member_id, w.available_from, w.spend, greatest(w.settled_after, (s.state->>'last')::timestamptz) AS t
	  FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::bigint[]) AS w(member_id, available_from, settled_after, spend)
	  LEFT JOIN loyalty_state s ON s.member_id = w.member_id)
`

// lotSelect and lotSelectL are the select list of a lot (lotColumns) of
// point_lots, unqualified and of the row named l.
var lotSelect, lotSelectL = lotSelectOf(""), lotSelectOf("l.")

func lotSelectOf(alias string) string {
	return strings.ReplaceAll(`@lot_id, @earned, @remaining, @earned_at, @available_at, @expires_at, coalesce(@order_id, ''), @origin_member_id, @kind`, "@", alias)
}

// queueLots queues the reads of the loads' open lots (LoyaltyLoad) into
// the rows of, and returns the members whose lots are read with a window
// (settle them once read).
func queueLots(b *pgx.Batch, of func(uuid.UUID) *LoyaltyRows, loads []LoyaltyLoad) (windowed []uuid.UUID, err error) {
	var all []uuid.UUID
	pending, spend := false, false
	var froms []pgtype.Timestamptz
	var tos []time.Time
	var spends []int64
	for _, l := range loads {
		if l.SettledAfter.IsZero() {
			all = append(all, l.Member)
			continue
		}
		if err := l.checkWindow(); err != nil {
			return nil, err
		}
		pending, spend = pending || !l.AvailableFrom.IsZero(), spend || l.SpendUpTo > 0
		windowed, froms, tos, spends = append(windowed, l.Member), append(froms, pendingFrom(l)), append(tos, l.SettledAfter), append(spends, l.SpendUpTo)
	}
	lots := func(r *LoyaltyRows) *[]LotRow { return &r.Lots }
	if len(all) > 0 {
		queueMemberRows(b, of, lots, lotColumns,
			`SELECT member_id, `+lotSelect+` FROM point_lots WHERE member_id = ANY($1) AND remaining > 0 ORDER BY member_id, lot_id`, all)
	}
	if len(windowed) == 0 {
		return nil, nil
	}
	args := []any{windowed, froms, tos, spends}
	// One by one: the lots expiring by t (point_lots_open), and the ones
	// pending at the window's start that become available by t
	// (point_lots_pending); a lot both is read twice, and kept once
	// (settle). Each statement reads its own index range: one statement
	// with both conditions ORed is planned as one scan of every open lot
	// of each member.
	queueMemberRows(b, of, lots, lotColumns, windowSQL+`SELECT w.member_id, `+lotSelectL+` FROM w
		JOIN point_lots l ON l.member_id = w.member_id AND l.remaining > 0 AND l.expires_at <= w.t`, args...)
	if pending {
		queueMemberRows(b, of, lots, lotColumns, windowSQL+`SELECT w.member_id, `+lotSelectL+` FROM w
			JOIN point_lots l ON l.member_id = w.member_id AND l.remaining > 0 AND l.available_at > w.available_from AND l.available_at <= w.t`, args...)
		// Summed: the ones still pending after t (Pending), which no
		// operation of the window can spend.
		// (An index-only scan of point_lots_pending.)
		queueMemberValues(b, of, func(r *LoyaltyRows, pending int64) { r.Pending = pending }, windowSQL+`SELECT w.member_id,
			coalesce((SELECT sum(l.remaining) FROM point_lots l WHERE l.member_id = w.member_id AND l.remaining > 0 AND l.available_at > w.t AND l.expires_at > w.t), 0)::bigint
			FROM w WHERE w.available_from < 'infinity'`, args...)
	}
	// One by one, in the order points are spent (earliest expiry, then
	// lot): the first spendChunk lots available throughout the window.
	// They hold the points its operations may spend but for a member with
	// many small lots and a large spending, which is read again with every
	// lot (spendShort).
	if spend {
		queueMemberRows(b, of, func(r *LoyaltyRows) *[]LotRow { return &r.spendable }, lotColumns, windowSQL+`SELECT w.member_id, `+lotSelectL+` FROM w
			CROSS JOIN LATERAL (SELECT * FROM point_lots l WHERE l.member_id = w.member_id AND l.remaining > 0 AND l.expires_at > w.t AND l.available_at <= w.available_from
			 ORDER BY l.expires_at, l.lot_id LIMIT `+strconv.Itoa(spendChunk)+`) l
			WHERE w.spend > 0`, args...)
	}
	// The balance the summed lots are the rest of (settle).
	queueMemberValues(b, of, func(r *LoyaltyRows, balance int64) { r.balance = balance },
		`SELECT member_id, balance FROM points_accounts WHERE member_id = ANY($1)`, windowed)
	return windowed, nil
}

// spendChunk is how many of a member's lots a load that spends reads in
// spending order at first (LoyaltyLoad.SpendUpTo).
const spendChunk = 32

// spendShort says whether the lots l read in spending order hold fewer
// points than it may spend while there are more: r must then be read
// again with every lot.
func spendShort(l LoyaltyLoad, r *LoyaltyRows) bool {
	if l.SpendUpTo <= 0 || len(r.spendable) < spendChunk {
		return false
	}
	var held int64
	for _, x := range r.spendable {
		held += x.Remaining
	}
	return held < l.SpendUpTo
}
