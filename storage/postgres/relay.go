package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// ErrRelayFenced refuses a write of a relay leader whose term has ended: a
// newer leader has taken over.
var ErrRelayFenced = errors.New("a newer relay leader has taken over")

// NewRelayTerm starts a new leadership term of the relay group and returns
// it. Call it holding the group's leadership lock: it waits for a write
// of the previous term in progress, and every later write of that term is
// fenced.
func NewRelayTerm(ctx context.Context, q Querier, group, leader string) (int64, error) {
	var term int64
	err := q.QueryRow(ctx, `
		INSERT INTO relay_leaders (relay_group, term, leader) VALUES ($1, 1, $2)
		ON CONFLICT (relay_group) DO UPDATE SET term = relay_leaders.term + 1, leader = $2, since = now()
		RETURNING term`, group, leader).Scan(&term)
	if err != nil {
		return 0, fmt.Errorf("new relay term: %w", err)
	}
	return term, nil
}

// checkRelayTerm holds the group's term until tx ends and fails with
// ErrRelayFenced when it is not term.
func checkRelayTerm(ctx context.Context, tx pgx.Tx, group string, term int64) error {
	var cur int64
	if err := tx.QueryRow(ctx, `SELECT term FROM relay_leaders WHERE relay_group = $1 FOR SHARE`, group).Scan(&cur); err != nil {
		return fmt.Errorf("relay term: %w", err)
	}
	if cur != term {
		return fmt.Errorf("relay term %d: %w (term %d)", term, ErrRelayFenced, cur)
	}
	return nil
}

// RelayBatchInFlight returns the group's batch recorded and not marked
// published, with its rows in outbox order; a zero id when there is none.
func RelayBatchInFlight(ctx context.Context, q Querier, group string) (uuid.UUID, []OutboxRow, error) {
	var id uuid.UUID
	var ids []int64
	err := q.QueryRow(ctx, `SELECT batch_id, outbox_ids FROM relay_batches WHERE relay_group = $1 ORDER BY created_at LIMIT 1`, group).Scan(&id, &ids)
	if errors.Is(err, pgx.ErrNoRows) {
		return uuid.UUID{}, nil, nil
	}
	if err != nil {
		return id, nil, fmt.Errorf("relay batch in flight: %w", err)
	}
	where, arg := inBatch(id, ids)
	rows, err := q.Query(ctx, `
		SELECT `+outboxColumns+`
		  FROM outbox o JOIN outbox_pending p USING (outbox_id, member_id)
		 WHERE o.`+where+` ORDER BY o.outbox_id`, arg)
	if err != nil {
		return id, nil, fmt.Errorf("rows of relay batch %s: %w", id, err)
	}
	out, err := collectOutbox(rows)
	return id, out, err
}

// inBatch is the condition, on parameter $1 (arg), of an outbox row being
// in the batch id that holds ids: its id among them, looked up by the
// primary key; or, for a batch recorded before migration 00034 (no ids),
// the row tagged with the batch.
func inBatch(id uuid.UUID, ids []int64) (string, any) {
	if len(ids) == 0 {
		return `relay_batch = $1`, id
	}
	return `outbox_id = ANY($1)`, ids
}

// ClaimRelayBatch records the next up to limit unpublished rows, in outbox
// order, as batch id of the group's term, and returns them (none when
// nothing waits). It refuses while another batch is in flight, and fails
// with ErrRelayFenced when term is not the group's. The batch keeps the
// rows' ids; the rows themselves are not written, and stay pending until
// they are marked published: with one batch in flight at a time, the next
// claim comes after this one's rows are marked.
func ClaimRelayBatch(ctx context.Context, tx pgx.Tx, group string, term int64, id uuid.UUID, limit int) ([]OutboxRow, error) {
	if err := checkRelayTerm(ctx, tx, group, term); err != nil {
		return nil, err
	}
	var inFlight bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM relay_batches WHERE relay_group = $1)`, group).Scan(&inFlight); err != nil {
		return nil, fmt.Errorf("relay batch in flight: %w", err)
	}
	if inFlight {
		return nil, errors.New("claim relay batch: a batch is still in flight")
	}
	// The next pending ids first, then their outbox rows by key: as one
	// join, PostgreSQL's plan (kept by the connection, made on estimates
	// that lag a busy outbox) hashed or merge-joined every outbox row at
	// every claim once the outbox had grown (6–19 ms a claim on 100,000
	// rows in the pipeline bench). Citus runs both as they are (a LATERAL
	// … LIMIT over the queue's ordered ids it would refuse).
	pending, err := tx.Query(ctx, `SELECT outbox_id FROM outbox_pending ORDER BY outbox_id LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("claim relay batch: %w", err)
	}
	next, err := pgx.CollectRows(pending, pgx.RowTo[int64])
	if err != nil || len(next) == 0 {
		if err != nil {
			err = fmt.Errorf("claim relay batch: %w", err)
		}
		return nil, err
	}
	rows, err := tx.Query(ctx, `SELECT `+outboxColumns+` FROM outbox o WHERE o.outbox_id = ANY($1) ORDER BY o.outbox_id`, next)
	if err != nil {
		return nil, fmt.Errorf("claim relay batch: %w", err)
	}
	out, err := collectOutbox(rows)
	if err != nil || len(out) == 0 {
		return nil, err
	}
	ids := make([]int64, len(out))
	for i, r := range out {
		ids[i] = r.OutboxID
	}
	if _, err := tx.Exec(ctx, `INSERT INTO relay_batches (batch_id, relay_group, term, outbox_ids) VALUES ($1, $2, $3, $4)`, id, group, term, ids); err != nil {
		return nil, fmt.Errorf("record relay batch: %w", err)
	}
	return out, nil
}

// MarkRelayBatchPublished marks the rows of batch id published (deletes
// their outbox_pending rows; the outbox rows are not written) and ends the
// batch; ErrRelayFenced when term is not the group's.
func MarkRelayBatchPublished(ctx context.Context, tx pgx.Tx, group string, term int64, id uuid.UUID) error {
	if err := checkRelayTerm(ctx, tx, group, term); err != nil {
		return err
	}
	var ids []int64
	err := tx.QueryRow(ctx, `DELETE FROM relay_batches WHERE batch_id = $1 RETURNING outbox_ids`, id).Scan(&ids)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil // ended already: its rows were marked with it
	}
	if err != nil {
		return fmt.Errorf("end relay batch %s: %w", id, err)
	}
	del, arg := `DELETE FROM outbox_pending WHERE outbox_id = ANY($1)`, any(ids)
	if len(ids) == 0 { // a batch recorded before migration 00034: its rows are tagged
		del, arg = `DELETE FROM outbox_pending WHERE outbox_id IN (SELECT outbox_id FROM outbox WHERE relay_batch = $1)`, id
	}
	if _, err := tx.Exec(ctx, del, arg); err != nil {
		return fmt.Errorf("mark relay batch %s published: %w", id, err)
	}
	return nil
}
