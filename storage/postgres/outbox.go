package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

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

// FirstSequence numbers the first change of a member created in the
// transaction: 1 (a member starts at 0), set without reading it back, so a
// Pipelined transaction sends it with the writes around it.
func FirstSequence(ctx context.Context, q Querier, memberID uuid.UUID) (int64, error) {
	return 1, execLater(ctx, q, "first change sequence", `UPDATE members SET change_seq = 1 WHERE member_id = $1 AND change_seq = 0`, memberID)
}

// InsertOutbox appends a change to the outbox, pending until the relay
// publishes it (the outbox's trigger writes its outbox_pending row). Call
// it in the transaction that makes the change.
func InsertOutbox(ctx context.Context, q Querier, r OutboxRow) error {
	return execLater(ctx, q, "insert outbox", `
		INSERT INTO outbox (member_id, sequence, change_id, payload, traceparent) VALUES ($1, $2, $3, $4, $5)`,
		r.MemberID, r.Sequence, r.ChangeID, r.Payload, r.Traceparent)
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
	// The rows take their outbox ids in the order given (the relay
	// publishes in outbox id order, so a member's changes in sequence
	// order), each pending until the relay publishes it (the outbox's
	// trigger writes the pending rows).
	b.Queue(`INSERT INTO outbox (member_id, sequence, change_id, payload, traceparent)
		SELECT m, s, c, p, t FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::bytea[], $5::text[]) WITH ORDINALITY AS x(m, s, c, p, t, n)
		 ORDER BY n`, members, seqs, ids, payloads, tps)
	lm := make([]uuid.UUID, 0, len(last))
	ls := make([]int64, 0, len(last))
	for m, seq := range last {
		lm, ls = append(lm, m), append(ls, seq)
	}
	b.Queue(`UPDATE members m SET change_seq = x.seq FROM unnest($1::uuid[], $2::bigint[]) AS x(member_id, seq)
		WHERE m.member_id = x.member_id AND m.change_seq < x.seq`, lm, ls)
}

// HeldOutbox holds the changes of a transaction's phases until one
// QueueOutbox writes them all: one insert and one move of the members'
// sequences for the transaction, not one a phase. (The member stage's tag,
// benefit and label-check phases each made changes and wrote them, so a
// member's row was updated once for each.) A phase numbers a member's
// changes from Sequence of what it read under the member's lock, so they
// continue what the earlier phases hold. A nil *HeldOutbox holds nothing.
type HeldOutbox struct {
	rows []OutboxRow
	last map[uuid.UUID]int64 // the last sequence held of each member
}

// Hold keeps rows to be written by Queue.
func (h *HeldOutbox) Hold(rows []OutboxRow) {
	if h.last == nil {
		h.last = map[uuid.UUID]int64{}
	}
	for _, r := range rows {
		h.last[r.MemberID] = max(h.last[r.MemberID], r.Sequence)
	}
	h.rows = append(h.rows, rows...)
}

// Sequence is member's last change sequence, stored being the one its row
// holds: the last one held, when that is later.
func (h *HeldOutbox) Sequence(member uuid.UUID, stored int64) int64 {
	if h == nil {
		return stored
	}
	return max(stored, h.last[member])
}

// Queue adds to b the writes of what h holds, in the order held
// (QueueOutbox).
func (h *HeldOutbox) Queue(b *pgx.Batch) {
	if h != nil {
		QueueOutbox(b, h.rows)
	}
}

// ClaimOutbox locks up to limit unpublished rows in outbox order. Rows locked
// by another relay are skipped; the lock lasts until the transaction ends.
func ClaimOutbox(ctx context.Context, tx pgx.Tx, limit int) ([]OutboxRow, error) {
	rows, err := tx.Query(ctx, `
		SELECT `+outboxColumns+`
		  FROM outbox_pending p JOIN outbox o USING (outbox_id, member_id)
		 ORDER BY p.outbox_id
		 LIMIT $1
		   FOR UPDATE OF p SKIP LOCKED`, limit)
	if err != nil {
		return nil, fmt.Errorf("claim outbox: %w", err)
	}
	return collectOutbox(rows)
}

// outboxColumns are the columns of outbox o that collectOutbox reads.
const outboxColumns = `o.outbox_id, o.member_id, o.sequence, o.change_id, o.payload, o.traceparent, o.created_at`

// outboxPublished says that outbox row o was published: it has no pending
// row (outbox_pending, migration 00040).
const outboxPublished = `NOT EXISTS (SELECT FROM outbox_pending p WHERE p.outbox_id = o.outbox_id AND p.member_id = o.member_id)`

// collectOutbox reads rows of outboxColumns.
func collectOutbox(rows pgx.Rows) ([]OutboxRow, error) {
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (OutboxRow, error) {
		var r OutboxRow
		err := row.Scan(&r.OutboxID, &r.MemberID, &r.Sequence, &r.ChangeID, &r.Payload, &r.Traceparent, &r.CreatedAt)
		return r, err
	})
}

// MarkPublished records that the rows reached Kafka: they are no longer
// pending.
func MarkPublished(ctx context.Context, tx pgx.Tx, ids []int64) error {
	return exec(ctx, tx, "mark outbox published", `DELETE FROM outbox_pending WHERE outbox_id = ANY($1)`, ids)
}

