package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// LiabilityAccount is the programme's counter-account for points issued:
// every point a member holds is a point the programme owes.
const LiabilityAccount = "programme:liability"

// MemberAccount names a member's points account in ledger entries.
func MemberAccount(id uuid.UUID) string { return "member:" + id.String() }

// LedgerTransaction is one balanced movement of points.
type LedgerTransaction struct {
	TransactionID uuid.UUID
	MemberID      uuid.UUID
	// The member the transaction is attributed to (MemberID when zero).
	OriginMemberID uuid.UUID
	Kind           string
	Reason         string
	CauseID        string
	CreatedAt      time.Time
	Entries        []LedgerEntry
}

// LedgerEntry is one leg of a ledger transaction.
type LedgerEntry struct {
	EntryID   int64
	Account   string
	MemberID  *uuid.UUID
	Delta     int64
	CreatedAt time.Time
}

// ErrDuplicateCause is returned when a transaction of the same kind already
// exists for a cause: the effect was applied before.
var ErrDuplicateCause = errors.New("ledger transaction already recorded for this cause")

// InsertLedgerTransaction writes a transaction and its entries. The entries
// must sum to zero; the database checks it at commit.
func InsertLedgerTransaction(ctx context.Context, q Querier, t LedgerTransaction) error {
	origin := t.OriginMemberID
	if origin == uuid.Nil {
		origin = t.MemberID
	}
	_, err := q.Exec(ctx, `
		INSERT INTO ledger_transactions (transaction_id, member_id, origin_member_id, kind, reason, cause_id, created_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		t.TransactionID, t.MemberID, origin, t.Kind, t.Reason, t.CauseID, t.CreatedAt)
	if IsUniqueViolation(err) {
		return fmt.Errorf("%s %s: %w", t.Kind, t.CauseID, ErrDuplicateCause)
	}
	if err != nil {
		return fmt.Errorf("insert ledger transaction: %w", err)
	}
	for _, e := range t.Entries {
		if _, err := q.Exec(ctx, `
			INSERT INTO ledger_entries (transaction_id, account, member_id, delta, created_at)
			VALUES ($1, $2, $3, $4, $5)`,
			t.TransactionID, e.Account, e.MemberID, e.Delta, t.CreatedAt); err != nil {
			return fmt.Errorf("insert ledger entry: %w", err)
		}
	}
	return nil
}

// QueueLedgerTransaction adds to b one statement writing t and its entries
// (the balance check runs at commit).
func QueueLedgerTransaction(b *pgx.Batch, t LedgerTransaction, programVersion string) {
	origin := t.OriginMemberID
	if origin == uuid.Nil {
		origin = t.MemberID
	}
	accounts := make([]string, len(t.Entries))
	members := make([]*uuid.UUID, len(t.Entries))
	deltas := make([]int64, len(t.Entries))
	for i, e := range t.Entries {
		accounts[i], members[i], deltas[i] = e.Account, e.MemberID, e.Delta
	}
	b.Queue(`WITH t AS (
		INSERT INTO ledger_transactions (transaction_id, member_id, origin_member_id, kind, reason, cause_id, created_at, program_version)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING transaction_id)
		INSERT INTO ledger_entries (transaction_id, account, member_id, delta, created_at)
		SELECT t.transaction_id, e.account, e.member_id, e.delta, $7 FROM t, unnest($9::text[], $10::uuid[], $11::bigint[]) AS e(account, member_id, delta)`,
		t.TransactionID, t.MemberID, origin, t.Kind, t.Reason, t.CauseID, t.CreatedAt, programVersion, accounts, members, deltas)
}

// Account is a member's points account: its balance (the sum of its lots'
// remaining points, pending ones included) and the points it ever earned.
type Account struct {
	MemberID       uuid.UUID
	Balance        int64
	LifetimeEarned int64
	UpdatedAt      time.Time
}

// AddToAccount changes a member's balance and returns the new state. The
// account is created on first use; a change that would make it negative fails
// with the database's check violation.
func AddToAccount(ctx context.Context, q Querier, memberID uuid.UUID, delta, earned int64) (Account, error) {
	a := Account{MemberID: memberID}
	// UPDATE first: an upsert would check its proposed row, a negative
	// delta, against the non-negative balance constraint.
	err := q.QueryRow(ctx, `
		UPDATE points_accounts SET balance = balance + $2, lifetime_earned = lifetime_earned + $3, updated_at = now()
		 WHERE member_id = $1 RETURNING balance, lifetime_earned, updated_at`,
		memberID, delta, earned).Scan(&a.Balance, &a.LifetimeEarned, &a.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		err = q.QueryRow(ctx, `
			INSERT INTO points_accounts (member_id, balance, lifetime_earned, updated_at) VALUES ($1, $2, $3, now())
			RETURNING balance, lifetime_earned, updated_at`,
			memberID, delta, earned).Scan(&a.Balance, &a.LifetimeEarned, &a.UpdatedAt)
	}
	if err != nil {
		return a, fmt.Errorf("update points account: %w", err)
	}
	return a, nil
}

// GetAccount returns a member's account; a member who never earned has zeros.
func GetAccount(ctx context.Context, q Querier, memberID uuid.UUID) (Account, error) {
	a := Account{MemberID: memberID}
	err := q.QueryRow(ctx, `
		SELECT balance, lifetime_earned, updated_at FROM points_accounts WHERE member_id = $1`, memberID).
		Scan(&a.Balance, &a.LifetimeEarned, &a.UpdatedAt)
	return a, rowErrOr(err, "get points account", nil)
}

// Lot is a parcel of earned points with its own expiry.
type Lot struct {
	LotID          int64
	MemberID       uuid.UUID
	OriginMemberID uuid.UUID // MemberID when zero
	TransactionID  uuid.UUID
	Earned         int64
	Remaining      int64
	EarnedAt       time.Time
	AvailableAt    time.Time
	ExpiresAt      time.Time
}

// InsertLot records earned points as a lot.
func InsertLot(ctx context.Context, q Querier, l Lot) error {
	origin := l.OriginMemberID
	if origin == uuid.Nil {
		origin = l.MemberID
	}
	return exec(ctx, q, "insert point lot", `
		INSERT INTO point_lots (member_id, origin_member_id, transaction_id, earned, remaining, earned_at, available_at, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		l.MemberID, origin, l.TransactionID, l.Earned, l.Remaining, l.EarnedAt, l.AvailableAt, l.ExpiresAt)
}

// LedgerLine is one entry of a member's account with its transaction.
type LedgerLine struct {
	EntryID       int64
	Delta         int64
	TransactionID uuid.UUID
	Kind          string
	Reason        string
	CauseID       string
	CreatedAt     time.Time
	// The other accounts the transaction moved points to or from.
	CounterAccount string
}

// ListLedger returns up to limit entries of the member's account, newest
// first. before is a cursor (an entry id from an earlier page; zero for the
// first page). The second result is the cursor of the next page, zero when
// there is none.
func ListLedger(ctx context.Context, q Querier, memberID uuid.UUID, before int64, limit int) ([]LedgerLine, int64, error) {
	rows, err := q.Query(ctx, `
		SELECT e.entry_id, e.delta, t.transaction_id, t.kind, t.reason, t.cause_id, t.created_at,
		       coalesce((SELECT string_agg(c.account, ',' ORDER BY c.entry_id)
		                   FROM ledger_entries c
		                  WHERE c.transaction_id = e.transaction_id AND c.entry_id <> e.entry_id), '')
		  FROM ledger_entries e JOIN ledger_transactions t USING (transaction_id)
		 WHERE e.member_id = $1 AND ($2::bigint = 0 OR e.entry_id < $2)
		 ORDER BY e.entry_id DESC
		 LIMIT $3`, memberID, before, limit+1)
	if err != nil {
		return nil, 0, fmt.Errorf("list ledger: %w", err)
	}
	lines, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (LedgerLine, error) {
		var l LedgerLine
		err := row.Scan(&l.EntryID, &l.Delta, &l.TransactionID, &l.Kind, &l.Reason, &l.CauseID, &l.CreatedAt, &l.CounterAccount)
		return l, err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("list ledger: %w", err)
	}
	var next int64
	if len(lines) > limit {
		lines = lines[:limit]
		next = lines[limit-1].EntryID
	}
	return lines, next, nil
}

// ListLots returns a member's lots in expiry order (the order redemption
// consumes them).
func ListLots(ctx context.Context, q Querier, memberID uuid.UUID) ([]Lot, error) {
	rows, err := q.Query(ctx, `
		SELECT lot_id, member_id, origin_member_id, transaction_id, earned, remaining, earned_at, available_at, expires_at
		  FROM point_lots WHERE member_id = $1 ORDER BY expires_at, lot_id`, memberID)
	return collectAll(rows, err, func(row pgx.CollectableRow) (Lot, error) {
		var l Lot
		err := row.Scan(&l.LotID, &l.MemberID, &l.OriginMemberID, &l.TransactionID, &l.Earned, &l.Remaining, &l.EarnedAt, &l.AvailableAt, &l.ExpiresAt)
		return l, err
	}, "list lots")
}
