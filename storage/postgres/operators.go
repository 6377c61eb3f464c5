package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Approval is an adjustment waiting for (or past) a second operator's
// decision: a row of adjustment_approvals.
type Approval struct {
	ApprovalID  uuid.UUID
	MemberID    uuid.UUID
	Points      int64
	Reason      string
	Maker       string
	RequestedAt time.Time
	RequestKey  string
	// State is "pending", "approved" or "rejected".
	State string
	// Checker and DecidedAt are set once decided.
	Checker   string
	DecidedAt time.Time
	Note      string
}

const approvalColumns = `approval_id, member_id, points, reason, maker, requested_at, request_key, state,
	coalesce(checker, ''), decided_at, note`

func scanApproval(row pgx.CollectableRow) (Approval, error) {
	var a Approval
	var decided *time.Time
	err := row.Scan(&a.ApprovalID, &a.MemberID, &a.Points, &a.Reason, &a.Maker, &a.RequestedAt, &a.RequestKey, &a.State,
		&a.Checker, &decided, &a.Note)
	if decided != nil {
		a.DecidedAt = *decided
	}
	return a, err
}

// InsertApproval records a pending approval.
func InsertApproval(ctx context.Context, q Querier, a Approval) error {
	return exec(ctx, q, "insert adjustment approval", `INSERT INTO adjustment_approvals
		(approval_id, member_id, points, reason, maker, requested_at, request_key) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		a.ApprovalID, a.MemberID, a.Points, a.Reason, a.Maker, a.RequestedAt, a.RequestKey)
}

// GetApproval reads an approval; lock locks its row for the rest of the
// transaction (FOR UPDATE), so one decision at a time sees it pending.
// A missing approval is ErrNotFound.
func GetApproval(ctx context.Context, q Querier, id uuid.UUID, lock bool) (Approval, error) {
	sql := `SELECT ` + approvalColumns + ` FROM adjustment_approvals WHERE approval_id = $1`
	if lock {
		sql += ` FOR UPDATE`
	}
	rows, err := q.Query(ctx, sql, id)
	return collectOne(rows, err, scanApproval, "get adjustment approval", "adjustment approval %s", id)
}

// DecideApproval records the decision on a pending approval (state
// "approved" or "rejected"). It fails when the approval is not pending: the
// caller holds its row lock (GetApproval) and checked.
func DecideApproval(ctx context.Context, q Querier, id uuid.UUID, state, checker, note string, at time.Time) error {
	n, err := execRows(ctx, q, "decide adjustment approval", `UPDATE adjustment_approvals
		SET state = $2, checker = $3, note = $4, decided_at = $5 WHERE approval_id = $1 AND state = 'pending'`,
		id, state, checker, note, at)
	if err == nil && n != 1 {
		err = fmt.Errorf("decide adjustment approval %s: not pending", id)
	}
	return err
}

// ApprovalFilter selects approvals to list.
type ApprovalFilter struct {
	State  string    // "" for every state
	Member uuid.UUID // uuid.Nil for every member
	// After is the last approval of the previous page (uuid.Nil: the first).
	After uuid.UUID
	Limit int
}

// ErrUnknownPageStart: a page was asked for after an approval that does
// not exist (a page token no list gave).
var ErrUnknownPageStart = errors.New("the page starts after an approval that does not exist")

// ListApprovals lists approvals oldest request first, a page at a time;
// next is the last one listed when more follow (uuid.Nil otherwise).
func ListApprovals(ctx context.Context, q Querier, f ApprovalFilter) (approvals []Approval, next uuid.UUID, err error) {
	if f.After != uuid.Nil {
		var known bool
		if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT FROM adjustment_approvals WHERE approval_id = $1)`, f.After).Scan(&known); err != nil {
			return nil, uuid.Nil, fmt.Errorf("list adjustment approvals: %w", err)
		}
		if !known {
			return nil, uuid.Nil, fmt.Errorf("list adjustment approvals after %s: %w", f.After, ErrUnknownPageStart)
		}
	}
	// A member's approvals are those requested for it and for the members
	// merged into it (an approval is recorded for the member asked for).
	rows, err := q.Query(ctx, `WITH RECURSIVE folded(member_id, depth) AS (
		    SELECT $2::uuid, 0
		  UNION ALL
		    SELECT m.member_id, f.depth + 1 FROM members m JOIN folded f ON m.merged_into = f.member_id WHERE f.depth < 100)
		SELECT `+approvalColumns+` FROM adjustment_approvals a
		WHERE ($1 = '' OR state = $1) AND ($2::uuid = '00000000-0000-0000-0000-000000000000' OR member_id IN (SELECT member_id FROM folded))
		  AND ($3::uuid = '00000000-0000-0000-0000-000000000000'
		       OR (requested_at, approval_id) > (SELECT requested_at, approval_id FROM adjustment_approvals WHERE approval_id = $3))
		ORDER BY requested_at, approval_id LIMIT $4`, f.State, f.Member, f.After, f.Limit+1)
	if err != nil {
		return nil, uuid.Nil, fmt.Errorf("list adjustment approvals: %w", err)
	}
	approvals, err = pgx.CollectRows(rows, scanApproval)
	if err != nil {
		return nil, uuid.Nil, fmt.Errorf("list adjustment approvals: %w", err)
	}
	if len(approvals) > f.Limit {
		approvals = approvals[:f.Limit]
		next = approvals[f.Limit-1].ApprovalID
	}
	return approvals, next, nil
}

