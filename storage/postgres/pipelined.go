package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Pipelined is a transaction whose writes that return nothing to their
// caller wait, queued, and go to PostgreSQL in one round trip with the
// transaction's next statement (a read, a write that answers, a batch, a
// savepoint, the end: Flush). A path of many small writes — a new shopper
// is a member row, its key, two identifiers, an audit row, a change and
// the event's resolution — then pays a round trip for a run of them instead
// of one each. The writes that may wait are those this package runs with
// execLater (LockIdentifiers, LockMemberRows, InsertMember,
// InsertIdentifier, InsertAudit, FirstSequence, InsertOutbox,
// InsertIngestedEvent): each one's result is only its error,
// which the statement that sends it returns, named as it would be alone.
// Statements run in the order they were issued, so a read sees every write
// before it. A waiting write keeps its arguments until it is sent: they must
// not change meanwhile. A savepoint (Begin) sends what waits and runs its
// own statements at once; writes queued on the outer transaction while it
// is open would be sent after it and outlive its rollback: queue none then.
type Pipelined struct {
	pgx.Tx
	queue []queuedWrite
}

type queuedWrite struct {
	what, sql string
	args      []any
}

var _ pgx.Tx = (*Pipelined)(nil)

// Pipeline wraps tx.
func Pipeline(tx pgx.Tx) *Pipelined { return &Pipelined{Tx: tx} }

// PipelinedTx is RetryTx with fn's transaction pipelined (Pipeline), its
// waiting writes sent before the commit.
func PipelinedTx(ctx context.Context, pool *pgxpool.Pool, fn func(pgx.Tx) error) error {
	return RetryTx(ctx, pool, func(tx pgx.Tx) error {
		p := Pipeline(tx)
		if err := fn(p); err != nil {
			return err
		}
		return p.Flush(ctx)
	})
}

// execLater runs a write whose caller needs nothing back but its error:
// queued in a Pipelined transaction, at once anywhere else.
func execLater(ctx context.Context, q Querier, what, sql string, args ...any) error {
	if p, ok := q.(*Pipelined); ok {
		p.queue = append(p.queue, queuedWrite{what: what, sql: sql, args: args})
		return nil
	}
	return exec(ctx, q, what, sql, args...)
}

// send sends the waiting writes and, when tail is given, the statement it
// queues after them, in one round trip; it returns the results positioned
// at the tail's (to be read, then closed). An error of a waiting write is
// returned named by its what, the results closed.
func (p *Pipelined) send(ctx context.Context, tail func(*pgx.Batch)) (pgx.BatchResults, error) {
	waiting := p.queue
	p.queue = nil
	b := &pgx.Batch{}
	for _, w := range waiting {
		b.Queue(w.sql, w.args...)
	}
	if tail != nil {
		tail(b)
	}
	br := p.Tx.SendBatch(ctx, b)
	for _, w := range waiting {
		if _, err := br.Exec(); err != nil {
			_ = br.Close()
			return nil, fmt.Errorf("%s: %w", w.what, err)
		}
	}
	return br, nil
}

// Flush sends the waiting writes, if any.
func (p *Pipelined) Flush(ctx context.Context) error {
	if len(p.queue) == 0 {
		return nil
	}
	br, err := p.send(ctx, nil)
	if err != nil {
		return err
	}
	return br.Close()
}

// Exec runs sql after the waiting writes, in the same round trip.
func (p *Pipelined) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if len(p.queue) == 0 {
		return p.Tx.Exec(ctx, sql, args...)
	}
	br, err := p.send(ctx, func(b *pgx.Batch) { b.Queue(sql, args...) })
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return tag, err
}

// Query runs sql after the waiting writes, in the same round trip.
func (p *Pipelined) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if len(p.queue) == 0 {
		return p.Tx.Query(ctx, sql, args...)
	}
	br, err := p.send(ctx, func(b *pgx.Batch) { b.Queue(sql, args...) })
	if err != nil {
		return nil, err
	}
	rows, err := br.Query()
	if err != nil {
		_ = br.Close()
		return nil, err
	}
	return &batchRows{Rows: rows, br: br}, nil
}

// QueryRow runs sql after the waiting writes, in the same round trip.
func (p *Pipelined) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if len(p.queue) == 0 {
		return p.Tx.QueryRow(ctx, sql, args...)
	}
	br, err := p.send(ctx, func(b *pgx.Batch) { b.Queue(sql, args...) })
	if err != nil {
		return errRow{err}
	}
	return batchRow{row: br.QueryRow(), br: br}
}

// SendBatch sends the waiting writes first.
func (p *Pipelined) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if err := p.Flush(ctx); err != nil {
		return errBatch{err}
	}
	return p.Tx.SendBatch(ctx, b)
}

// CopyFrom sends the waiting writes first.
func (p *Pipelined) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if err := p.Flush(ctx); err != nil {
		return 0, err
	}
	return p.Tx.CopyFrom(ctx, table, columns, src)
}

// Begin sends the waiting writes, then starts a savepoint.
func (p *Pipelined) Begin(ctx context.Context) (pgx.Tx, error) {
	if err := p.Flush(ctx); err != nil {
		return nil, err
	}
	return p.Tx.Begin(ctx)
}

// Commit sends the waiting writes, then commits.
func (p *Pipelined) Commit(ctx context.Context) error {
	if err := p.Flush(ctx); err != nil {
		return err
	}
	return p.Tx.Commit(ctx)
}

// Rollback drops the waiting writes and rolls back.
func (p *Pipelined) Rollback(ctx context.Context) error {
	p.queue = nil
	return p.Tx.Rollback(ctx)
}

// batchRows are a query's rows read from a batch, which closing them
// closes.
type batchRows struct {
	pgx.Rows
	br  pgx.BatchResults
	err error
}

func (r *batchRows) Close() {
	r.Rows.Close()
	if r.br != nil {
		if err := r.br.Close(); err != nil && r.err == nil {
			r.err = err
		}
		r.br = nil
	}
}

func (r *batchRows) Err() error {
	if err := r.Rows.Err(); err != nil {
		return err
	}
	return r.err
}

// batchRow is a query's row read from a batch, which scanning it closes.
type batchRow struct {
	row pgx.Row
	br  pgx.BatchResults
}

func (r batchRow) Scan(dest ...any) error {
	err := r.row.Scan(dest...)
	if cerr := r.br.Close(); err == nil {
		err = cerr
	}
	return err
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

type errBatch struct{ err error }

func (b errBatch) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, b.err }
func (b errBatch) Query() (pgx.Rows, error)         { return nil, b.err }
func (b errBatch) QueryRow() pgx.Row                { return errRow(b) }
func (b errBatch) Close() error                     { return b.err }
func (b errBatch) Tx() pgx.Tx                       { return nil }
