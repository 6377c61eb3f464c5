// Package audit copies the operator and configuration audit from
// PostgreSQL, where it is written with the actions it records, to
// ClickHouse, where analysts and auditors read it.
package audit

import (
	"context"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/fault"
)

// Inserter is the ClickHouse batch writer the records are copied with.
type Inserter interface {
	InsertOperatorAudit(ctx context.Context, rows []clickhouse.OperatorAuditRow) error
}

var _ Inserter = (*clickhouse.Writer)(nil)

// Exporter copies operator_audit and config_audit records to ClickHouse's
// operator_audit. Each record is queued by the statement that writes it
// (operator_audit_exports, config_audit_exports) and taken off the queue
// only after ClickHouse holds it, so none is lost; one copied twice (a
// crash between the insert and the dequeue, two exporters at once)
// collapses by its audit id.
type Exporter struct {
	pool *pgxpool.Pool
	w    Inserter
	log  *slog.Logger
	now  func() time.Time
}

// NewExporter returns an exporter reading pool and writing w.
func NewExporter(pool *pgxpool.Pool, w Inserter, log *slog.Logger) *Exporter {
	return &Exporter{pool: pool, w: w, log: log, now: time.Now}
}

// Export copies up to batch queued records of each audit to ClickHouse and
// returns how many it copied.
func (e *Exporter) Export(ctx context.Context, batch int) (int, error) {
	ops, err := postgres.PendingOperatorAudit(ctx, e.pool, batch)
	if err != nil {
		return 0, err
	}
	cfg, err := postgres.PendingConfigAudit(ctx, e.pool, batch)
	if err != nil {
		return 0, err
	}
	if len(ops)+len(cfg) == 0 {
		return 0, nil
	}
	now := e.now()
	rows := make([]clickhouse.OperatorAuditRow, 0, len(ops)+len(cfg))
	for _, r := range ops {
		rows = append(rows, clickhouse.OperatorAuditRow{AuditID: r.AuditID.String(), At: r.At, Actor: r.Actor, Action: r.Action,
			MemberID: r.MemberID.String(), CauseID: r.CauseID, Detail: detail(r.Detail), InsertedAt: now})
	}
	cfgIDs := make([]uuid.UUID, len(cfg))
	for i, r := range cfg {
		cfgIDs[i] = r.AuditID
		rows = append(rows, clickhouse.OperatorAuditRow{AuditID: r.AuditID.String(), At: r.At, Actor: r.Actor, Action: r.Action,
			Document: string(r.Document), Version: r.Version, SHA256: r.SHA256, Detail: detail(r.Detail), InsertedAt: now})
	}
	if err := e.w.InsertOperatorAudit(ctx, rows); err != nil {
		return 0, err
	}
	if len(ops) > 0 {
		if err := postgres.DequeueOperatorAudit(ctx, e.pool, ops); err != nil {
			return 0, err
		}
	}
	if len(cfg) > 0 {
		if err := postgres.DequeueConfigAudit(ctx, e.pool, cfgIDs); err != nil {
			return 0, err
		}
	}
	return len(rows), nil
}

func detail(b []byte) string {
	if len(b) == 0 {
		return "{}"
	}
	return string(b)
}

// Linger is how often the exporter looks for new records: operator
// actions are rare, and a second keeps ClickHouse within seconds of
// PostgreSQL at the cost of two indexed reads of (usually) empty queues.
const Linger = time.Second

// Batch is how many records of each audit one export takes at most.
const Batch = 5000

// Run exports every Linger until ctx ends; a backlog is drained without
// waiting. Neither a PostgreSQL nor a ClickHouse restart ends it: a failed
// export is retried with backoff.
func (e *Exporter) Run(ctx context.Context) error {
	fault.Drain(ctx, e.log, "audit export", Batch, Linger, e.Export)
	return nil
}