// OperatorAudit is one operator action on a member, for the append-only
// operator_audit table.
type OperatorAudit struct {
	AuditID  uuid.UUID
	At       time.Time
	Actor    string
	Action   string
	MemberID uuid.UUID
	CauseID  string
	Detail   json.RawMessage // an object; nil is {}
}

// InsertOperatorAudit appends records to the operator audit in one
// statement.
func InsertOperatorAudit(ctx context.Context, q Querier, rs ...OperatorAudit) error {
	sql, args := operatorAuditInsert(rs)
	if sql == "" {
		return nil
	}
	return exec(ctx, q, "insert operator audit", sql, args...)
}

// QueueOperatorAudit queues the appending of records, in one statement.
func QueueOperatorAudit(b *pgx.Batch, rs []OperatorAudit) {
	if sql, args := operatorAuditInsert(rs); sql != "" {
		b.Queue(sql, args...)
	}
}

func operatorAuditInsert(rs []OperatorAudit) (string, []any) {
	n := len(rs)
	if n == 0 {
		return "", nil
	}
	ids, at, actors, actions := make([]uuid.UUID, n), make([]time.Time, n), make([]string, n), make([]string, n)
	members, causes, details := make([]uuid.UUID, n), make([]string, n), make([][]byte, n)
	for i, r := range rs {
		ids[i], at[i], actors[i], actions[i], members[i], causes[i], details[i] = r.AuditID, r.At, r.Actor, r.Action, r.MemberID, r.CauseID, r.Detail
		if details[i] == nil {
			details[i] = []byte("{}")
		}
	}
	// The same statement queues the records for ClickHouse
	// (operator_audit_exports, migration 00021), so no writer can forget to.
	return `WITH a AS (
		INSERT INTO operator_audit (audit_id, at, actor, action, member_id, cause_id, detail)
		SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::uuid[], $6::text[], $7::jsonb[])
		RETURNING member_id, audit_id)
		INSERT INTO operator_audit_exports (member_id, audit_id) SELECT member_id, audit_id FROM a`,
		[]any{ids, at, actors, actions, members, causes, details}
}

