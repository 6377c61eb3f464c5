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
	return insertBatch(ctx, w.conn, "member_events", `INSERT INTO member_events (
		event_id, member_id, event_type, channel, store_id, occurred_at, ingested_at,
		order_id, currency, amount_minor, discount_minor, points_redeemed,
		items.sku, items.category, items.brand, items.quantity, items.amount_minor, trace_id,
		origin_member_id, coupon_count, review_rating)`, rows,
		func(r EventRow) string { return r.EventID },
		func(r EventRow) []any {
			n := len(r.Items)
			sku, cat, brand := make([]string, n), make([]string, n), make([]string, n)
			qty, amt := make([]int32, n), make([]int64, n)
			for i, it := range r.Items {
				sku[i], cat[i], brand[i], qty[i], amt[i] = it.SKU, it.Category, it.Brand, it.Quantity, it.AmountMinor
			}
			origin := r.OriginMemberID
			if origin == "" {
				origin = r.MemberID
			}
			return []any{r.EventID, r.MemberID, r.EventType, r.Channel, r.StoreID, r.OccurredAt.UTC(), r.IngestedAt.UTC(),
				r.OrderID, r.Currency, r.AmountMinor, r.DiscountMinor, r.PointsRedeemed,
				sku, cat, brand, qty, amt, r.TraceID, origin, r.CouponCount, r.ReviewRating}
		})
}

// InsertChanges writes rows as one batch.
func (w *Writer) InsertChanges(ctx context.Context, rows []ChangeRow) error {
	return insertBatch(ctx, w.conn, "member_changes", `INSERT INTO member_changes (
		member_id, sequence, change_id, change_type, occurred_at, cause_id, channel, store_id,
		points_delta, points_balance, points_kind, actor, approver, payload, trace_id, inserted_at)`, rows,
		func(r ChangeRow) string { return fmt.Sprintf("%s/%d", r.MemberID, r.Sequence) },
		func(r ChangeRow) []any {
			return []any{r.MemberID, r.Sequence, r.ChangeID, r.ChangeType, r.OccurredAt.UTC(), r.CauseID, r.Channel, r.StoreID,
				r.PointsDelta, r.PointsBalance, r.PointsKind, r.Actor, r.Approver, r.Payload, r.TraceID, r.InsertedAt.UTC()}
		})
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
	return insertBatch(ctx, w.conn, "label_changes", `INSERT INTO label_changes (
		member_id, label_id, value, cleared, sequence, changed_at, cause_id, catalog_version, inserted_at)`, rows,
		func(r LabelChangeRow) string { return fmt.Sprintf("%s/%s/%d", r.MemberID, r.LabelID, r.Sequence) },
		func(r LabelChangeRow) []any {
			var cleared uint8
			if r.Cleared {
				cleared = 1
			}
			return []any{r.MemberID, r.LabelID, r.Value, cleared, r.Sequence, r.ChangedAt.UTC(), r.CauseID,
				r.CatalogVersion, r.InsertedAt.UTC()}
		})
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
	return insertBatch(ctx, w.conn, "identity_audit", `INSERT INTO identity_audit (
		audit_id, at, action, actor, channel, cause_id, member_id, other_member_id, identifiers,
		before, after, reason, merge_id, conflict_id, sequence, inserted_at)`, rows,
		func(r AuditRow) string { return r.AuditID },
		func(r AuditRow) []any {
			return []any{r.AuditID, r.At.UTC(), r.Action, r.Actor, r.Channel, r.CauseID, r.MemberID, r.OtherMemberID,
				r.Identifiers, r.Before, r.After, r.Reason, r.MergeID, r.ConflictID, r.Sequence, r.InsertedAt.UTC()}
		})
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
	return insertBatch(ctx, w.conn, "operator_audit", `INSERT INTO operator_audit (
		audit_id, at, actor, action, member_id, cause_id, document, version, sha256, detail, inserted_at)`, rows,
		func(r OperatorAuditRow) string { return r.AuditID },
		func(r OperatorAuditRow) []any {
			return []any{r.AuditID, r.At.UTC(), r.Actor, r.Action, r.MemberID, r.CauseID, r.Document, r.Version, r.SHA256,
				r.Detail, r.InsertedAt.UTC()}
		})
}

// insertBatch writes rows to table with the statement insert as one batch:
// key names a row in an error, values gives a row's values in the
// statement's column order.
func insertBatch[R any](ctx context.Context, conn driver.Conn, table, insert string, rows []R, key func(R) string, values func(R) []any) error {
	if len(rows) == 0 {
		return nil
	}
	b, err := conn.PrepareBatch(ctx, insert)
	if err != nil {
		return fmt.Errorf("prepare %s batch: %w", table, err)
	}
	for _, r := range rows {
		if err := b.Append(values(r)...); err != nil {
			_ = b.Abort()
			return classify(fmt.Errorf("append %s row %s: %w", table, key(r), err), true)
		}
	}
	if err := b.Send(); err != nil {
		return classify(fmt.Errorf("insert %s: %w", table, err), false)
	}
	return nil
}
