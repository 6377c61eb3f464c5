// Package changes writes every change of a member's state to the PostgreSQL
// outbox, in the transaction that makes the change, numbered by a per-member
// sequence; and serves the outbox to the relay that publishes it to
// member.changes.v1.
package changes

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
)

// Writer appends changes; it carries the propagator that stamps each change
// with the trace of the transaction that wrote it.
type Writer struct {
	Propagator propagation.TextMapPropagator
	Now        func() time.Time
}

// Append gives ch the member's next sequence number, a change id and a time,
// and writes it to the outbox in tx. It returns ch as written.
func (w Writer) Append(ctx context.Context, tx pgx.Tx, memberID uuid.UUID, ch *mcv1.MemberChange) (*mcv1.MemberChange, error) {
	return w.append(ctx, tx, memberID, ch, postgres.NextSequence)
}

// AppendFirst is Append for the first change of a member created in tx:
// its sequence, 1, is set without being read back.
func (w Writer) AppendFirst(ctx context.Context, tx pgx.Tx, memberID uuid.UUID, ch *mcv1.MemberChange) (*mcv1.MemberChange, error) {
	return w.append(ctx, tx, memberID, ch, postgres.FirstSequence)
}

func (w Writer) append(ctx context.Context, tx pgx.Tx, memberID uuid.UUID, ch *mcv1.MemberChange,
	next func(context.Context, postgres.Querier, uuid.UUID) (int64, error)) (*mcv1.MemberChange, error) {
	seq, err := next(ctx, tx, memberID)
	if err != nil {
		return nil, err
	}
	row, err := w.Row(ctx, memberID, seq, ch)
	if err != nil {
		return nil, err
	}
	if err := postgres.InsertOutbox(ctx, tx, row); err != nil {
		return nil, err
	}
	return ch, nil
}

// Row stamps ch as the member's change number seq (id, time, trace) and
// returns its outbox row, for writers that batch their statements and hold
// the member's row lock, so they know the sequence.
func (w Writer) Row(ctx context.Context, memberID uuid.UUID, seq int64, ch *mcv1.MemberChange) (postgres.OutboxRow, error) {
	ch.MemberId = memberID.String()
	ch.Sequence = uint64(seq)
	changeID := uuid.Must(uuid.NewV7())
	ch.ChangeId = changeID.String()
	if ch.OccurredAt == nil {
		now := time.Now
		if w.Now != nil {
			now = w.Now
		}
		ch.OccurredAt = timestamppb.New(now())
	}
	payload, err := proto.Marshal(ch)
	if err != nil {
		return postgres.OutboxRow{}, fmt.Errorf("marshal change: %w", err)
	}
	carrier := propagation.MapCarrier{}
	if w.Propagator != nil {
		w.Propagator.Inject(ctx, carrier)
	}
	return postgres.OutboxRow{
		MemberID: memberID, Sequence: seq, ChangeID: changeID, Payload: payload, Traceparent: carrier.Get("traceparent"),
	}, nil
}
