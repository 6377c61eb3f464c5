package changes

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/membercenter/membercenter/pipeline/relay"
	"github.com/membercenter/membercenter/storage/postgres"
)

// relayLockKey is the advisory lock that makes one relay the leader.
const relayLockKey = 0x6d63_6f75_7462_6f78 // "mcoutbox"

// Outbox serves the outbox table to the relay.
type Outbox struct {
	Pool *pgxpool.Pool
}

var _ relay.Outbox = Outbox{}

// Lead waits for the relay advisory lock on a dedicated connection that also
// listens for outbox inserts. The lock lives as long as the connection.
func (o Outbox) Lead(ctx context.Context) (relay.Session, error) {
	l, err := postgres.Listen(ctx, o.Pool)
	if err != nil {
		return nil, err
	}
	if err := l.Exec(ctx, "SELECT pg_advisory_lock($1)", int64(relayLockKey)); err != nil {
		l.Close()
		return nil, fmt.Errorf("relay leadership lock: %w", err)
	}
	return &session{pool: o.Pool, listen: l}, nil
}

type session struct {
	pool   *pgxpool.Pool
	listen *postgres.ListenOutbox
}

func (s *session) Drain(ctx context.Context, limit int, publish func(context.Context, []relay.Change) error) (int, error) {
	n := 0
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := postgres.ClaimOutbox(ctx, tx, limit)
		if err != nil || len(rows) == 0 {
			return err
		}
		batch := make([]relay.Change, len(rows))
		ids := make([]int64, len(rows))
		for i, r := range rows {
			batch[i] = toRelayChange(r)
			ids[i] = r.OutboxID
		}
		if err := publish(ctx, batch); err != nil {
			return err
		}
		n = len(rows)
		return postgres.MarkPublished(ctx, tx, ids)
	})
	return n, err
}

func toRelayChange(r postgres.OutboxRow) relay.Change {
	return relay.Change{
		MemberID: r.MemberID.String(), Sequence: r.Sequence, Payload: r.Payload,
		Traceparent: r.Traceparent, CreatedAt: r.CreatedAt,
	}
}

func (s *session) Wait(ctx context.Context, timeout time.Duration) error {
	return s.listen.Wait(ctx, timeout)
}

func (s *session) Close() { s.listen.Close() }
