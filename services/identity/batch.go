package identity

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/contract"
	"github.com/membercenter/membercenter/pipeline/fault"
)

var _ contract.BatchResolver = (*Service)(nil)

// ResolveEvents resolves a partition's events in order, as ResolveEvent
// would one by one, with one lookup for every run of events that change
// nothing in the identity graph: an event seen before gets its first
// answer, and one whose identifiers all belong, uniquely, to one member
// only records its resolution (one statement for the run). An event that
// links, creates, merges or refuses takes ResolveEvent's transactional path
// alone, and the events after it are looked up again, so that each sees
// what the events before it did.
func (s *Service) ResolveEvents(ctx context.Context, evs []*mcv1.ChannelEvent) ([]contract.Resolution, []error) {
	out := make([]contract.Resolution, len(evs))
	errs := make([]error, len(evs))
	norm := make([][]Normalized, len(evs))
	for i, ev := range evs {
		ids, err := s.Normalize(ev.GetIdentifiers())
		if err != nil {
			if errors.Is(err, ErrInvalidIdentifier) {
				err = fault.Permanent(err)
			}
			errs[i] = err
			continue
		}
		norm[i] = ids
	}
	for i := 0; i < len(evs); {
		j, slow, err := s.resolveRun(ctx, evs, norm, i, out, errs)
		if err != nil {
			// The lookup itself failed: every event from i on fails with it.
			for k := i; k < len(evs); k++ {
				if errs[k] == nil {
					errs[k] = err
				}
			}
			return out, errs
		}
		if slow {
			out[j], errs[j] = s.ResolveEvent(ctx, evs[j])
			if errs[j] != nil && !fault.IsData(errs[j]) {
				// The events after it wait for it: each must see what the
				// ones before it did.
				for k := j + 1; k < len(evs); k++ {
					if errs[k] == nil {
						errs[k] = errNotAttempted
					}
				}
				return out, errs
			}
			j++
		}
		i = j
	}
	return out, errs
}

// lookupWindow is how many events one lookup covers at most.
const lookupWindow = 64

// errNotAttempted is the answer for the events after one whose resolution
// failed (not for a data error): they are resolved once it is.
var errNotAttempted = errors.New("not resolved yet: an earlier event of the partition failed")

// resolveRun answers the events of a window from i on that the lookup can,
// and returns where it stopped: at an event that needs the transactional
// path (slow), or at the end of the window.
func (s *Service) resolveRun(ctx context.Context, evs []*mcv1.ChannelEvent, norm [][]Normalized, i int,
	out []contract.Resolution, errs []error) (next int, slow bool, err error) {
	var eventIDs []string
	var keys []postgres.IdentifierKey
	// A window, not the rest of the batch: every event that changes the
	// graph ends a run and the next run looks up again, so a batch with
	// many of them would otherwise look up the same events many times.
	end := min(len(evs), i+lookupWindow)
	for k := i; k < end; k++ {
		if errs[k] == nil {
			eventIDs = append(eventIDs, evs[k].GetEventId())
			for _, n := range norm[k] {
				keys = append(keys, keyOf(n))
			}
		}
	}
	if len(eventIDs) == 0 {
		return end, false, nil
	}
	prev, found, err := postgres.LookupIngestBatch(ctx, s.pool, eventIDs, keys)
	if err != nil {
		return i, false, err
	}
	byHash := map[string][]postgres.IdentifierRow{}
	for _, f := range found {
		byHash[string(f.Hash)] = append(byHash[string(f.Hash)], f)
	}
	var record []postgres.IngestedEvent
	var recordAt []int
	j := i
	for ; j < end; j++ {
		if errs[j] != nil {
			continue
		}
		ev := evs[j]
		if p, ok := prev[ev.GetEventId()]; ok {
			detail := &mcv1.Resolution{}
			if err := proto.Unmarshal(p.Resolution, detail); err != nil {
				errs[j] = fmt.Errorf("stored resolution of %s: %w", ev.GetEventId(), err)
				continue
			}
			out[j] = contract.Resolution{MemberID: p.MemberID.String(), Identifiers: Refs(norm[j]), Detail: detail}
			continue
		}
		member, origin, ok := s.knownMember(ev, norm[j], byHash)
		if !ok {
			slow = true
			break
		}
		detail := &mcv1.Resolution{OriginMemberId: origin.String()}
		stored, err := proto.MarshalOptions{Deterministic: true}.Marshal(detail)
		if err != nil {
			return i, false, err
		}
		record = append(record, postgres.IngestedEvent{EventID: ev.GetEventId(), MemberID: member, Resolution: stored})
		recordAt = append(recordAt, j)
		out[j] = contract.Resolution{MemberID: member.String(), Identifiers: Refs(norm[j]), Detail: detail}
	}
	if len(record) == 0 {
		return j, slow, nil
	}
	inserted, err := postgres.InsertIngestedEvents(ctx, s.pool, record)
	if err != nil {
		return i, false, err
	}
	// An event a concurrent ingest recorded first takes the transactional
	// path (it answers with the first resolution), and so does everything
	// after it.
	for n, k := range recordAt {
		if !inserted[record[n].EventID] {
			for m := k; m < j; m++ {
				out[m] = contract.Resolution{}
			}
			return k, true, nil
		}
	}
	return j, slow, nil
}

// knownMember is the member an event's identifiers all belong to, uniquely,
// and the origin of its strongest identifier; ok is false when resolving
// the event would change the graph (an unknown, shared or blocked
// identifier, two members, a referral to check).
func (s *Service) knownMember(ev *mcv1.ChannelEvent, ids []Normalized, byHash map[string][]postgres.IdentifierRow) (member, origin uuid.UUID, ok bool) {
	if ev.GetReferral().GetReferee() != nil {
		return uuid.Nil, uuid.Nil, false
	}
	var best *postgres.IdentifierRow
	for _, n := range ids {
		if s.rules.Blocked(n.Type, n.Value) {
			return uuid.Nil, uuid.Nil, false
		}
		rows := byHash[string(n.Hash)]
		var f *postgres.IdentifierRow
		for k := range rows {
			if rows[k].Type == int16(n.Type) && rows[k].Scope == n.Scope {
				f = &rows[k]
			}
		}
		if f == nil || !f.Unique || (best != nil && f.MemberID != best.MemberID) {
			return uuid.Nil, uuid.Nil, false
		}
		// The strongest identifier, then the latest link, as in resolve.
		if best == nil || s.better(match{member: f.MemberID, id: Normalized{Type: mcv1.IdentifierType(f.Type)}, unique: true, linkedAt: f.LinkedAt},
			match{member: best.MemberID, id: Normalized{Type: mcv1.IdentifierType(best.Type)}, unique: true, linkedAt: best.LinkedAt}) {
			best = f
		}
	}
	if best == nil {
		return uuid.Nil, uuid.Nil, false
	}
	return best.MemberID, best.OriginMemberID, true
}
