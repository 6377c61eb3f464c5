package postgres

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// The loyalty programme's tables: loyalty_state (a member's small state),
// point_lots, points_accounts, member_activity (tier inputs by month and
// origin), campaign_usage, campaign_budgets, coupon_template_counts,
// coupons, benefit_grants and their history, tier_history, orders.

// LoyaltyLoad says what to read of a member.
type LoyaltyLoad struct {
	Member uuid.UUID
	// Lock locks the member row (an operation that writes).
	Lock bool
	// ActivityFrom is the first month of activity wanted, unless the
	// member's state was evaluated earlier than a year after it.
	ActivityFrom int
	// Periods of campaign usage wanted ("d:<day>", "m:<month>").
	Periods []string
	// Orders to read, with their lots.
	Orders []string
	// SettledAfter, when set, asks for the open lots the operations can
	// change one by one and the others as one sum (LoyaltyRows.Settled),
	// for operations that add points and read of an existing lot only
	// whether it counts in the balance (no spending, no refund, nothing
	// that reads which points are available): read one by one are the
	// lots expiring by SettledAfter or by the member's last operation,
	// whichever is later (an older event is applied at that time); every
	// other open lot counts in the balance throughout, and is summed.
	SettledAfter time.Time
	// AvailableFrom, with SettledAfter, also reads one by one the open
	// lots still pending at AvailableFrom (point_lots_pending), so that the
	// settled sum is available from then on, and sums the ones pending
	// past the window (LoyaltyRows.Pending): for operations that read
	// which points are available (an answer's available points).
	AvailableFrom time.Time
	// SpendUpTo, with AvailableFrom, also reads one by one, in the order
	// points are spent (earliest expiry, then lot), the open lots available
	// at AvailableFrom and not expiring by the window, until they hold
	// SpendUpTo points: for operations that spend at most that many points
	// in all. The settled sum is then spent by none of them.
	SpendUpTo int64
	// Labels says which of the member's true labels are read
	// (LoyaltyRows.Labels); the zero value reads every one.
	Labels LabelsRead
}

// LabelsRead says which of a member's true labels a load reads: every one,
// or, when Named, only those in Only (none when it is empty). A programme
// that reads no label, or a few by name, spares the read of every label
// row of the member.
type LabelsRead struct {
	Named bool
	Only  []string
}

// labelsSQL is the select-list expression of the member's true labels, in
// label order, read as l says, and the arguments it adds to the
// statement's: member is the SQL of the member's id, only the parameter
// that holds l.Only when the expression needs it.
func labelsSQL(l LabelsRead, member, only string) (string, []any) {
	return labelsSQLIn(l, member, `= ANY(`+only+`::text[])`, []any{l.Only})
}

// labelsOfMemberSQL is labelsSQL for one member's statement whose
// parameters end at $last: the labels are parameters of their own
// (paramList), so PostgreSQL plans the statement once.
func labelsOfMemberSQL(l LabelsRead, last int) (string, []any) {
	return labelsSQLIn(l, "$1", "IN ("+paramList(last+1, len(l.Only))+")", anys(l.Only))
}

// labelsSQLIn is labelsSQL with the label ids' condition (in) and its
// arguments given.
func labelsSQLIn(l LabelsRead, member, in string, args []any) (string, []any) {
	switch {
	case !l.Named:
		return `coalesce((SELECT l.labels FROM member_label_sets l WHERE l.member_id = ` + member + `), '{}')`, nil
	case len(l.Only) == 0:
		return `'{}'::text[]`, nil
	}
	return `coalesce((SELECT array_agg(x ORDER BY x) FROM member_label_sets l, unnest(l.labels) x WHERE l.member_id = ` + member + ` AND x ` + in + `), '{}')`, args
}

// paramList is the SQL of n parameters from $first on ("$2, $3"). A
// statement of one member's that reads a few keys names them so rather than
// as an array (= ANY($2)): under PostgreSQL's default plan_cache_mode a
// statement with an array parameter is planned again at every call (its
// generic plan, costed for an array of unknown length, looks dearer than
// the custom one), which cost a Quote more than running the statement. The
// platform's pools force generic plans (Open), but a URL may restore the
// default; a Quote's statements are planned once either way.
func paramList(first, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("$" + strconv.Itoa(first+i))
	}
	return b.String()
}

