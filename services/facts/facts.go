// Package facts converts member events and changes into ClickHouse fact rows
// for the sink stage.
package facts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/membercenter/membercenter/pipeline/contract"
	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/postgres"
)

// Inserter is the ClickHouse batch writer the facts are stored with.
type Inserter interface {
	InsertEvents(ctx context.Context, rows []clickhouse.EventRow) error
	InsertChanges(ctx context.Context, rows []clickhouse.ChangeRow) error
	InsertAudit(ctx context.Context, rows []clickhouse.AuditRow) error
	InsertLabelChanges(ctx context.Context, rows []clickhouse.LabelChangeRow) error
}

var _ Inserter = (*clickhouse.Writer)(nil)

// Eraser deletes members' rows from ClickHouse tables (clickhouse.Schema).
type Eraser interface {
	EraseMembers(ctx context.Context, tables []string, members []string) error
}

var _ Eraser = (*clickhouse.Schema)(nil)

// ErasedTables are the ClickHouse tables whose rows of an erased member are
// deleted when its MemberErased change is stored: the change stream is in
// member order, so every earlier change of the member is stored by then.
// member_events keeps its rows: purchase facts under the member id, which
// identifies no one after the erasure, as the ledger and orders do in
// PostgreSQL. member_changes keeps the member_erased row itself.
var ErasedTables = []string{"member_changes", "label_changes", "identity_audit", clickhouse.ProfilesTable}

// ErasedLookup says which of members are erased (the platform's
// database knows: postgres.ErasedAmong).
type ErasedLookup func(ctx context.Context, members []string) ([]string, error)

// Writer stores facts through a ClickHouse batch writer.
type Writer struct {
	W Inserter
	E Eraser // for MemberErased changes
	// Erased, when set, is asked about the other member an identity change
	// names: one that reaches the sink after that member's erasure (its
	// partition behind the erased member's, or redelivered) is stored
	// blanked, as the erasure left the rows stored before it, and without
	// its audit row, as the erasure deleted those.
	Erased ErasedLookup
	Now    func() time.Time
}

var _ contract.Facts = Writer{}

// WriteEvents implements contract.Facts.
func (w Writer) WriteEvents(ctx context.Context, events []contract.FactEvent) error {
	rows := make([]clickhouse.EventRow, len(events))
	for i, e := range events {
		rows[i] = toEventRow(e)
	}
	return w.W.InsertEvents(ctx, rows)
}

// WriteChanges implements contract.Facts.
func (w Writer) WriteChanges(ctx context.Context, changes []contract.FactChange) error {
	now := time.Now()
	if w.Now != nil {
		now = w.Now()
	}
	rows := make([]clickhouse.ChangeRow, len(changes))
	var audit []clickhouse.AuditRow
	// A member's first LabelsChanged carries every label of the
	// catalogue: room for every row at once, filled in place, rather than
	// a slice grown (and copied) a change at a time.
	n := 0
	for _, c := range changes {
		n += len(c.Msg.GetLabelsChanged().GetLabels())
	}
	labels := make([]clickhouse.LabelChangeRow, 0, n)
	othersErased, err := w.othersErased(ctx, changes)
	if err != nil {
		return err
	}
	for i, c := range changes {
		if ic := c.Msg.GetIdentityChanged(); ic != nil && othersErased[ic.GetOtherMemberId()] {
			rows[i] = toChangeRow(contract.FactChange{Msg: BlankIdentity(c.Msg), TraceID: c.TraceID}, now)
			continue
		}
		rows[i] = toChangeRow(c, now)
		if a, ok := toAuditRow(c, now); ok {
			audit = append(audit, a)
		}
		labels = appendLabelChangeRows(labels, c, now)
	}
	// Every insert is idempotent (ReplacingMergeTree keys), so a batch
	// retried after a partial failure converges.
	if err := w.W.InsertChanges(ctx, rows); err != nil {
		return err
	}
	if err := w.W.InsertLabelChanges(ctx, labels); err != nil {
		return err
	}
	if err := w.W.InsertAudit(ctx, audit); err != nil {
		return err
	}
	var erased []string
	for _, c := range changes {
		if e := c.Msg.GetMemberErased(); e != nil {
			erased = append(append(erased, c.Msg.GetMemberId()), e.GetMergedMemberIds()...)
		}
	}
	if len(erased) == 0 {
		return nil
	}
	if w.E == nil {
		return errors.New("a member erasure reached a facts writer that cannot erase")
	}
	return w.E.EraseMembers(ctx, ErasedTables, erased)
}

// ErasedIn looks members up in the platform's database.
func ErasedIn(q postgres.Querier) ErasedLookup {
	return func(ctx context.Context, members []string) ([]string, error) {
		ids := make([]uuid.UUID, 0, len(members))
		for _, m := range members {
			if id, err := uuid.Parse(m); err == nil {
				ids = append(ids, id)
			}
		}
		return postgres.ErasedAmong(ctx, q, ids)
	}
}

