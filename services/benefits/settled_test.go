package benefits_test

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
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
		for {
			n, err := f.svc.Advance(c, 1000)
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				break
			}
		}
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