// LoyaltyRows is what the benefit engine loads of a member.
type LoyaltyRows struct {
	Found     bool
	Merged    bool
	ChangeSeq int64
	BirthDate string
	Labels    []string // the labels that are true
	State     []byte   // loyalty_state; nil when none
	// Lots are the open lots (points left), by id. A named order's lot is
	// among them while it is open; a spent one is not read: the programme
	// uses an order's lot only while it has points left, and an order's lot
	// is its member's (lots and orders move together on merges, by origin).
	Lots []LotRow
	// Settled is the sum of the open lots not in Lots, when the load asked
	// for it (LoyaltyLoad.SettledAfter): the member's balance less the
	// lots read, as balance and open lots agree (the ledger invariant).
	Settled int64
	// Pending, with LoyaltyLoad.AvailableFrom, is the sum of the open
	// lots still pending after the window, not in Lots nor in Settled.
	Pending   int64
	balance   int64    // with a window, the member's balance (settle)
	spendable []LotRow // with a window, lots read in spending order (settle)
	Activity  []ActivityRow
	Usage     []UsageRow
	Budgets   map[string]int64 // campaign → points spent
	TplIssued map[string]int   // coupon template → coupons issued
	Coupons   []CouponRow
	Grants    []GrantRow
	OrderRows []OrderRow
	// TakenOrders holds the ids of orders other members of the same
	// transaction recorded before this member's turn (not written yet):
	// order ids are unique across members. Shared: read it, never write.
	TakenOrders map[string]bool
}

// LotRow is a lot of points.
type LotRow struct {
	ID                               int64
	Earned, Remaining                int64
	EarnedAt, AvailableAt, ExpiresAt time.Time
	OrderID                          string
	Origin                           uuid.UUID
	Kind                             string // the kind of transaction that made it
	TransactionID                    uuid.UUID
}

// ActivityRow is a month of tier inputs.
type ActivityRow struct {
	Month                 int
	Spend, Points, Orders int64
	Member, Origin        uuid.UUID // for writes
}

// UsageRow is a campaign's points in a period.
type UsageRow struct {
	Campaign, Period string
	Points           int64
}

// CouponRow is an issued coupon.
type CouponRow struct {
	Code, Template, State string
	ValidFrom, ValidUntil time.Time
	OrderID               string
	Origin                uuid.UUID
	IssuedAt              time.Time
	Cause                 string
}

// GrantRow is a benefit held.
type GrantRow struct {
	Benefit       string
	GrantedAt     time.Time
	Cause         string
	PendingRevoke bool
}

// OrderRow is a purchase the programme recorded.
type OrderRow struct {
	OrderID                               string
	Member, Origin                        uuid.UUID
	At                                    time.Time
	Total, Paid, CouponDiscount, Redeemed int64
	Earned, Refunded, Reversed, Restored  int64
	Unrecovered                           int64
	FullyRefunded                         bool
	CouponCodes                           []string
	LotID                                 int64
	Extras                                []byte
	Cause                                 string
}

// The columns a load reads of each kind of row, in its statements' order.

func lotColumns(l *LotRow) []any {
	return []any{&l.ID, &l.Earned, &l.Remaining, &l.EarnedAt, &l.AvailableAt, &l.ExpiresAt, &l.OrderID, &l.Origin, &l.Kind}
}

func activityColumns(a *ActivityRow) []any { return []any{&a.Month, &a.Spend, &a.Points, &a.Orders} }

func usageColumns(u *UsageRow) []any { return []any{&u.Campaign, &u.Period, &u.Points} }

func couponColumns(c *CouponRow) []any {
	return []any{&c.Code, &c.Template, &c.State, &c.ValidFrom, &c.ValidUntil, &c.OrderID, &c.Origin, &c.IssuedAt, &c.Cause}
}

func grantColumns(g *GrantRow) []any {
	return []any{&g.Benefit, &g.GrantedAt, &g.Cause, &g.PendingRevoke}
}

