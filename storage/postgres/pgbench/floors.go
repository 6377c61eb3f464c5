package pgbench

import (
	"context"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/membercenter/membercenter/storage/postgres"
)

// The benchmarks' floors: the same writes without the platform, one
// autocommitted upsert of a scratch table at a time. Each floor creates its
// table and Drop removes it. The statements, as the reports name them:
const (
	// KeyFloorStatement is KeyFloor's.
	KeyFloorStatement = "INSERT … ON CONFLICT (k) DO UPDATE"
	// MemberFloorStatement is MemberFloor's.
	MemberFloorStatement = "INSERT … ON CONFLICT DO UPDATE"
)

type floor struct {
	q      postgres.Querier
	table  string // sanitized
	upsert string
}

func newFloor(ctx context.Context, q postgres.Querier, name string, create [2]string, upsert string) (floor, error) {
	table := pgx.Identifier{name}.Sanitize()
	if _, err := q.Exec(ctx, `CREATE `+create[0]+`TABLE `+table+` `+create[1]); err != nil {
		return floor{}, err
	}
	return floor{q: q, table: table, upsert: `INSERT INTO ` + table + ` AS t ` + upsert}, nil
}

// Drop removes the floor's table.
func (f floor) Drop() {
	_, _ = f.q.Exec(context.Background(), `DROP TABLE IF EXISTS `+f.table)
}

// KeyFloor is an UNLOGGED table of counters by a bigint key.
type KeyFloor struct{ floor }

// NewKeyFloor creates the table name.
func NewKeyFloor(ctx context.Context, q postgres.Querier, name string) (*KeyFloor, error) {
	f, err := newFloor(ctx, q, name, [2]string{"UNLOGGED ", `(k bigint PRIMARY KEY, n bigint NOT NULL, at timestamptz NOT NULL)`},
		`(k, n, at) VALUES ($1, 1, $2) ON CONFLICT (k) DO UPDATE SET n = t.n + 1, at = EXCLUDED.at`)
	return &KeyFloor{f}, err
}

// Upsert counts one more write of k at at.
func (f *KeyFloor) Upsert(ctx context.Context, k int64, at time.Time) error {
	_, err := f.q.Exec(ctx, f.upsert, k, at)
	return err
}

// MemberFloor is a table of a row per member: events and amounts summed.
type MemberFloor struct{ floor }

// NewMemberFloor creates the table name.
func NewMemberFloor(ctx context.Context, q postgres.Querier, name string) (*MemberFloor, error) {
	f, err := newFloor(ctx, q, name, [2]string{"", `(member_id uuid PRIMARY KEY, events bigint NOT NULL,
		amount bigint NOT NULL, updated_at timestamptz NOT NULL)`},
		`(member_id, events, amount, updated_at) VALUES ($1, 1, $2, $3)
		ON CONFLICT (member_id) DO UPDATE SET events = t.events + 1, amount = t.amount + EXCLUDED.amount, updated_at = EXCLUDED.updated_at`)
	return &MemberFloor{f}, err
}

// Upsert adds an event of amount for member at at.
func (f *MemberFloor) Upsert(ctx context.Context, member uuid.UUID, amount int64, at time.Time) error {
	_, err := f.q.Exec(ctx, f.upsert, member, amount, at)
	return err
}

// RecordFloor is an UNLOGGED table of the last value per record key.
type RecordFloor struct{ floor }

// NewRecordFloor creates the table name.
func NewRecordFloor(ctx context.Context, q postgres.Querier, name string) (*RecordFloor, error) {
	f, err := newFloor(ctx, q, name, [2]string{"UNLOGGED ", `(k text PRIMARY KEY, n bigint NOT NULL, v bytea)`},
		`(k, n, v) VALUES ($1, 1, $2) ON CONFLICT (k) DO UPDATE SET n = t.n + 1, v = EXCLUDED.v`)
	return &RecordFloor{f}, err
}

// Upsert stores value as key's newest.
func (f *RecordFloor) Upsert(ctx context.Context, key string, value []byte) error {
	_, err := f.q.Exec(ctx, f.upsert, key, value)
	return err
}
