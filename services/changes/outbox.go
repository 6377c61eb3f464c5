package changes

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/membercenter/membercenter/pipeline/contract"
	"github.com/membercenter/membercenter/storage/postgres"
)

// relayLockKey is the advisory lock that makes one relay the leader.
const relayLockKey = 0x6d63_6f75_7462_6f78 // "mcoutbox"

// Outbox serves the outbox table to the relay.
type Outbox struct {
	Pool *pgxpool.Pool
}

var _ contract.Outbox = Outbox{}

// Lead waits for the relay advisory lock on a dedicated connection, which
// also probes the outbox for new rows, then starts a new term of group. The lock
// lives as long as the connection: it is released at once when the leader
// process dies (its socket closes), and within about ten seconds when its
// host or network does (the server probes the idle connection: TCP
// keepalives and a user timeout set for this session), so a standby takes
// over in seconds either way. The term, not the lock, keeps a leader that
// lost its connection without noticing from writing anything.
func (o Outbox) Lead(ctx context.Context, group, leader string) (contract.OutboxSession, error) {
	l, err := postgres.AcquireRelayConn(ctx, o.Pool)
	if err != nil {
		return nil, err
	}
	if err := l.LeadRelay(ctx, int64(relayLockKey)); err != nil {
		l.Close()
		return nil, err
	}
	term, err := postgres.NewRelayTerm(ctx, o.Pool, group, leader)
	if err != nil {
		l.Close()
		return nil, err
	}
	return &session{pool: o.Pool, conn: l, group: group, term: term}, nil
}

type session struct {
	pool  *pgxpool.Pool
	conn  *postgres.RelayConn
	group string
	term  int64
}

func (s *session) Term() int64 { return s.term }

func (s *session) InFlight(ctx context.Context) (*contract.OutboxBatch, error) {
	id, rows, err := postgres.RelayBatchInFlight(ctx, s.pool, s.group)
	if err != nil || id == (uuid.UUID{}) {
		return nil, err
	}
	return toBatch(id, rows), nil
}

func (s *session) Claim(ctx context.Context, limit int) (*contract.OutboxBatch, error) {
	id := uuid.New()
	var rows []postgres.OutboxRow
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		rows, err = postgres.ClaimRelayBatch(ctx, tx, s.group, s.term, id, limit)
		return err
	})
	if err != nil || len(rows) == 0 {
		return nil, err
	}
	return toBatch(id, rows), nil
}

func (s *session) Published(ctx context.Context, b *contract.OutboxBatch) error {
	id, err := uuid.Parse(b.ID)
	if err != nil {
		return fmt.Errorf("relay batch id %q: %w", b.ID, err)
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		return postgres.MarkRelayBatchPublished(ctx, tx, s.group, s.term, id)
	})
}

func toBatch(id uuid.UUID, rows []postgres.OutboxRow) *contract.OutboxBatch {
	b := &contract.OutboxBatch{ID: id.String(), Changes: make([]contract.OutboxChange, len(rows))}
	for i, r := range rows {
		b.Changes[i] = contract.OutboxChange{
			MemberID: r.MemberID.String(), Sequence: r.Sequence, Payload: r.Payload,
			Traceparent: r.Traceparent, CreatedAt: r.CreatedAt,
		}
	}
	return b
}

func (s *session) Wait(ctx context.Context, timeout time.Duration) error {
	return s.conn.WaitOutbox(ctx, timeout)
}

func (s *session) Close() { s.conn.Close() }