func orderColumns(o *OrderRow) []any {
	return []any{&o.OrderID, &o.Member, &o.Origin, &o.At, &o.Total, &o.Paid, &o.CouponDiscount, &o.Redeemed, &o.Earned,
		&o.Refunded, &o.Reversed, &o.Restored, &o.Unrecovered, &o.FullyRefunded, &o.CouponCodes, &o.LotID, &o.Extras, &o.Cause}
}

// queueRows queues a statement and appends each row it returns, scanned
// into columns, to out.
func queueRows[T any](b *pgx.Batch, out *[]T, columns func(*T) []any, sql string, args ...any) {
	b.Queue(sql, args...).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var v T
			if err := rows.Scan(columns(&v)...); err != nil {
				return err
			}
			*out = append(*out, v)
		}
		return rows.Err()
	})
}

// queueCounters queues the read of the shared counters the programme limits
// (campaign budgets, coupon template totals), in one statement.
func queueCounters(b *pgx.Batch, budgets map[string]int64, issued map[string]int) {
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
					budgets[id] = v
				} else {
					issued[id] = int(v)
				}
			}
			return rows.Err()
		})
}

// LoadLoyalty reads, in one round trip, the member row (locked when
// writing, which also serialises the member's outbox sequence), its state,
// open lots, activity, campaign usage, the shared counters, its coupons,
// grants and the named orders. Every statement is planned once (a generic
// plan): the open lots are read alone, not joined to the named orders' lots
// (a union PostgreSQL planned again for every call, half of a Quote's
// time in PostgreSQL).
func LoadLoyalty(ctx context.Context, q Batcher, l LoyaltyLoad) (LoyaltyRows, error) {
	r := LoyaltyRows{Budgets: map[string]int64{}, TplIssued: map[string]int{}}
	b := &pgx.Batch{}
	labels, labelArgs := labelsOfMemberSQL(l.Labels, 1)
	args := append([]any{l.Member}, labelArgs...)
	// With a window, the balance and the sum of the lots still pending
	// after it, in the same statement (one fewer for every Quote).
	sums := "0::bigint, 0::bigint"
	if !l.SettledAfter.IsZero() {
		sums = memberSums(fmt.Sprintf("$%d", len(args)+1), fmt.Sprintf("$%d", len(args)+2))
		args = append(args, l.SettledAfter, pendingFrom(l))
	}
	memberSQL := `SELECT change_seq, coalesce(attributes->>'birth_date', ''),
		` + labels + `,
		merged_into IS NOT NULL, ` + sums + `,
		(SELECT state FROM loyalty_state WHERE member_id = $1)
		FROM members WHERE member_id = $1 AND status <> 'erased'`
	if l.Lock {
		memberSQL += lockMemberRow
	}
	b.Queue(memberSQL, args...).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			r.Found = true
			if err := rows.Scan(&r.ChangeSeq, &r.BirthDate, &r.Labels, &r.Merged, &r.balance, &r.Pending, &r.State); err != nil {
				return err
			}
		}
		return rows.Err()
	})
	windowed, err := queueMemberLots(b, &r, l)
	if err != nil {
		return r, err
	}
	// Month starts since the last evaluated month need their own 12 months.
	queueRows(b, &r.Activity, activityColumns, `SELECT month, sum(spend)::bigint, sum(points)::bigint, sum(orders)::bigint FROM member_activity
		WHERE member_id = $1
		  AND month >= least($2::int, coalesce((SELECT evaluated FROM loyalty_state WHERE member_id = $1), $2::int) - 12)
		GROUP BY month`, l.Member, l.ActivityFrom)
	queueUsage(b, l.Member, l.Periods, &r.Usage)
	queueCounters(b, r.Budgets, r.TplIssued)
	queueRows(b, &r.Coupons, couponColumns, `SELECT code, template_id, state, valid_from, valid_until, coalesce(order_id, ''), origin_member_id, issued_at, cause
		FROM coupons WHERE member_id = $1 ORDER BY issued_at, code`, l.Member)
	queueRows(b, &r.Grants, grantColumns, `SELECT benefit_id, granted_at, cause, pending_revoke FROM benefit_grants WHERE member_id = $1`, l.Member)
	if len(l.Orders) > 0 {
		queueRows(b, &r.OrderRows, orderColumns, `SELECT order_id, member_id, origin_member_id, at, total, paid, coupon_discount, redeemed, earned, refunded, reversed,
			restored, unrecovered, fully_refunded, coupon_codes, coalesce(lot_id, 0), extras, cause FROM orders WHERE order_id IN (`+paramList(1, len(l.Orders))+`)`,
			anys(l.Orders)...)
	}
	if err := q.SendBatch(ctx, b).Close(); err != nil {
		return r, fmt.Errorf("load loyalty state: %w", err)
	}
	if spendShort(l, &r) {
		return LoadLoyalty(ctx, q, l.everyLot()) // in a snapshot of its own
	}
	if windowed {
		if err := settle(l.Member, &r); err != nil {
			return r, err
		}
	}
	return r, nil
}

