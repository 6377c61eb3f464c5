package clickhouse

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// EventRow is one member event as marketing sees it.
type EventRow struct {
	EventID        string
	MemberID       string
	EventType      string
	Channel        string
	StoreID        string
	OccurredAt     time.Time
	IngestedAt     time.Time
	OrderID        string
	Currency       string
	AmountMinor    int64
	DiscountMinor  int64
	PointsRedeemed int64
	Items          []ItemRow
	TraceID        string
	// OriginMemberID is the member the event is attributed to: the member
	// its identifier was first linked to (differs from MemberID after a
	// merge). Empty is stored as MemberID.
	OriginMemberID string
	// CouponCount is the number of coupons used on a transaction.
	CouponCount uint16
	// ReviewRating is 1..5 on a review event, 0 otherwise.
	ReviewRating uint8
}

// ItemRow is one basket line of an event.
type ItemRow struct {
	SKU         string
	Category    string
	Brand       string
	Quantity    int32
	AmountMinor int64
}

// ChangeRow is one change of a member's state.
type ChangeRow struct {
	MemberID      string
	Sequence      uint64
	ChangeID      string
	ChangeType    string
	OccurredAt    time.Time
	CauseID       string
	Channel       string
	StoreID       string
	PointsDelta   int64
	PointsBalance int64
	// PointsKind is the ledger entry kind of a points change ("earn",
	// "redeem", "expire", "adjust", "transfer", "reverse"), empty otherwise.
	PointsKind string
	// Actor is the operator whose action made the change, Approver the
	// second operator who approved it; empty for other changes.
	Actor, Approver string
	Payload         string
	TraceID         string
	InsertedAt      time.Time
}

// Writer inserts facts in batches.
type Writer struct {
	conn driver.Conn
}

// NewWriter returns a writer on conn.
func NewWriter(conn driver.Conn) *Writer { return &Writer{conn: conn} }

// InsertEvents writes rows as one batch. 18.16 needs the explicit column list.
func (w *Writer) InsertEvents(ctx context.Context, rows []EventRow) error {
	return insertColumns(ctx, w.conn, "member_events", `INSERT INTO member_events (
		event_id, member_id, event_type, channel, store_id, occurred_at, ingested_at,
		order_id, currency, amount_minor, discount_minor, points_redeemed,
		items.sku, items.category, items.brand, items.quantity, items.amount_minor, trace_id,
		origin_member_id, coupon_count, review_rating)`, rows,
		col(func(r *EventRow) string { return r.EventID }), col(func(r *EventRow) string { return r.MemberID }),
		col(func(r *EventRow) string { return r.EventType }), col(func(r *EventRow) string { return r.Channel }),
		col(func(r *EventRow) string { return r.StoreID }), col(func(r *EventRow) time.Time { return r.OccurredAt.UTC() }),
		col(func(r *EventRow) time.Time { return r.IngestedAt.UTC() }), col(func(r *EventRow) string { return r.OrderID }),
		col(func(r *EventRow) string { return r.Currency }), col(func(r *EventRow) int64 { return r.AmountMinor }),
		col(func(r *EventRow) int64 { return r.DiscountMinor }), col(func(r *EventRow) int64 { return r.PointsRedeemed }),
		items(func(it ItemRow) string { return it.SKU }), items(func(it ItemRow) string { return it.Category }),
		items(func(it ItemRow) string { return it.Brand }), items(func(it ItemRow) int32 { return it.Quantity }),
		items(func(it ItemRow) int64 { return it.AmountMinor }),
		col(func(r *EventRow) string { return r.TraceID }),
		col(func(r *EventRow) string {
			if r.OriginMemberID == "" {
				return r.MemberID
			}
			return r.OriginMemberID
		}),
		col(func(r *EventRow) uint16 { return r.CouponCount }), col(func(r *EventRow) uint8 { return r.ReviewRating }))
}

