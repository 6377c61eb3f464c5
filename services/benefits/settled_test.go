package benefits_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/services/benefits"
)

// TestSettledLotsApplyAsEachLot: a member's open lots that its operations
// cannot change are loaded as one sum (postgres.LoyaltyLoad.SettledAfter).
// The same stream applied in partition batches with every lot loaded one
// by one and with settled lots summed leaves the same ledger, lots,
// balances and points changes (with their balance after each), and the
// ledger invariants hold in both.
func TestSettledLotsApplyAsEachLot(t *testing.T) {
	each, settled := newFixture(t), newFixture(t)
	benefits.LoadEachLot(each.svc)
	c := ctxWithin(t, 10*time.Minute)
	_, stream := generate(t, benefits.DefaultProgramSource(), 11, 60, 1_500)
	members := map[string]bool{}
	var end time.Time
	for _, ev := range stream {
		if at := ev.GetOccurredAt().AsTime(); at.After(end) {
			end = at
		}
		if members[ev.GetMemberId()] {
			continue
		}
		members[ev.GetMemberId()] = true
		for _, f := range []*fixture{each, settled} {
			if err := postgres.InsertMember(c, f.pool, uuid.MustParse(ev.GetMemberId()), start2025); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, f := range []*fixture{each, settled} {
		for i := 0; i < len(stream); i += 64 {
			chunk := stream[i:min(i+64, len(stream))]
			rejected, err := f.svc.ApplyBatch(c, chunk)
			if err != nil {
				t.Fatalf("apply batch at %d: %v", i, err)
			}
			for k, reason := range rejected {
				if reason != nil && !dlq.Rejected(reason) {
					t.Fatalf("event %s refused with %v, not a data error", chunk[k].GetEventId(), reason)
				}
			}
		}
		*f.clock = end.AddDate(0, 1, 0)
		f.advanceAll(t, c)
		if err := pgtest.CheckLedger(c, f.pool); err != nil {
			t.Fatal(err)
		}
	}
	// The stream must have given members many open lots while they kept
	// buying, or the sums were never more than a lot or two.
	var maxOpen int
	if err := settled.pool.QueryRow(c, `SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM point_lots GROUP BY member_id) x`).Scan(&maxOpen); err != nil {
		t.Fatal(err)
	}
	if maxOpen < 20 {
		t.Fatalf("at most %d lots a member: the stream exercised too little", maxOpen)
	}
	// And spent from them: purchases paid partly with points read only
	// the lots spent first.
	var redeemed int
	if err := settled.pool.QueryRow(c, `SELECT count(*) FROM ledger_transactions WHERE kind = 'redeem'`).Scan(&redeemed); err != nil {
		t.Fatal(err)
	}
	if redeemed < 20 {
		t.Fatalf("%d redemptions: the stream exercised too little", redeemed)
	}
	var diffs []string
	for m := range members {
		id := uuid.MustParse(m)
		for what, q := range map[string]func(context.Context, *pgxpool.Pool, uuid.UUID) ([]string, error){
			"ledger": ledgerOf, "lots": lotsOf, "points changes": pointsChangesOf, "account": accountOf,
		} {
			want, err := q(c, each.pool, id)
			if err != nil {
				t.Fatal(err)
			}
			got, err := q(c, settled.pool, id)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(want, got) {
				diffs = append(diffs, fmt.Sprintf("member %s %s:\n each lot   %v\n settled   %v", m, what, want, got))
			}
		}
		if len(diffs) > 10 {
			break
		}
	}
	for _, d := range diffs {
		t.Error(d)
	}
}

// ledgerOf lists a member's ledger transactions with their member entry.
func ledgerOf(c context.Context, pool *pgxpool.Pool, member uuid.UUID) ([]string, error) {
	return textColumn(c, pool, `SELECT t.kind || ' ' || t.cause_id || ' ' || e.delta || ' ' || t.reason
		FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.transaction_id AND e.member_id IS NOT NULL
		WHERE t.member_id = $1 ORDER BY t.cause_id, t.kind`, member)
}

// lotsOf lists a member's lots, open and spent.
func lotsOf(c context.Context, pool *pgxpool.Pool, member uuid.UUID) ([]string, error) {
	return textColumn(c, pool, `SELECT earned || '/' || remaining || ' ' || kind || ' ' || coalesce(order_id, '-') || ' '
		|| to_char(earned_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS') || ' ' || to_char(available_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
		|| ' ' || to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
		FROM point_lots WHERE member_id = $1 ORDER BY earned_at, kind, coalesce(order_id, ''), earned, remaining`, member)
}

// accountOf is a member's account: balance and points earned.
func accountOf(c context.Context, pool *pgxpool.Pool, member uuid.UUID) ([]string, error) {
	return textColumn(c, pool, `SELECT balance || ' ' || lifetime_earned FROM points_accounts WHERE member_id = $1`, member)
}

// pointsChangesOf lists the points changes channels received of a member,
// in sequence, with the balance after each.
func pointsChangesOf(c context.Context, pool *pgxpool.Pool, member uuid.UUID) ([]string, error) {
	rows, err := pool.Query(c, `SELECT payload FROM outbox WHERE member_id = $1 ORDER BY sequence`, member)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			return nil, err
		}
		ch := &mcv1.MemberChange{}
		if err := proto.Unmarshal(b, ch); err != nil {
			return nil, err
		}
		if p := ch.GetPointsChanged(); p != nil {
			out = append(out, fmt.Sprintf("%s %+d → %d at %s: %s", p.GetKind(), p.GetDelta(), p.GetBalance(),
				ch.GetOccurredAt().AsTime().UTC().Format(time.RFC3339), p.GetReason()))
		}
	}
	return out, rows.Err()
}