func queueUsage(b *pgx.Batch, member uuid.UUID, periods []string, out *[]UsageRow) {
	if len(periods) == 0 {
		return
	}
	queueRows(b, out, usageColumns, `SELECT campaign_id, period, points FROM campaign_usage WHERE member_id = $1 AND period IN (`+paramList(2, len(periods))+`)`,
		append([]any{member}, anys(periods)...)...)
}

// anys is ss as statement arguments.
func anys(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// CampaignUsage reads a member's campaign usage in the given periods.
func CampaignUsage(ctx context.Context, q Batcher, member uuid.UUID, periods []string) ([]UsageRow, error) {
	var out []UsageRow
	b := &pgx.Batch{}
	queueUsage(b, member, periods, &out)
	if err := q.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("campaign usage: %w", err)
	}
	return out, nil
}

// QueueNewLot queues a lot's insert; id receives its number.
func QueueNewLot(b *pgx.Batch, member uuid.UUID, l LotRow, id *int64) {
	b.Queue(`INSERT INTO point_lots (member_id, origin_member_id, transaction_id, earned, remaining, earned_at,
		available_at, expires_at, order_id, kind) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, nullif($9, ''), $10) RETURNING lot_id`,
		member, l.Origin, l.TransactionID, l.Earned, l.Remaining, l.EarnedAt, l.AvailableAt, l.ExpiresAt, l.OrderID, l.Kind).
		QueryRow(func(row pgx.Row) error { return row.Scan(id) })
}

// QueueLotRemaining queues what is left of a lot.
func QueueLotRemaining(b *pgx.Batch, lot, remaining int64) {
	b.Queue(`UPDATE point_lots SET remaining = $2 WHERE lot_id = $1`, lot, remaining)
}

// QueueAccountDelta queues a change of a member's balance and lifetime
// points, creating the account when it is the first.
func QueueAccountDelta(b *pgx.Batch, member uuid.UUID, delta, earned int64) {
	b.Queue(`UPDATE points_accounts SET balance = balance + $2, lifetime_earned = lifetime_earned + $3, updated_at = now() WHERE member_id = $1`,
		member, delta, earned)
	b.Queue(`INSERT INTO points_accounts (member_id, balance, lifetime_earned) SELECT $1, $2, $3
		WHERE NOT EXISTS (SELECT FROM points_accounts WHERE member_id = $1)`, member, delta, earned)
}

// QueueActivity queues tier inputs added to a month.
func QueueActivity(b *pgx.Batch, a ActivityRow) {
	b.Queue(`INSERT INTO member_activity AS a (member_id, origin_member_id, month, spend, points, orders)
		VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (member_id, origin_member_id, month) DO UPDATE
		SET spend = a.spend + EXCLUDED.spend, points = a.points + EXCLUDED.points, orders = a.orders + EXCLUDED.orders`,
		a.Member, a.Origin, a.Month, a.Spend, a.Points, a.Orders)
}

