package postgres

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// OutboxChannel is the LISTEN/NOTIFY channel an outbox insert signals.
const OutboxChannel = "mc_outbox"

// OutboxRow is one change waiting to be published to member.changes.v1.
type OutboxRow struct {
	OutboxID    int64
	MemberID    uuid.UUID
	Sequence    int64
	ChangeID    uuid.UUID
	Payload     []byte
	Traceparent string
	CreatedAt   time.Time
}

// NextSequence hands out the member's next change sequence number. It locks
// the member row until the transaction ends, so the changes of one member are
// numbered, and committed, in order.
func NextSequence(ctx context.Context, q Querier, memberID uuid.UUID) (int64, error) {
	var seq int64
	err := q.QueryRow(ctx, `
		UPDATE members SET change_seq = change_seq + 1 WHERE member_id = $1 RETURNING change_seq`, memberID).Scan(&seq)
	if err != nil {
		return 0, fmt.Errorf("next change sequence of %s: %w", memberID, err)
	}
	return seq, nil
}

// InsertOutbox appends a change to the outbox. Call it in the transaction
// that makes the change.
func InsertOutbox(ctx context.Context, q Querier, r OutboxRow) error {
	_, err := q.Exec(ctx, `
		INSERT INTO outbox (member_id, sequence, change_id, payload, traceparent) VALUES ($1, $2, $3, $4, $5)`,
		r.MemberID, r.Sequence, r.ChangeID, r.Payload, r.Traceparent)
	if err != nil {
		return fmt.Errorf("insert outbox: %w", err)
	}
	return nil
}

// QueueOutbox adds to b the insert of rows and the move of each member's
// change sequence to its last row. The caller holds the members' row locks
// and numbered the rows from the sequence it read under them.
func QueueOutbox(b *pgx.Batch, rows []OutboxRow) {
	if len(rows) == 0 {
		return
	}
	members := make([]uuid.UUID, len(rows))
	seqs := make([]int64, len(rows))
	ids := make([]uuid.UUID, len(rows))
	payloads := make([][]byte, len(rows))
	tps := make([]string, len(rows))
	last := map[uuid.UUID]int64{}
	for i, r := range rows {
		members[i], seqs[i], ids[i], payloads[i], tps[i] = r.MemberID, r.Sequence, r.ChangeID, r.Payload, r.Traceparent
		last[r.MemberID] = max(last[r.MemberID], r.Sequence)
	}
	b.Queue(`INSERT INTO outbox (member_id, sequence, change_id, payload, traceparent)
		SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::bytea[], $5::text[])`, members, seqs, ids, payloads, tps)
	lm := make([]uuid.UUID, 0, len(last))
	ls := make([]int64, 0, len(last))
	for m, seq := range last {
		lm, ls = append(lm, m), append(ls, seq)
	}
	b.Queue(`UPDATE members m SET change_seq = x.seq FROM unnest($1::uuid[], $2::bigint[]) AS x(member_id, seq)
		WHERE m.member_id = x.member_id AND m.change_seq < x.seq`, lm, ls)
}

// ClaimOutbox locks up to limit unpublished rows in outbox order. Rows locked
// by another relay are skipped; the lock lasts until the transaction ends.
func ClaimOutbox(ctx context.Context, tx pgx.Tx, limit int) ([]OutboxRow, error) {
	rows, err := tx.Query(ctx, `
		SELECT outbox_id, member_id, sequence, change_id, payload, traceparent, created_at
		  FROM outbox WHERE published_at IS NULL
		 ORDER BY outbox_id
		 LIMIT $1
		   FOR UPDATE SKIP LOCKED`, limit)
	if err != nil {
		return nil, fmt.Errorf("claim outbox: %w", err)
	}
	return collectOutbox(rows)
}

// collectOutbox reads rows of outbox_id, member_id, sequence, change_id,
// payload, traceparent, created_at.
func collectOutbox(rows pgx.Rows) ([]OutboxRow, error) {
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (OutboxRow, error) {
		var r OutboxRow
		err := row.Scan(&r.OutboxID, &r.MemberID, &r.Sequence, &r.ChangeID, &r.Payload, &r.Traceparent, &r.CreatedAt)
		return r, err
	})
}

func sortOutbox(rows []OutboxRow) {
	slices.SortFunc(rows, func(a, b OutboxRow) int { return cmp.Compare(a.OutboxID, b.OutboxID) })
}

// MarkPublished records that the rows reached Kafka.
func MarkPublished(ctx context.Context, tx pgx.Tx, ids []int64) error {
	if _, err := tx.Exec(ctx, `UPDATE outbox SET published_at = now() WHERE outbox_id = ANY($1)`, ids); err != nil {
		return fmt.Errorf("mark outbox published: %w", err)
	}
	return nil
}

// ListenOutbox holds a connection that is told of every outbox insert.
type ListenOutbox struct {
	conn *pgxpool.Conn
}

// Listen subscribes a dedicated pool connection to outbox notifications.
func Listen(ctx context.Context, pool *pgxpool.Pool) (*ListenOutbox, error) {
	return ListenChannel(ctx, pool, OutboxChannel)
}

// ListenChannel listens on another NOTIFY channel with the same semantics.
func ListenChannel(ctx context.Context, pool *pgxpool.Pool, channel string) (*ListenOutbox, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("acquire listen connection: %w", err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		conn.Release()
		return nil, fmt.Errorf("listen %s: %w", channel, err)
	}
	return &ListenOutbox{conn: conn}, nil
}

// Wait blocks until an outbox insert is notified, ctx ends or timeout passes;
// timing out is not an error (it bounds how long a missed wake-up can delay).
func (l *ListenOutbox) Wait(ctx context.Context, timeout time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err := l.conn.Conn().WaitForNotification(wctx)
	if err != nil && ctx.Err() == nil && wctx.Err() != nil {
		return nil
	}
	return err
}

// Exec runs a statement on the listening connection (session-level advisory
// locks taken here last as long as the listen does).
// LeadRelay makes the connection hold the relay leadership lock (waiting
// for it) and probe its socket so that the server releases the lock within
// about ten seconds of losing the leader's host, not hours later: TCP
// keepalives every second after three idle seconds, and a user timeout.
func (l *ListenOutbox) LeadRelay(ctx context.Context, lockKey int64) error {
	if _, err := l.conn.Exec(ctx, `SELECT set_config('tcp_keepalives_idle', '3', false), set_config('tcp_keepalives_interval', '1', false),
		set_config('tcp_keepalives_count', '3', false), set_config('tcp_user_timeout', '10000', false)`); err != nil {
		return fmt.Errorf("relay leadership connection: %w", err)
	}
	if _, err := l.conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey); err != nil {
		return fmt.Errorf("relay leadership lock: %w", err)
	}
	return nil
}

// Close closes the connection; its LISTEN and session locks end with it.
func (l *ListenOutbox) Close() {
	// A connection that was listening must not go back to the pool.
	_ = l.conn.Hijack().Close(context.Background())
}