// textColumn runs a query of one text column.
func textColumn(c context.Context, pool *pgxpool.Pool, sql string, args ...any) ([]string, error) {
	rows, err := pool.Query(c, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// TestSettledLotsAnswerAsEachLot: Quote and Commit, which say how many
// points are available, read the lots expiring by their time and the ones
// still pending one by one, and the rest as one sum. A member with a year
// of purchases — lots expired and not yet processed, expiring soon,
// settled, still pending — gets the same quotes and commits (with a
// redemption between, which reads every lot) as when every lot is read,
// and leaves the same ledger, lots, account and points changes.
func TestSettledLotsAnswerAsEachLot(t *testing.T) {
	each, settled := newFixture(t), newFixture(t)
	benefits.LoadEachLot(each.svc)
	c := ctxWithin(t, 2*time.Minute)
	now := *each.clock
	type step struct {
		daysAgo float64
		quote   bool
		redeem  int64
	}
	var steps []step
	for _, d := range []float64{400, 380, 366, 364.5, 300, 200, 120, 60, 30, 6, 3, 1} {
		steps = append(steps, step{daysAgo: d})
	}
	steps = append(steps, step{quote: true}, step{}, step{redeem: 100}, step{quote: true}, step{}, step{quote: true})
	var members []string
	for _, f := range []*fixture{each, settled} {
		*f.clock = now.Add(-401 * 24 * time.Hour)
		members = append(members, f.member(t))
	}
	var answers [2][]string
	for i, s := range steps {
		for k, f := range []*fixture{each, settled} {
			*f.clock = now.Add(-time.Duration(s.daysAgo * 24 * float64(time.Hour)))
			b := basket(fmt.Sprintf("o%d", i), 12_800+int64(i)*1_000)
			b.RedeemPoints = s.redeem
			var resp proto.Message
			var err error
			if s.quote {
				resp, err = f.srv.Quote(c, &mcv1.QuoteRequest{MemberId: members[k], Basket: b})
			} else {
				var r *mcv1.CommitResponse
				r, err = f.srv.Commit(c, &mcv1.CommitRequest{MemberId: members[k], Basket: b, IdempotencyKey: fmt.Sprintf("k%d", i)})
				resp = r.GetResult()
			}
			if err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
			answers[k] = append(answers[k], fmt.Sprintf("step %d: %v", i, resp))
		}
	}
	for i := range answers[0] {
		if answers[0][i] != answers[1][i] {
			t.Errorf("each lot:\n %s\nsettled:\n %s", answers[0][i], answers[1][i])
		}
	}
	var pending, expired int
	if err := settled.pool.QueryRow(c, `SELECT count(*) FILTER (WHERE available_at > $1), count(*) FILTER (WHERE kind = 'earn' AND remaining = 0)
		FROM point_lots`, now).Scan(&pending, &expired); err != nil {
		t.Fatal(err)
	}
	if pending < 3 || expired < 2 {
		t.Fatalf("%d lots pending and %d spent or expired at the end: the history exercised too little", pending, expired)
	}
	for what, q := range map[string]func(context.Context, *pgxpool.Pool, uuid.UUID) ([]string, error){
		"ledger": ledgerOf, "lots": lotsOf, "points changes": pointsChangesOf, "account": accountOf,
	} {
		want, err := q(c, each.pool, uuid.MustParse(members[0]))
		if err != nil {
			t.Fatal(err)
		}
		got, err := q(c, settled.pool, uuid.MustParse(members[1]))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(want, got) {
			t.Errorf("%s:\n each lot %v\n settled  %v", what, want, got)
		}
	}
	for _, f := range []*fixture{each, settled} {
		if err := pgtest.CheckLedger(c, f.pool); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSpendingReadsLotsAsEachLot: an operation that spends points reads,
// besides the lots expiring or pending in its time, only the available
// lots it spends first (postgres.LoyaltyLoad.SpendUpTo), a first chunk and
// all of them when the chunk holds too few; the pending lots past its time
// and the rest as sums. A member with 100 small lots (expiries shared by
// three, in an order other than the lots', some expiring and some pending
// during the run) gets the same
// quotes, commits, redemptions and adjustments — alone and grouped, with a
// group spending more than the first chunk holds, and one refused — as
// when every lot is read, and the databases are alike after every step.
func TestSpendingReadsLotsAsEachLot(t *testing.T) {
	each, settled := newFixture(t), newFixture(t)
	benefits.LoadEachLot(each.svc)
	c := ctxWithin(t, 2*time.Minute)
	now := *each.clock
	var l benefits.Legacy
	for i := range 100 {
		lot := benefits.LegacyLot{Ref: fmt.Sprintf("s%d", i), Earned: 10, Remaining: 10, EarnedAt: now.Add(-time.Duration(100-i) * 24 * time.Hour),
			ExpiresAt: now.Add(time.Duration(1+i*7%99/3) * 24 * time.Hour)}
		switch {
		case i < 3: // expire during the run
			lot.ExpiresAt = now.Add(time.Duration(i+1) * time.Hour)
		case i >= 90: // pending, the first ones available during the run
			lot.AvailableAt = now.Add(time.Duration(i-89) * time.Hour)
		}
		l.Lots = append(l.Lots, lot)
	}
	l.Lots = append(l.Lots, benefits.LegacyLot{Ref: "big", Earned: 1000, Remaining: 1000, EarnedAt: now.Add(-time.Hour), ExpiresAt: now.Add(300 * 24 * time.Hour)})
	member := uuid.Must(uuid.NewV7())
	for _, f := range []*fixture{each, settled} {
		err := pgx.BeginFunc(c, f.pool, func(tx pgx.Tx) error {
			if err := postgres.InsertMember(c, tx, member, now); err != nil {
				return err
			}
			return f.svc.ImportLegacy(c, tx, member, l, "import:small-lots", now)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	m := member.String()
	redeeming := func(order string, points int64) *mcv1.Basket {
		b := basket(order, 12_800)
		b.RedeemPoints = points
		return b
	}
	quote := func(f *fixture, order string, points int64) rpc {
		return func(c context.Context) (proto.Message, error) {
			return f.srv.Quote(c, &mcv1.QuoteRequest{MemberId: m, Basket: redeeming(order, points)})
		}
	}
	type step struct {
		at    time.Duration // after now
		calls func(f *fixture) []rpc
		group bool
	}
	steps := []step{
		{calls: func(f *fixture) []rpc { return []rpc{quote(f, "q1", 100), quote(f, "q2", 0)} }},
		{calls: func(f *fixture) []rpc { return []rpc{commitCall(f, m, redeeming("o1", 100), "k1")} }},
		{group: true, calls: func(f *fixture) []rpc {
			return []rpc{redeemCall(f, m, 50, "k2"), adjustCall(f, m, -30, "k3"), commitCall(f, m, redeeming("o2", 100), "k4")}
		}},
		// 40 lots in one group: more than the first chunk holds.
		{group: true, calls: func(f *fixture) []rpc {
			return []rpc{redeemCall(f, m, 200, "k5"), commitCall(f, m, redeeming("o3", 200), "k6")}
		}},
		// Lots expired and pending ones available since.
		{at: 4 * time.Hour, calls: func(f *fixture) []rpc {
			return []rpc{quote(f, "q3", 300), redeemCall(f, m, 60, "k7"), commitCall(f, m, redeeming("o4", 0), "k8")}
		}},
		// More than is available: refused alike; then nearly all of it.
		{at: 5 * time.Hour, calls: func(f *fixture) []rpc {
			return []rpc{quote(f, "q4", 100_000), redeemCall(f, m, 100_000, "k9"), redeemCall(f, m, 1200, "k10"), quote(f, "q5", 0)}
		}},
	}
	var answers [2][]answer
	for i, s := range steps {
		for k, f := range []*fixture{each, settled} {
			*f.clock = now.Add(s.at)
			if s.group {
				answers[k] = append(answers[k], together(t, f, s.calls(f))...)
				continue
			}
			for _, call := range s.calls(f) {
				r, err := call(c)
				if err != nil && !errors.Is(err, benefits.ErrRefused) && status.Code(err) != codes.FailedPrecondition {
					t.Fatalf("step %d: %v", i, err)
				}
				answers[k] = append(answers[k], answer{r, err})
			}
		}
		// Which lots were spent shows only here: the answers and the
		// ledger say how many points, and the last step spends nearly all.
		if a, b := settled.snapshot(t), each.snapshot(t); a != b {
			t.Fatalf("after step %d, the databases differ at %s", i, diff(a, b))
		}
	}
	sameAnswers(t, "settled lots against each lot", answers[1], answers[0])
	var refused, spent int
	for _, a := range answers[1] {
		if a.err != nil {
			refused++
		}
	}
	if err := settled.pool.QueryRow(c, `SELECT count(*) FROM point_lots WHERE member_id = $1 AND remaining < earned`, member).Scan(&spent); err != nil {
		t.Fatal(err)
	}
	if refused != 2 || spent < 90 {
		t.Fatalf("%d calls refused (want the two over the balance), %d lots spent from: the run exercised too little", refused, spent)
	}
	for _, f := range []*fixture{each, settled} {
		if err := pgtest.CheckLedger(c, f.pool); err != nil {
			t.Fatal(err)
		}
	}
	// A group that failed was applied again call by call, with every lot:
	// none may have.
	if _, _, fallbacks := benefits.GroupStats(settled.svc); fallbacks != 0 {
		t.Fatalf("%d groups failed and were applied call by call", fallbacks)
	}
}