// QueueCampaignUsage queues points a campaign gave in a period.
func QueueCampaignUsage(b *pgx.Batch, member uuid.UUID, u UsageRow) {
	b.Queue(`INSERT INTO campaign_usage AS u (campaign_id, member_id, period, points) VALUES ($1, $2, $3, $4)
		ON CONFLICT (member_id, campaign_id, period) DO UPDATE SET points = u.points + EXCLUDED.points`, u.Campaign, member, u.Period, u.Points)
}

// QueueBudgetSpend queues points spent from a campaign's budget (limit 0:
// none); refused is called when the budget would be exceeded (by the first
// spend too).
func QueueBudgetSpend(b *pgx.Batch, campaign string, points, limit int64, refused func()) {
	b.Queue(`INSERT INTO campaign_budgets AS b (campaign_id, spent) SELECT $1::text, $2::bigint WHERE $3::bigint = 0 OR $2::bigint <= $3::bigint
		ON CONFLICT (campaign_id) DO UPDATE SET spent = b.spent + EXCLUDED.spent
		WHERE $3 = 0 OR b.spent + EXCLUDED.spent <= $3`, campaign, points, limit).
		Exec(refusedIfNone(refused))
}

// QueueCouponsIssued queues coupons issued of a template (limit 0: none);
// refused is called when the template's total would be exceeded (by the
// first coupons too).
func QueueCouponsIssued(b *pgx.Batch, template string, n, limit int, refused func()) {
	b.Queue(`INSERT INTO coupon_template_counts AS c (template_id, issued) SELECT $1::text, $2::int WHERE $3::int = 0 OR $2::int <= $3::int
		ON CONFLICT (template_id) DO UPDATE SET issued = c.issued + EXCLUDED.issued
		WHERE $3 = 0 OR c.issued + EXCLUDED.issued <= $3`, template, n, limit).
		Exec(refusedIfNone(refused))
}

// refusedIfNone calls refused when a statement wrote no row: its limit held
// it back.
func refusedIfNone(refused func()) func(pgconn.CommandTag) error {
	return func(tag pgconn.CommandTag) error {
		if tag.RowsAffected() == 0 {
			refused()
		}
		return nil
	}
}

// QueueNewCoupon queues a coupon issued to a member.
func QueueNewCoupon(b *pgx.Batch, member uuid.UUID, c CouponRow) {
	b.Queue(`INSERT INTO coupons (code, member_id, origin_member_id, template_id, state, valid_from, valid_until,
		issued_at, cause, order_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, nullif($10, ''))`,
		c.Code, member, c.Origin, c.Template, c.State, c.ValidFrom, c.ValidUntil, c.IssuedAt, c.Cause, c.OrderID)
}

// ExistingCouponCodes returns those of codes some coupon already has (codes
// are unique across members).
func ExistingCouponCodes(ctx context.Context, q Querier, codes []string) ([]string, error) {
	return queryValues[string](ctx, q, "existing coupon codes", `SELECT code FROM coupons WHERE code = ANY($1) ORDER BY code`, codes)
}

// QueueCouponState queues a coupon's new state (used on an order, restored).
func QueueCouponState(b *pgx.Batch, code, state, orderID string) {
	b.Queue(`UPDATE coupons SET state = $2, order_id = nullif($3, '') WHERE code = $1`, code, state, orderID)
}

// QueueGrant queues a benefit granted; QueueRevoke one revoked.
func QueueGrant(b *pgx.Batch, member uuid.UUID, g GrantRow) {
	b.Queue(`INSERT INTO benefit_grants (member_id, benefit_id, granted_at, cause) VALUES ($1, $2, $3, $4)
		ON CONFLICT (member_id, benefit_id) DO NOTHING`, member, g.Benefit, g.GrantedAt, g.Cause)
}

// QueueRevoke queues a benefit revoked.
func QueueRevoke(b *pgx.Batch, member uuid.UUID, benefit string) {
	b.Queue(`DELETE FROM benefit_grants WHERE member_id = $1 AND benefit_id = $2`, member, benefit)
}