// PendingOperatorAudit reads up to limit operator audit records ClickHouse
// has yet to get, oldest queued first, without locking them.
func PendingOperatorAudit(ctx context.Context, q Querier, limit int) ([]OperatorAudit, error) {
	rows, err := q.Query(ctx, `SELECT a.audit_id, a.at, a.actor, a.action, a.member_id, a.cause_id, a.detail
		  FROM (SELECT member_id, audit_id, queued_at FROM operator_audit_exports ORDER BY queued_at, audit_id LIMIT $1) e
		  JOIN operator_audit a ON a.member_id = e.member_id AND a.audit_id = e.audit_id
		 ORDER BY e.queued_at, e.audit_id`, limit)
	if err != nil {
		return nil, fmt.Errorf("read pending operator audit: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (OperatorAudit, error) {
		var r OperatorAudit
		err := row.Scan(&r.AuditID, &r.At, &r.Actor, &r.Action, &r.MemberID, &r.CauseID, &r.Detail)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("read pending operator audit: %w", err)
	}
	return out, nil
}

// DequeueOperatorAudit takes records ClickHouse now holds off the queue.
func DequeueOperatorAudit(ctx context.Context, q Querier, rs []OperatorAudit) error {
	members, ids := make([]uuid.UUID, len(rs)), make([]uuid.UUID, len(rs))
	for i, r := range rs {
		members[i], ids[i] = r.MemberID, r.AuditID
	}
	return exec(ctx, q, "dequeue operator audit", `DELETE FROM operator_audit_exports e
		USING unnest($1::uuid[], $2::uuid[]) AS d(member_id, audit_id)
		WHERE e.member_id = d.member_id AND e.audit_id = d.audit_id`, members, ids)
}

// ConfigAudit is one configuration change an operator made (a programme or
// label catalogue loaded), for the append-only config_audit table.
type ConfigAudit struct {
	AuditID  uuid.UUID
	At       time.Time
	Actor    string
	Action   string       // "program.loaded", "catalog.loaded"
	Document DocumentKind // the table the version was stored in
	Version  string
	SHA256   string          // hex, of the source as stored
	Detail   json.RawMessage // an object; nil is {}
}

// InsertConfigAudit appends a record to the configuration audit and queues
// it for ClickHouse, in one statement.
func InsertConfigAudit(ctx context.Context, q Querier, r ConfigAudit) error {
	detail := []byte(r.Detail)
	if detail == nil {
		detail = []byte("{}")
	}
	return exec(ctx, q, "insert config audit", `WITH a AS (
		INSERT INTO config_audit (audit_id, at, actor, action, document, version, sha256, detail)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING audit_id)
		INSERT INTO config_audit_exports (audit_id) SELECT audit_id FROM a`,
		r.AuditID, r.At, r.Actor, r.Action, string(r.Document), r.Version, r.SHA256, detail)
}

// PendingConfigAudit reads up to limit configuration audit records
// ClickHouse has yet to get, oldest queued first.
func PendingConfigAudit(ctx context.Context, q Querier, limit int) ([]ConfigAudit, error) {
	rows, err := q.Query(ctx, `SELECT a.audit_id, a.at, a.actor, a.action, a.document, a.version, a.sha256, a.detail
		  FROM config_audit_exports e JOIN config_audit a ON a.audit_id = e.audit_id
		 ORDER BY e.queued_at, e.audit_id LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("read pending config audit: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ConfigAudit, error) {
		var r ConfigAudit
		var doc string
		err := row.Scan(&r.AuditID, &r.At, &r.Actor, &r.Action, &doc, &r.Version, &r.SHA256, &r.Detail)
		r.Document = DocumentKind(doc)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("read pending config audit: %w", err)
	}
	return out, nil
}

// DequeueConfigAudit takes records ClickHouse now holds off the queue.
func DequeueConfigAudit(ctx context.Context, q Querier, ids []uuid.UUID) error {
	return exec(ctx, q, "dequeue config audit", `DELETE FROM config_audit_exports WHERE audit_id = ANY($1)`, ids)
}
