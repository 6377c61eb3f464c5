package benefits

import (
	"github.com/google/uuid"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
)

// Hooks into group commit for the tests of package benefits_test.

// HoldGroups stops the committers from taking calls until release: the
// calls made meanwhile are queued, then taken together.
func HoldGroups(s *Service) (release func()) { return s.group.hold() }

// QueuedCalls is how many calls wait for a committer.
func QueuedCalls(s *Service) int { return s.group.queued() }

// GroupStats is how many groups were taken, with how many calls, and how
// many fell back to the single path.
func GroupStats(s *Service) (groups, calls, fallbacks int) {
	s.group.mu.Lock()
	defer s.group.mu.Unlock()
	return s.group.stats.Groups, s.group.stats.Calls, s.group.stats.Fallbacks
}

// SetGroupFault makes each group attempt call f inside its transaction
// after its writes (stage "commit") and after it committed ("committed");
// an error f returns is the attempt's.
func SetGroupFault(s *Service, f func(stage string, attempt int) error) { s.group.fault = f }

// ToState is the engine's view of loaded rows.
func ToState(member uuid.UUID, rows postgres.LoyaltyRows, p *Program) (*State, error) {
	return toState(member, rows, p)
}

// QuoteOn answers a Quote of b for st's member as Quote does once loaded.
func QuoteOn(s *Service, st *State, b *mcv1.Basket) (*mcv1.QuoteResponse, error) {
	op, err := s.basketOp(b)
	if err != nil {
		return nil, err
	}
	op.Origin, op.Cause = st.MemberID, "quote"
	return s.quote(st, op)
}

// LoadEachLot makes s load every open lot one by one for every operation,
// as it did before settled lots were loaded as one sum.
func LoadEachLot(s *Service) { s.eachLot = true }