// QueuePendingRevokes queues which held benefits await revocation.
func QueuePendingRevokes(b *pgx.Batch, member uuid.UUID, benefits []string, pending []bool) {
	b.Queue(`UPDATE benefit_grants g SET pending_revoke = x.pending
		FROM unnest($2::text[], $3::bool[]) AS x(benefit_id, pending)
		WHERE g.member_id = $1 AND g.benefit_id = x.benefit_id AND g.pending_revoke <> x.pending`, member, benefits, pending)
}

// QueueBenefitHistory queues a grant or revocation for the history.
func QueueBenefitHistory(b *pgx.Batch, member uuid.UUID, benefit string, granted bool, at time.Time, cause string) {
	b.Queue(`INSERT INTO benefit_history (member_id, benefit_id, granted, at, cause) VALUES ($1, $2, $3, $4, $5)`,
		member, benefit, granted, at, cause)
}

// QueueTierMove queues a tier change for the history.
func QueueTierMove(b *pgx.Batch, member uuid.UUID, from, to string, at time.Time, reason, cause string) {
	b.Queue(`INSERT INTO tier_history (member_id, from_tier, to_tier, at, reason, cause) VALUES ($1, $2, $3, $4, $5, $6)`,
		member, from, to, at, reason, cause)
}

// QueueNewOrder queues an order; its earning lot (inserted earlier in the
// batch) is found by order id.
func QueueNewOrder(b *pgx.Batch, o OrderRow, programVersion string) {
	b.Queue(`INSERT INTO orders (order_id, member_id, origin_member_id, at, total, paid, coupon_discount, redeemed,
		earned, coupon_codes, lot_id, extras, cause, program_version)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
		        (SELECT max(lot_id) FROM point_lots WHERE member_id = $2 AND order_id = $1 AND kind = 'earn'), $11, $12, $13)`,
		o.OrderID, o.Member, o.Origin, o.At, o.Total, o.Paid, o.CouponDiscount, o.Redeemed, o.Earned,
		o.CouponCodes, o.Extras, o.Cause, programVersion)
}

// QueueOrderRefund queues what refunds did to an order.
func QueueOrderRefund(b *pgx.Batch, o OrderRow) {
	b.Queue(`UPDATE orders SET refunded = $2, reversed = $3, restored = $4, unrecovered = $5, fully_refunded = $6 WHERE order_id = $1`,
		o.OrderID, o.Refunded, o.Reversed, o.Restored, o.Unrecovered, o.FullyRefunded)
}

// QueueLoyaltyState queues a member's small state (JSON).
func QueueLoyaltyState(b *pgx.Batch, member uuid.UUID, state []byte) {
	b.Queue(`INSERT INTO loyalty_state (member_id, state, updated_at) VALUES ($1, $2, now())
		ON CONFLICT (member_id) DO UPDATE SET state = EXCLUDED.state, updated_at = now()`, member, state)
}

// QueueBirthDate queues a member's birth date attribute.
func QueueBirthDate(b *pgx.Batch, member uuid.UUID, date string) {
	b.Queue(`UPDATE members SET attributes = attributes || jsonb_build_object('birth_date', $2::text) WHERE member_id = $1`,
		member, date)
}

// MoveLoyaltyData gives the source member's tier inputs, coupons, orders
// and campaign usage to the target (a merge).
func MoveLoyaltyData(ctx context.Context, q Querier, source, target uuid.UUID) error {
	for _, stmt := range []string{
		`UPDATE member_activity SET member_id = $2 WHERE member_id = $1`,
		`UPDATE coupons SET member_id = $2 WHERE member_id = $1`,
		`UPDATE orders SET member_id = $2 WHERE member_id = $1`,
		`INSERT INTO campaign_usage AS u (campaign_id, member_id, period, points)
		   SELECT campaign_id, $2, period, points FROM campaign_usage WHERE member_id = $1
		 ON CONFLICT (member_id, campaign_id, period) DO UPDATE SET points = u.points + EXCLUDED.points`,
		`DELETE FROM campaign_usage WHERE member_id = $1 AND $2::uuid IS NOT NULL`,
	} {
		if _, err := q.Exec(ctx, stmt, source, target); err != nil {
			return fmt.Errorf("merge loyalty data: %w", err)
		}
	}
	return nil
}

