// Package members applies member events for the tag and the benefit stage
// together: one consumer of member.events.v1, one transaction per
// partition batch in which a member's labels change and its benefits
// follow them.
//
// Run apart, the two stages each lock, load and write the same members in
// transactions of their own (and wait on each other's locks), and a
// benefit that follows a label is decided only when the label check runs
// after the tag stage committed. Together, a batch's events are folded
// into the members' features and labels first, then applied to their
// loyalty state with those labels, and a member whose label a benefit
// depends on changed is re-evaluated before the transaction commits. Each
// stage still records the events it processed under its own name, so a
// process that runs one stage alone and one that runs both can share the
// stream: an event is applied once by each stage whoever reads it first.
package members

import (
	"context"
	"errors"
	"maps"

	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/contract"
	"github.com/membercenter/membercenter/pipeline/fault"
	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/tags"
)

// Stage is the combined stage's name in consumer groups and telemetry.
const Stage = "members"

var _ contract.BatchApplier = Applier{}

// Applier applies member events for both stages.
type Applier struct {
	Tags     *tags.Service
	Benefits *benefits.Service
}

// Apply applies one event, as a batch of one.
func (a Applier) Apply(ctx context.Context, ev *mcv1.MemberEvent) error {
	rejected, err := a.ApplyBatch(ctx, []*mcv1.MemberEvent{ev})
	if err != nil {
		return err
	}
	return rejected[0]
}

// ApplyBatch applies a partition's batch in one transaction: the tag
// stage's effects, then the benefit stage's, then the label checks of the
// batch's members. An event either stage refuses is refused (with both
// reasons when both do); what the other stage made of it stands, and a
// replay of the refused record changes nothing in that stage — but for a
// purchase under an order id another member holds, which the benefit stage
// alone can tell: the transaction is tried again without it in the tag
// stage, so that its spend counts in no member's labels.
func (a Applier) ApplyBatch(ctx context.Context, evs []*mcv1.MemberEvent) (map[int]error, error) {
	tb, rejected := a.Tags.PrepareBatch(evs)
	bb, brejected := a.Benefits.PrepareBatch(evs)
	refuse(rejected, brejected)
	if tb.Empty() && bb.Empty() {
		return rejected, nil
	}
	taken := map[int]bool{}              // purchases of another member's order, left out of the tag stage
	var trefused, brefused map[int]error // by the transaction (an attempt's own)
	var err error
	for {
		tagBatch := tb
		if len(taken) > 0 {
			tagBatch = tb.Without(taken)
		}
		err = a.Benefits.InTx(ctx, func(tx pgx.Tx) error {
			trefused, brefused = map[int]error{}, map[int]error{}
			// The shared limits' rows (a campaign's budget) are written
			// last, so the batch holds them for its commit only; the
			// phases' changes go to the outbox together, with them.
			held := benefits.NewHeld()
			changed, err := a.Tags.ApplyPrepared(ctx, tx, tagBatch, trefused, held.Outbox())
			if err != nil {
				return err
			}
			if err := a.Benefits.ApplyPrepared(ctx, tx, bb, brefused, held); err != nil {
				return err
			}
			again := false
			for i, err := range brefused {
				if errors.Is(err, benefits.ErrOrderTaken) && !taken[i] {
					taken[i], again = true, true
				}
			}
			if again {
				return errWithoutTaken
			}
			if err := a.Benefits.CheckLabelsOf(ctx, tx, changed, held); err != nil {
				return err
			}
			return a.Benefits.WriteHeld(ctx, tx, held)
		})
		if !errors.Is(err, errWithoutTaken) {
			tb = tagBatch
			break
		}
	}
	if err != nil {
		return nil, err
	}
	a.Tags.Committed(tb)
	refuse(rejected, trefused)
	refuse(rejected, brefused)
	return rejected, nil
}

// errWithoutTaken rolls an attempt back to apply the batch again without,
// in the tag stage, the purchases the benefit stage refused as another
// member's order.
var errWithoutTaken = errors.New("a purchase of another member's order: again without it in the tag stage")

// refuse adds more's refusals to rejected. When both stages refuse an
// event for different reasons, two data errors are one with both reasons;
// otherwise the one that is not a data error decides what becomes of it.
func refuse(rejected, more map[int]error) {
	for i, err := range maps.All(more) {
		prev, ok := rejected[i]
		switch {
		case !ok || prev.Error() == err.Error():
		case fault.IsData(prev) && fault.IsData(err):
			err = fault.Permanent(errors.Join(prev, err))
		case fault.IsData(err):
			err = prev
		}
		rejected[i] = err
	}
}