// RelayConn is the relay leader's connection of its own: it holds the
// leadership lock, and watches the outbox for new rows.
type RelayConn struct {
	conn *pgxpool.Conn
	// seen is the outbox id sequence's value at the last wake-up.
	seen int64
}

// AcquireRelayConn takes a connection of the pool for the relay leader; it
// never goes back to the pool.
func AcquireRelayConn(ctx context.Context, pool *pgxpool.Pool) (*RelayConn, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("acquire relay connection: %w", err)
	}
	l := &RelayConn{conn: conn}
	if err := conn.QueryRow(ctx, `SELECT last_value FROM outbox_outbox_id_seq`).Scan(&l.seen); err != nil {
		l.Close()
		return nil, fmt.Errorf("read the outbox sequence: %w", err)
	}
	return l, nil
}

const (
	// OutboxPoll is how often an idle relay reads the outbox id sequence
	// (a read of one row, whatever the outbox holds): far cheaper than the
	// NOTIFY at every writer's commit it replaces, which PostgreSQL
	// serialises across the commits of notifying transactions.
	OutboxPoll = 5 * time.Millisecond
	// outboxRecheck is how often it also looks for unpublished rows
	// themselves: a row whose id was handed out before the last wake-up
	// but committed after it moves no sequence. (That look reads
	// outbox_pending, which keeps the rows of published changes, deleted,
	// until a vacuum after every snapshot older than their publication
	// ended: a long transaction anywhere on the server makes it slow.)
	outboxRecheck = 100 * time.Millisecond
)

// WaitOutbox returns once new outbox rows may be waiting (an id handed out
// since the last wake-up, or unpublished rows no batch has claimed), ctx
// ends or timeout passes (not an error: the caller claims then, whatever
// the probes said).
func (l *RelayConn) WaitOutbox(ctx context.Context, timeout time.Duration) error {
	start := time.Now()
	deadline, recheck := start.Add(timeout), start
	for {
		var last int64
		if err := l.conn.QueryRow(ctx, `SELECT last_value FROM outbox_outbox_id_seq`).Scan(&last); err != nil {
			return fmt.Errorf("read the outbox sequence: %w", err)
		}
		if last != l.seen {
			l.seen = last
			return nil
		}
		now := time.Now()
		if !now.Before(recheck) {
			recheck = now.Add(outboxRecheck)
			var waiting bool
			if err := l.conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM outbox_pending)`).
				Scan(&waiting); err != nil {
				return fmt.Errorf("probe outbox: %w", err)
			}
			if waiting {
				return nil
			}
		}
		if !now.Before(deadline) {
			return nil
		}
		t := time.NewTimer(min(OutboxPoll, time.Until(deadline)))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// LeadRelay makes the connection hold the relay leadership lock (waiting
// for it) and probe its socket so that the server releases the lock within
// about ten seconds of losing the leader's host, not hours later: TCP
// keepalives every second after three idle seconds, and a user timeout.
func (l *RelayConn) LeadRelay(ctx context.Context, lockKey int64) error {
	if _, err := l.conn.Exec(ctx, `SELECT set_config('tcp_keepalives_idle', '3', false), set_config('tcp_keepalives_interval', '1', false),
		set_config('tcp_keepalives_count', '3', false), set_config('tcp_user_timeout', '10000', false)`); err != nil {
		return fmt.Errorf("relay leadership connection: %w", err)
	}
	if _, err := l.conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey); err != nil {
		return fmt.Errorf("relay leadership lock: %w", err)
	}
	return nil
}

// Close closes the connection; its session locks end with it.
func (l *RelayConn) Close() {
	// A connection that held the leadership must not go back to the pool.
	_ = l.conn.Hijack().Close(context.Background())
}

// PruneOutbox deletes, of the limit oldest published changes, those
// written more than keep ago, and says how many it deleted: 0 once the
// oldest published changes are recent. Nothing reads a change once the
// relay published it (member.changes.v1 holds it from then on), and the
// outbox would otherwise grow by every change the platform ever made;
// unpublished changes (outbox_pending) are never deleted, however old. The
// age is PostgreSQL's, as created_at is: a process's clock (a test's,
// pinned to another day) does not move it. (Before migration 00040 it ran
// from the change's publication, which is no longer kept.)
//
// It reads the oldest changes in the order of the outbox's key and stops
// at limit: a condition on the age alone, with no index on the time, read
// the whole outbox (the day's changes kept) every time there was nothing
// to delete, 0.7-2.4 s a call for the 1.4 million rows of the pipeline
// bench's database, and it would grow with the retention.
func PruneOutbox(ctx context.Context, q Querier, keep time.Duration, limit int) (int, error) {
	tag, err := q.Exec(ctx, `DELETE FROM outbox WHERE outbox_id = ANY(ARRAY(
		SELECT outbox_id FROM (SELECT o.outbox_id, o.created_at FROM outbox o WHERE `+outboxPublished+`
		        ORDER BY o.outbox_id LIMIT $2) oldest
		 WHERE created_at < now() - $1::interval))`, keep, limit)
	if err != nil {
		return 0, fmt.Errorf("prune outbox: %w", err)
	}
	return int(tag.RowsAffected()), nil
}