// InsertChanges writes rows as one batch.
func (w *Writer) InsertChanges(ctx context.Context, rows []ChangeRow) error {
	return insertColumns(ctx, w.conn, "member_changes", `INSERT INTO member_changes (
		member_id, sequence, change_id, change_type, occurred_at, cause_id, channel, store_id,
		points_delta, points_balance, points_kind, actor, approver, payload, trace_id, inserted_at)`, rows,
		col(func(r *ChangeRow) string { return r.MemberID }), col(func(r *ChangeRow) uint64 { return r.Sequence }),
		col(func(r *ChangeRow) string { return r.ChangeID }), col(func(r *ChangeRow) string { return r.ChangeType }),
		col(func(r *ChangeRow) time.Time { return r.OccurredAt.UTC() }), col(func(r *ChangeRow) string { return r.CauseID }),
		col(func(r *ChangeRow) string { return r.Channel }), col(func(r *ChangeRow) string { return r.StoreID }),
		col(func(r *ChangeRow) int64 { return r.PointsDelta }), col(func(r *ChangeRow) int64 { return r.PointsBalance }),
		col(func(r *ChangeRow) string { return r.PointsKind }), col(func(r *ChangeRow) string { return r.Actor }),
		col(func(r *ChangeRow) string { return r.Approver }), col(func(r *ChangeRow) string { return r.Payload }),
		col(func(r *ChangeRow) string { return r.TraceID }), col(func(r *ChangeRow) time.Time { return r.InsertedAt.UTC() }))
}

// LabelChangeRow is one change of one label of a member.
type LabelChangeRow struct {
	MemberID string
	LabelID  string
	// Value is the new value as text: "true"/"false", the enum value, or the
	// number (strconv 'g' format); empty when Cleared.
	Value   string
	Cleared bool
	// Sequence is the member change sequence that carried the label change.
	Sequence       uint64
	ChangedAt      time.Time
	CauseID        string
	CatalogVersion string
	InsertedAt     time.Time
}

// InsertLabelChanges writes label change rows as one batch.
func (w *Writer) InsertLabelChanges(ctx context.Context, rows []LabelChangeRow) error {
	return insertColumns(ctx, w.conn, "label_changes", `INSERT INTO label_changes (
		member_id, label_id, value, cleared, sequence, changed_at, cause_id, catalog_version, inserted_at)`, rows,
		col(func(r *LabelChangeRow) string { return r.MemberID }), col(func(r *LabelChangeRow) string { return r.LabelID }),
		col(func(r *LabelChangeRow) string { return r.Value }), col(func(r *LabelChangeRow) uint8 { return flag(r.Cleared) }),
		col(func(r *LabelChangeRow) uint64 { return r.Sequence }), col(func(r *LabelChangeRow) time.Time { return r.ChangedAt.UTC() }),
		col(func(r *LabelChangeRow) string { return r.CauseID }), col(func(r *LabelChangeRow) string { return r.CatalogVersion }),
		col(func(r *LabelChangeRow) time.Time { return r.InsertedAt.UTC() }))
}

// AuditRow is one identity audit record.
type AuditRow struct {
	AuditID       string
	At            time.Time
	Action        string
	Actor         string
	Channel       string
	CauseID       string
	MemberID      string
	OtherMemberID string
	Identifiers   string
	Before        string
	After         string
	Reason        string
	MergeID       string
	ConflictID    string
	Sequence      uint64
	InsertedAt    time.Time
}

