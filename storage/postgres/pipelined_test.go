package postgres_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

// TestPipelinedWritesGoWithTheNextStatement: in a pipelined transaction a
// write that returns nothing waits for the next statement, which sees it;
// its error is returned by that statement, named as the write would name
// it; what waits at the end is committed; a failed write commits nothing
// of the transaction.
func TestPipelinedWritesGoWithTheNextStatement(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := pgtest.NewPool(t, nil)
	count := func(q postgres.Querier, ids ...uuid.UUID) int {
		t.Helper()
		var n int
		if err := q.QueryRow(ctx, `SELECT count(*) FROM members WHERE member_id = ANY($1)`, ids).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	a, b, c := uuid.Must(uuid.NewV7()), uuid.Must(uuid.NewV7()), uuid.Must(uuid.NewV7())
	err := postgres.PipelinedTx(ctx, pool, func(tx pgx.Tx) error {
		if err := postgres.InsertMember(ctx, tx, a, memberCreatedAt); err != nil {
			return err
		}
		if err := postgres.InsertMember(ctx, tx, b, memberCreatedAt); err != nil {
			return err
		}
		if n := count(tx, a, b); n != 2 {
			t.Errorf("a read after two queued inserts saw %d of them", n)
		}
		// Waiting at the end: sent before the commit.
		return postgres.InsertMember(ctx, tx, c, memberCreatedAt)
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := count(pool, a, b, c); n != 3 {
		t.Fatalf("%d of 3 members committed", n)
	}

	d := uuid.Must(uuid.NewV7())
	var readErr error
	err = postgres.PipelinedTx(ctx, pool, func(tx pgx.Tx) error {
		if err := postgres.InsertMember(ctx, tx, d, memberCreatedAt); err != nil {
			return err
		}
		if err := postgres.InsertMember(ctx, tx, a, memberCreatedAt); err != nil { // a duplicate: fails when sent
			t.Fatalf("a queued write failed at once: %v", err)
		}
		var n int
		readErr = tx.QueryRow(ctx, `SELECT count(*) FROM members`).Scan(&n)
		return readErr
	})
	if readErr == nil || !strings.HasPrefix(readErr.Error(), "insert member: ") || !postgres.IsUniqueViolation(readErr) {
		t.Fatalf("the read after a failing queued write: %v; want the write's unique violation, named", readErr)
	}
	if !errors.Is(err, readErr) && !postgres.IsUniqueViolation(err) {
		t.Fatalf("the transaction: %v", err)
	}
	if n := count(pool, d); n != 0 {
		t.Fatal("a transaction whose queued write failed committed another")
	}
}