// othersErased returns which of the other members the batch's identity
// changes name are erased (none without an Erased lookup).
func (w Writer) othersErased(ctx context.Context, changes []contract.FactChange) (map[string]bool, error) {
	if w.Erased == nil {
		return nil, nil
	}
	var others []string
	for _, c := range changes {
		if o := c.Msg.GetIdentityChanged().GetOtherMemberId(); o != "" {
			others = append(others, o)
		}
	}
	if len(others) == 0 {
		return nil, nil
	}
	ids, err := w.Erased(ctx, others)
	if err != nil {
		return nil, fmt.Errorf("erased members among those identity changes name: %w", err)
	}
	erased := make(map[string]bool, len(ids))
	for _, id := range ids {
		erased[id] = true
	}
	return erased, nil
}

// BlankIdentity returns a copy of an identity change without what it holds
// of the other member it names: the identifiers that moved (a merge's,
// an unmerge's: theirs) and both sides' summaries. The change still names
// the member by id. Erasure leaves other members' changes so.
func BlankIdentity(m *mcv1.MemberChange) *mcv1.MemberChange {
	c := proto.CloneOf(m)
	if ic := c.GetIdentityChanged(); ic != nil {
		ic.Identifiers, ic.Before, ic.After = nil, "{}", "{}"
	}
	return c
}

// appendLabelChangeRows appends a row per label a LabelsChanged change
// carries to out.
func appendLabelChangeRows(out []clickhouse.LabelChangeRow, c contract.FactChange, now time.Time) []clickhouse.LabelChangeRow {
	m := c.Msg
	lc := m.GetLabelsChanged()
	if lc == nil {
		return out
	}
	for _, l := range lc.GetLabels() {
		at := m.GetOccurredAt().AsTime()
		if l.GetComputedAt() != nil {
			at = l.GetComputedAt().AsTime()
		}
		r := clickhouse.LabelChangeRow{
			MemberID: m.GetMemberId(), LabelID: l.GetLabelId(), Cleared: l.GetCleared(),
			Sequence: m.GetSequence(), ChangedAt: at, CauseID: m.GetCauseId(), InsertedAt: now,
			CatalogVersion: lc.GetCatalogVersion(),
		}
		if !r.Cleared {
			r.Value = LabelValueText(l)
		}
		out = append(out, r)
	}
	return out
}

// LabelValueText is a label value as label_changes stores it: "true" /
// "false", the enum value, or the number in Go's shortest 'g' form; "" when
// no value is set.
func LabelValueText(l *mcv1.LabelValue) string {
	switch v := l.GetValue().(type) {
	case *mcv1.LabelValue_BoolValue:
		return strconv.FormatBool(v.BoolValue)
	case *mcv1.LabelValue_EnumValue:
		return v.EnumValue
	case *mcv1.LabelValue_NumberValue:
		return strconv.FormatFloat(v.NumberValue, 'g', -1, 64)
	}
	return ""
}

// toAuditRow copies the audit record an identity change carries.
func toAuditRow(c contract.FactChange, now time.Time) (clickhouse.AuditRow, bool) {
	m := c.Msg
	r := clickhouse.AuditRow{
		At: m.GetOccurredAt().AsTime(), Channel: ChannelName(m.GetChannel()), CauseID: m.GetCauseId(),
		MemberID: m.GetMemberId(), Sequence: m.GetSequence(), InsertedAt: now,
	}
	switch x := m.GetChange().(type) {
	case *mcv1.MemberChange_MemberCreated:
		r.AuditID, r.Action, r.Actor = x.MemberCreated.GetAuditId(), "created", ""
		r.Identifiers = refsJSON(x.MemberCreated.GetIdentifiers())
	case *mcv1.MemberChange_IdentityChanged:
		ic := x.IdentityChanged
		r.AuditID, r.Actor, r.Reason = ic.GetAuditId(), ic.GetActor(), ic.GetReason()
		r.Action = strings.ToLower(strings.TrimPrefix(ic.GetKind().String(), "IDENTITY_CHANGE_KIND_"))
		r.OtherMemberID, r.MergeID, r.ConflictID = ic.GetOtherMemberId(), ic.GetMergeId(), ic.GetConflictId()
		r.Identifiers, r.Before, r.After = refsJSON(ic.GetIdentifiers()), ic.GetBefore(), ic.GetAfter()
	default:
		return r, false
	}
	if r.AuditID == "" {
		r.AuditID = m.GetChangeId()
	}
	return r, true
}

func refsJSON(refs []*mcv1.IdentifierRef) string {
	out := make([]map[string]string, len(refs))
	for i, r := range refs {
		out[i] = map[string]string{"type": strings.ToLower(strings.TrimPrefix(r.GetType().String(), "IDENTIFIER_TYPE_")),
			"scope": r.GetScope(), "masked": r.GetMasked(), "hash": r.GetValueHash()}
	}
	b, _ := json.Marshal(out)
	return string(b)
}