// InsertAudit writes identity audit rows as one batch.
func (w *Writer) InsertAudit(ctx context.Context, rows []AuditRow) error {
	return insertColumns(ctx, w.conn, "identity_audit", `INSERT INTO identity_audit (
		audit_id, at, action, actor, channel, cause_id, member_id, other_member_id, identifiers,
		before, after, reason, merge_id, conflict_id, sequence, inserted_at)`, rows,
		col(func(r *AuditRow) string { return r.AuditID }), col(func(r *AuditRow) time.Time { return r.At.UTC() }),
		col(func(r *AuditRow) string { return r.Action }), col(func(r *AuditRow) string { return r.Actor }),
		col(func(r *AuditRow) string { return r.Channel }), col(func(r *AuditRow) string { return r.CauseID }),
		col(func(r *AuditRow) string { return r.MemberID }), col(func(r *AuditRow) string { return r.OtherMemberID }),
		col(func(r *AuditRow) string { return r.Identifiers }), col(func(r *AuditRow) string { return r.Before }),
		col(func(r *AuditRow) string { return r.After }), col(func(r *AuditRow) string { return r.Reason }),
		col(func(r *AuditRow) string { return r.MergeID }), col(func(r *AuditRow) string { return r.ConflictID }),
		col(func(r *AuditRow) uint64 { return r.Sequence }), col(func(r *AuditRow) time.Time { return r.InsertedAt.UTC() }))
}

// OperatorAuditRow is one operator audit record: an operator's action on a
// member (MemberID set) or a configuration load (Document, Version and
// SHA256 set, MemberID empty).
type OperatorAuditRow struct {
	AuditID  string
	At       time.Time
	Actor    string
	Action   string
	MemberID string
	CauseID  string
	Document string
	Version  string
	SHA256   string
	// Detail is a JSON object.
	Detail     string
	InsertedAt time.Time
}

// InsertOperatorAudit writes operator audit rows as one batch.
func (w *Writer) InsertOperatorAudit(ctx context.Context, rows []OperatorAuditRow) error {
	return insertColumns(ctx, w.conn, "operator_audit", `INSERT INTO operator_audit (
		audit_id, at, actor, action, member_id, cause_id, document, version, sha256, detail, inserted_at)`, rows,
		col(func(r *OperatorAuditRow) string { return r.AuditID }), col(func(r *OperatorAuditRow) time.Time { return r.At.UTC() }),
		col(func(r *OperatorAuditRow) string { return r.Actor }), col(func(r *OperatorAuditRow) string { return r.Action }),
		col(func(r *OperatorAuditRow) string { return r.MemberID }), col(func(r *OperatorAuditRow) string { return r.CauseID }),
		col(func(r *OperatorAuditRow) string { return r.Document }), col(func(r *OperatorAuditRow) string { return r.Version }),
		col(func(r *OperatorAuditRow) string { return r.SHA256 }), col(func(r *OperatorAuditRow) string { return r.Detail }),
		col(func(r *OperatorAuditRow) time.Time { return r.InsertedAt.UTC() }))
}

// items is the column of an event's items' values f gives (a nested
// column of member_events).
func items[T any](f func(ItemRow) T) column[EventRow] {
	return col(func(r *EventRow) []T {
		out := make([]T, len(r.Items))
		for i, it := range r.Items {
			out[i] = f(it)
		}
		return out
	})
}

// column is one column of a batch: the rows' values of it, as the typed
// slice the driver appends at once (col).
type column[R any] func(rows []R) any

// col is the column of the values f gives for each row.
func col[R, T any](f func(*R) T) column[R] {
	return func(rows []R) any {
		out := make([]T, len(rows))
		for i := range rows {
			out[i] = f(&rows[i])
		}
		return out
	}
}

// insertColumns writes rows to table with the statement insert as one
// batch, built a column at a time: cols in the statement's column order.
// (A row at a time, every value went through an interface and the driver's
// row path, and each row's values were a slice of their own.)
func insertColumns[R any](ctx context.Context, conn driver.Conn, table, insert string, rows []R, cols ...column[R]) error {
	if len(rows) == 0 {
		return nil
	}
	b, err := conn.PrepareBatch(ctx, insert)
	if err != nil {
		return fmt.Errorf("prepare %s batch: %w", table, err)
	}
	for i, c := range cols {
		if err := b.Column(i).Append(c(rows)); err != nil {
			_ = b.Abort()
			return classify(fmt.Errorf("append %s column %d of %d rows: %w", table, i+1, len(rows), err), true)
		}
	}
	if err := b.Send(); err != nil {
		return classify(fmt.Errorf("insert %s: %w", table, err), false)
	}
	return nil
}