// ReturnLoyaltyData gives back to source what target holds of the given
// origins: tier inputs, coupons and orders (an unmerge; campaign usage stays).
func ReturnLoyaltyData(ctx context.Context, q Querier, target, source uuid.UUID, origins []uuid.UUID) error {
	for _, stmt := range []string{
		`UPDATE member_activity SET member_id = $2 WHERE member_id = $1 AND origin_member_id = ANY($3)`,
		`UPDATE coupons SET member_id = $2 WHERE member_id = $1 AND origin_member_id = ANY($3)`,
		`UPDATE orders SET member_id = $2 WHERE member_id = $1 AND origin_member_id = ANY($3)`,
	} {
		if _, err := q.Exec(ctx, stmt, target, source, origins); err != nil {
			return fmt.Errorf("unmerge loyalty data: %w", err)
		}
	}
	return nil
}

// DueLoyalty lists up to limit active members with an open lot expired at
// now or a state last evaluated before month (expiry and month starts to
// apply). It starts from the due side (indexes point_lots_expiring and
// loyalty_state_evaluated_month), so the cost follows the members that are due,
// not the member count.
func DueLoyalty(ctx context.Context, q Querier, now time.Time, month, limit int) ([]uuid.UUID, error) {
	return queryValues[uuid.UUID](ctx, q, "due members", `
		SELECT d.member_id FROM (
		        SELECT l.member_id FROM point_lots l WHERE l.remaining > 0 AND l.expires_at <= $1
		        UNION
		        SELECT s.member_id FROM loyalty_state s WHERE s.evaluated < $2
		       ) d
		  JOIN members m ON m.member_id = d.member_id AND m.status = 'active'
		 LIMIT $3`, now, month, limit)
}

// QueueBenefitLabelChecks queues members whose labels a benefit depends on
// changed, for the benefit stage to re-evaluate (TakeBenefitLabelChecks).
func QueueBenefitLabelChecks(b *pgx.Batch, members []uuid.UUID) {
	if len(members) == 0 {
		return
	}
	b.Queue(`INSERT INTO benefit_label_checks (member_id) SELECT unnest($1::uuid[])
		ON CONFLICT (member_id) DO UPDATE SET queued_at = now()`, members)
}

// PeekBenefitLabelChecks returns up to limit queued members, oldest
// first, without taking them: the caller locks the members (every writer
// of a member locks its row first, as the tag worker that queues them
// does), then takes them (TakeBenefitLabelChecks). Taking first would hold
// queue rows a tag worker holding the member waits to update, while the
// taker waits for that member: a deadlock.
func PeekBenefitLabelChecks(ctx context.Context, q Querier, limit int) ([]uuid.UUID, error) {
	return queryValues[uuid.UUID](ctx, q, "peek benefit label checks",
		`SELECT member_id FROM benefit_label_checks ORDER BY queued_at LIMIT $1`, limit)
}

// TakeBenefitLabelChecks removes the members from the queue and returns
// those that were still queued (another taker may have taken some first);
// the caller holds their rows locked and re-evaluates them in tx, whose
// rollback puts them back.
func TakeBenefitLabelChecks(ctx context.Context, tx pgx.Tx, members []uuid.UUID) ([]uuid.UUID, error) {
	return queryValues[uuid.UUID](ctx, tx, "take benefit label checks",
		`DELETE FROM benefit_label_checks WHERE member_id = ANY($1) RETURNING member_id`, members)
}