// Kinds of member event payloads, as EventType names them: the vocabulary
// of ClickHouse's member_events.event_type, the tag engine's facts and the
// load generator's records.
const (
	KindTransaction = "transaction"
	KindRefund      = "refund"
	KindVisit       = "visit"
	KindBrowse      = "browse"
	KindSignUp      = "sign_up"
	KindCheckIn     = "check_in"
	KindShare       = "share"
	KindReferral    = "referral"
	KindReview      = "review"
)

// EventType names a member event's payload: KindTransaction, KindCheckIn, …
// ("unknown" without one).
func EventType(m *mcv1.MemberEvent) string {
	if k := Kind(m); k != "" {
		return k
	}
	return "unknown"
}

// Kind names a member event's payload: the name of its field of the
// payload oneof, KindTransaction, KindCheckIn, … ("" without one). The
// schema's field names are the vocabulary (buf breaking keeps them).
func Kind(m *mcv1.MemberEvent) string { return oneofField(m, payloadOneof) }

var (
	payloadOneof = (*mcv1.MemberEvent)(nil).ProtoReflect().Descriptor().Oneofs().ByName("payload")
	changeOneof  = (*mcv1.MemberChange)(nil).ProtoReflect().Descriptor().Oneofs().ByName("change")
)

// oneofField is the name of m's field of the oneof o that is set, "" when
// none is.
func oneofField(m proto.Message, o protoreflect.OneofDescriptor) string {
	if f := m.ProtoReflect().WhichOneof(o); f != nil {
		return string(f.Name())
	}
	return ""
}

// ChannelName is the short lower-case name of a channel: "pos", "app", …
func ChannelName(c mcv1.Channel) string {
	return strings.ToLower(strings.TrimPrefix(c.String(), "CHANNEL_"))
}

func toEventRow(e contract.FactEvent) clickhouse.EventRow {
	m := e.Msg
	r := clickhouse.EventRow{
		EventID: m.GetEventId(), MemberID: m.GetMemberId(), EventType: EventType(m),
		Channel: ChannelName(m.GetChannel()), StoreID: m.GetStoreId(),
		OccurredAt: m.GetOccurredAt().AsTime(), IngestedAt: m.GetIngestedAt().AsTime(), TraceID: e.TraceID,
		OriginMemberID: m.GetResolution().GetOriginMemberId(),
	}
	if r.OriginMemberID == "" {
		r.OriginMemberID = r.MemberID
	}
	var items []*mcv1.LineItem
	switch {
	case m.GetTransaction() != nil:
		t := m.GetTransaction()
		r.OrderID, r.Currency, r.AmountMinor = t.GetOrderId(), t.GetTotal().GetCurrency(), t.GetTotal().GetAmountMinor()
		r.DiscountMinor, r.PointsRedeemed = t.GetDiscount().GetAmountMinor(), t.GetPointsRedeemed()
		r.CouponCount = uint16(min(len(t.GetCouponCodes()), math.MaxUint16))
		items = t.GetItems()
	case m.GetRefund() != nil:
		f := m.GetRefund()
		r.OrderID, r.Currency, r.AmountMinor = f.GetOrderId(), f.GetAmount().GetCurrency(), -f.GetAmount().GetAmountMinor()
		items = f.GetItems()
	case m.GetReview() != nil:
		rating := m.GetReview().GetRating()
		if rating >= 0 && rating <= math.MaxUint8 {
			r.ReviewRating = uint8(rating)
		}
	}
	for _, it := range items {
		r.Items = append(r.Items, clickhouse.ItemRow{
			SKU: it.GetSku(), Category: it.GetCategory(), Brand: it.GetBrand(),
			Quantity: it.GetQuantity(), AmountMinor: it.GetAmount().GetAmountMinor(),
		})
	}
	return r
}

// ChangeType names a change's kind, the name of its field of the change
// oneof: "points_changed", "member_created", … ("unknown" without one).
func ChangeType(c *mcv1.MemberChange) string {
	if t := oneofField(c, changeOneof); t != "" {
		return t
	}
	return "unknown"
}

func toChangeRow(c contract.FactChange, now time.Time) clickhouse.ChangeRow {
	m := c.Msg
	payload := changePayload(m)
	r := clickhouse.ChangeRow{
		MemberID: m.GetMemberId(), Sequence: m.GetSequence(), ChangeID: m.GetChangeId(), ChangeType: ChangeType(m),
		OccurredAt: m.GetOccurredAt().AsTime(), CauseID: m.GetCauseId(), Channel: ChannelName(m.GetChannel()),
		StoreID: m.GetStoreId(), Actor: m.GetActor(), Approver: m.GetApprover(), Payload: payload, TraceID: c.TraceID, InsertedAt: now,
	}
	if p := m.GetPointsChanged(); p != nil {
		r.PointsDelta, r.PointsBalance = p.GetDelta(), p.GetBalance()
		r.PointsKind = strings.ToLower(strings.TrimPrefix(p.GetKind().String(), "LEDGER_ENTRY_KIND_"))
	}
	return r
}
