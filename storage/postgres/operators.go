package postgres

import (
	"context"
	"encoding/json"
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

// ListApprovals lists approvals oldest request first, a page at a time;
// next is the last one listed when more follow (uuid.Nil otherwise).
func ListApprovals(ctx context.Context, q Querier, f ApprovalFilter) (approvals []Approval, next uuid.UUID, err error) {
	rows, err := q.Query(ctx, `SELECT `+approvalColumns+` FROM adjustment_approvals a
		WHERE ($1 = '' OR state = $1) AND ($2::uuid = '00000000-0000-0000-0000-000000000000' OR member_id = $2)
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
	return `INSERT INTO operator_audit (audit_id, at, actor, action, member_id, cause_id, detail)
		SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::uuid[], $6::text[], $7::jsonb[])`,
		[]any{ids, at, actors, actions, members, causes, details}
}
