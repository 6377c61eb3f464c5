package pgbench

import (
	"context"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// ownConn is a connection of its own, apart from the pool under load.
type ownConn struct{ conn *pgx.Conn }

// openOwn connects to url and hands the connection to wrap.
func openOwn[T any](ctx context.Context, url string, wrap func(ownConn) *T) (*T, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, err
	}
	return wrap(ownConn{conn: conn}), nil
}

// Close closes the connection.
func (o ownConn) Close() { o.conn.Close(context.Background()) }

// VersionReader is a connection of its own that reads members' label
// versions, polled by the freshness checkers.
type VersionReader struct{ ownConn }

// OpenVersionReader connects to url.
func OpenVersionReader(ctx context.Context, url string) (*VersionReader, error) {
	return openOwn(ctx, url, func(c ownConn) *VersionReader { return &VersionReader{c} })
}

// FeatureVersions is FeatureVersions on the reader's connection.
func (l *VersionReader) FeatureVersions(ctx context.Context, members []uuid.UUID) (map[uuid.UUID]FeatureVersion, error) {
	return FeatureVersions(ctx, l.conn, members)
}

// Sessions reads pg_stat_activity of one database on a connection of its
// own, leaving itself out.
type Sessions struct{ ownConn }

// OpenSessions connects to the database at url.
func OpenSessions(ctx context.Context, url string) (*Sessions, error) {
	return openOwn(ctx, url, func(c ownConn) *Sessions { return &Sessions{c} })
}

// SessionCounts is how many client sessions of the database are in each
// state at one moment.
type SessionCounts struct {
	// Running a statement; waiting for a lock; waiting for I/O or WAL; idle
	// in a transaction (waiting for its client); waiting for anything else.
	Running, Lock, IO, IdleInTxn, Other float64
}

// Count counts the database's client sessions by state.
func (s *Sessions) Count(ctx context.Context) (SessionCounts, error) {
	var c SessionCounts
	err := s.conn.QueryRow(ctx, `SELECT
		count(*) FILTER (WHERE state = 'active' AND wait_event_type IS NULL),
		count(*) FILTER (WHERE state = 'active' AND wait_event_type = 'Lock'),
		count(*) FILTER (WHERE state = 'active' AND (wait_event_type = 'IO' OR wait_event LIKE 'WAL%')),
		count(*) FILTER (WHERE state = 'idle in transaction'),
		count(*) FILTER (WHERE state = 'active' AND wait_event_type IS NOT NULL AND wait_event_type NOT IN ('Lock', 'IO') AND wait_event NOT LIKE 'WAL%')
		  FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()`).
		Scan(&c.Running, &c.Lock, &c.IO, &c.IdleInTxn, &c.Other)
	return c, err
}

// ActiveStatement is a statement a session is running (or waiting for a
// lock in): the first 60 characters, after its wait event.
type ActiveStatement struct {
	Lock  bool
	Query string
}

// Active lists the statements running or waiting for a lock.
func (s *Sessions) Active(ctx context.Context) ([]ActiveStatement, error) {
	rows, err := s.conn.Query(ctx, `SELECT wait_event_type IS NOT NULL,
		       coalesce('(' || wait_event || ') ', '') || left(regexp_replace(query, '\s+', ' ', 'g'), 60)
		  FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
		   AND state = 'active' AND (wait_event_type IS NULL OR wait_event_type = 'Lock')`)
	if err != nil {
		return nil, err
	}
	var out []ActiveStatement
	var a ActiveStatement
	_, err = pgx.ForEachRow(rows, []any{&a.Lock, &a.Query}, func() error { out = append(out, a); return nil })
	return out, err
}