// queueMemberLots queues the reads of one member's open lots as l asks
// (queueLots), in statements of the member alone: PostgreSQL plans these
// once (a generic plan), where it would plan the batch's (over unnest)
// again for every call, most of a Quote's time in PostgreSQL. It reports
// whether the lots are read with a window (settle them once read).
func queueMemberLots(b *pgx.Batch, r *LoyaltyRows, l LoyaltyLoad) (windowed bool, err error) {
	if l.SettledAfter.IsZero() {
		queueRows(b, &r.Lots, lotColumns, `SELECT `+lotSelect+` FROM point_lots WHERE member_id = $1 AND remaining > 0 ORDER BY lot_id`, l.Member)
		return false, nil
	}
	if err := l.checkWindow(); err != nil {
		return false, err
	}
	t := windowEnd("$2")
	// One by one the lots expiring by t, and those pending at the window's
	// start that become available by t (one scan of each index); the
	// balance and the sum of the lots still pending after t are read with
	// the member (memberSums). Without AvailableFrom ($3 infinity), no
	// pending lot is read or summed.
	from := pendingFrom(l)
	queueRows(b, &r.Lots, lotColumns, `SELECT `+lotSelect+` FROM point_lots
		WHERE member_id = $1 AND remaining > 0 AND (expires_at <= `+t+` OR (available_at > $3 AND available_at <= `+t+`))`,
		l.Member, l.SettledAfter, from)
	if l.SpendUpTo > 0 {
		queueRows(b, &r.spendable, lotColumns, `SELECT `+lotSelect+` FROM point_lots
			WHERE member_id = $1 AND remaining > 0 AND expires_at > `+t+` AND available_at <= $3
			ORDER BY expires_at, lot_id LIMIT `+strconv.Itoa(spendChunk), l.Member, l.SettledAfter, from)
	}
	return true, nil
}

// windowEnd is the SQL of the end of a member's window that ends at after
// (the SQL of a parameter), or of its last operation if later (an older
// event is applied at that time): a subquery of the member ($1) alone,
// computed once.
func windowEnd(after string) string {
	return `greatest(` + after + `::timestamptz, (SELECT (state->>'last')::timestamptz FROM loyalty_state WHERE member_id = $1))`
}

// everyLot is l reading every open lot one by one (no window).
func (l LoyaltyLoad) everyLot() LoyaltyLoad {
	l.SettledAfter, l.AvailableFrom, l.SpendUpTo = time.Time{}, time.Time{}, 0
	return l
}

// checkWindow refuses points to spend without the lots pending at the
// window's start, which say how many are available.
func (l LoyaltyLoad) checkWindow() error {
	if l.SpendUpTo > 0 && l.AvailableFrom.IsZero() {
		return fmt.Errorf("load loyalty state: member %s: points to spend need the lots pending at the window's start (AvailableFrom)", l.Member)
	}
	return nil
}

// memberSums is the select-list expressions of a member's balance and the
// sum of its open lots still pending after the window that ends at after
// (or at its last operation, if later), read when pendings from is not
// infinity: after and from are the SQL of the statement's parameters, $1
// the member.
func memberSums(after, from string) string {
	t := windowEnd(after)
	return `coalesce((SELECT balance FROM points_accounts WHERE member_id = $1), 0),
		coalesce((SELECT sum(remaining) FROM point_lots WHERE member_id = $1 AND remaining > 0 AND ` + from + `::timestamptz < 'infinity'
		          AND available_at > ` + t + ` AND expires_at > ` + t + `), 0)::bigint`
}

// pendingFrom is the time after which a load's settled lots are read one by
// one while pending: AvailableFrom, or never (infinity) when none is asked.
func pendingFrom(l LoyaltyLoad) pgtype.Timestamptz {
	if l.AvailableFrom.IsZero() {
		return pgtype.Timestamptz{InfinityModifier: pgtype.Infinity, Valid: true}
	}
	return pgtype.Timestamptz{Time: l.AvailableFrom, Valid: true}
}

// settle orders the lots read by id, once each, and sets r.Settled to the
// member's balance less those lots and the pending sum.
func settle(member uuid.UUID, r *LoyaltyRows) error {
	r.Lots, r.spendable = append(r.Lots, r.spendable...), nil
	slices.SortFunc(r.Lots, func(a, b LotRow) int { return cmp.Compare(a.ID, b.ID) })
	r.Lots = slices.CompactFunc(r.Lots, func(a, b LotRow) bool { return a.ID == b.ID })
	balance := r.balance
	r.Settled = balance
	for _, l := range r.Lots {
		r.Settled -= l.Remaining
	}
	r.Settled -= r.Pending
	if r.Settled < 0 {
		return fmt.Errorf("load loyalty state: member %s: balance %d is less than its open lots %d", member, balance, balance-r.Settled)
	}
	return nil
}
