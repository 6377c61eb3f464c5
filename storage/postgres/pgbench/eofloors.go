package pgbench

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The pipeline benchmark's exactly-once floors: the durable work a stage
// does, done the way PostgreSQL does it best, on logged tables of their
// own. Each floor creates its tables and Drop removes them; a restarted
// floor opens the same tables again (Open…), so tests can stop one
// mid-drain and check what the next run leaves.

// MemberState is a member's state as a floor stores it: a version (events
// applied so far) and an opaque blob.
type MemberState struct {
	Version int64
	State   []byte
}

// StateRow is a member's new state.
type StateRow struct {
	Member uuid.UUID
	MemberState
}

// LedgerRow is an append-only ledger entry of one event.
type LedgerRow struct {
	EventID string
	Member  uuid.UUID
	Amount  int64
}

// OutboxRow is the change one event makes to a member, in the member's
// order (Sequence).
type OutboxRow struct {
	Member   uuid.UUID
	Sequence int64
	EventID  string
	Payload  []byte
}

// Effects are what one batch writes.
type Effects struct {
	States []StateRow
	Ledger []LedgerRow
	Outbox []OutboxRow
}

// FloorTotals sums what a floor's tables hold.
type FloorTotals struct {
	Members, Events           int64 // state rows; sum of their versions
	Processed, Ledger, Outbox int64 // rows (0 where the floor has no such table)
	LedgerAmount              int64
	StoredStateBytes          float64 // average pg_column_size of a state
}

// stateTable is a logged table of a state per member.
type stateTable struct {
	pool                 *pgxpool.Pool
	name, table          string // as given, sanitized
	load, upsert, totals string
}

func newStateTable(pool *pgxpool.Pool, name string) stateTable {
	t := pgx.Identifier{name}.Sanitize()
	return stateTable{pool: pool, name: name, table: t,
		load: `SELECT member_id, version, state FROM ` + t + ` WHERE member_id = ANY($1::uuid[])`,
		upsert: `INSERT INTO ` + t + ` AS t (member_id, version, state, updated_at)
			SELECT m, v, s, now() FROM unnest($1::uuid[], $2::bigint[], $3::bytea[]) AS u(m, v, s)
			ON CONFLICT (member_id) DO UPDATE SET version = EXCLUDED.version, state = EXCLUDED.state, updated_at = EXCLUDED.updated_at`,
		totals: `SELECT count(*), coalesce(sum(version), 0)::bigint, coalesce(avg(pg_column_size(state)), 0)::float8 FROM ` + t,
	}
}

// createWith creates a floor's own tables (stmts) and then the state table.
// A state stays in the row (STORAGE MAIN): a 2 KB state would otherwise go
// to the TOAST table, and each update write it there again. On an error it
// calls drop, which removes whatever was made.
func (s stateTable) createWith(ctx context.Context, drop func(), stmts ...string) error {
	stmts = append(stmts,
		`CREATE TABLE `+s.table+` (member_id uuid PRIMARY KEY, version bigint NOT NULL,
			state bytea NOT NULL, updated_at timestamptz NOT NULL)`,
		`ALTER TABLE `+s.table+` ALTER COLUMN state SET STORAGE MAIN`)
	for _, stmt := range stmts {
		if _, err := s.pool.Exec(ctx, stmt); err != nil {
			drop()
			return err
		}
	}
	return nil
}

// Seed gives each member a state, in one COPY, and refreshes the planner's
// statistics of the table.
func (s stateTable) Seed(ctx context.Context, members []uuid.UUID, state func(uuid.UUID) []byte) error {
	rows, now := make([][]any, len(members)), time.Now()
	for i, m := range members {
		rows[i] = []any{m, int64(0), state(m), now}
	}
	if _, err := s.pool.CopyFrom(ctx, pgx.Identifier{s.name}, []string{"member_id", "version", "state", "updated_at"},
		pgx.CopyFromRows(rows)); err != nil {
		return fmt.Errorf("seed %s: %w", s.table, err)
	}
	_, err := s.pool.Exec(ctx, `VACUUM (ANALYZE) `+s.table)
	return err
}

// States reads every member's state.
func (s stateTable) States(ctx context.Context) (map[uuid.UUID]MemberState, error) {
	rows, err := s.pool.Query(ctx, `SELECT member_id, version, state FROM `+s.table)
	if err != nil {
		return nil, err
	}
	return collectStates(rows)
}

func collectStates(rows pgx.Rows) (map[uuid.UUID]MemberState, error) {
	out := map[uuid.UUID]MemberState{}
	var id uuid.UUID
	var st MemberState
	_, err := pgx.ForEachRow(rows, []any{&id, &st.Version, &st.State}, func() error {
		out[id] = st
		st = MemberState{} // a fresh buffer for the next row
		return nil
	})
	return out, err
}

func (s stateTable) queueUpsert(b *pgx.Batch, states []StateRow) {
	ids, versions, blobs := make([]uuid.UUID, len(states)), make([]int64, len(states)), make([][]byte, len(states))
	for i, r := range states {
		ids[i], versions[i], blobs[i] = r.Member, r.Version, r.State
	}
	b.Queue(s.upsert, ids, versions, blobs)
}

func (s stateTable) totalsInto(ctx context.Context, t *FloorTotals) error {
	return s.pool.QueryRow(ctx, s.totals).Scan(&t.Members, &t.Events, &t.StoredStateBytes)
}

// EOFloor is the exactly-once batch floor's tables: processed event ids, a
// state per member, an append-only ledger and an outbox, all logged.
type EOFloor struct {
	stateTable
	processed, ledger, outbox  string // sanitized
	claim, lock, insLedger, ob string
}

// NewEOFloor creates the tables of the floor name.
func NewEOFloor(ctx context.Context, pool *pgxpool.Pool, name string) (*EOFloor, error) {
	f := OpenEOFloor(pool, name)
	err := f.createWith(ctx, f.Drop,
		`CREATE TABLE `+f.processed+` (event_id text PRIMARY KEY)`,
		`CREATE TABLE `+f.ledger+` (entry_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, event_id text NOT NULL,
			member_id uuid NOT NULL, amount bigint NOT NULL, at timestamptz NOT NULL)`,
		`CREATE TABLE `+f.outbox+` (change_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, member_id uuid NOT NULL,
			sequence bigint NOT NULL, event_id text NOT NULL, payload bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// OpenEOFloor is the floor name whose tables exist.
func OpenEOFloor(pool *pgxpool.Pool, name string) *EOFloor {
	f := &EOFloor{stateTable: newStateTable(pool, name+"_state"),
		processed: pgx.Identifier{name + "_processed"}.Sanitize(),
		ledger:    pgx.Identifier{name + "_ledger"}.Sanitize(),
		outbox:    pgx.Identifier{name + "_outbox"}.Sanitize()}
	f.claim = `INSERT INTO ` + f.processed + ` (event_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING RETURNING event_id`
	// Sorted, so that two batches sharing members lock them in one order.
	f.lock = f.stateTable.load + ` ORDER BY member_id FOR UPDATE`
	f.insLedger = `INSERT INTO ` + f.ledger + ` (event_id, member_id, amount, at)
		SELECT e, m, a, now() FROM unnest($1::text[], $2::uuid[], $3::bigint[]) AS u(e, m, a)`
	f.ob = `INSERT INTO ` + f.outbox + ` (member_id, sequence, event_id, payload)
		SELECT m, s, e, p FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bytea[]) AS u(m, s, e, p)`
	return f
}

// Drop removes the floor's tables.
func (f *EOFloor) Drop() {
	_, _ = f.pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+f.processed+`, `+f.table+`, `+f.ledger+`, `+f.outbox)
}

// Batch runs one transaction over a batch of events: it records the ids
// (duplicates in the batch allowed) and keeps those not recorded before,
// loads and locks the members' states (those without one are absent),
// hands both to apply, writes back what apply returns in multi-row
// statements and commits. Two round trips carry the statements (claim and
// lock, then state upsert, ledger and outbox), besides BEGIN and COMMIT.
func (f *EOFloor) Batch(ctx context.Context, ids []string, members []uuid.UUID,
	apply func(fresh []string, states map[uuid.UUID]MemberState) (Effects, error)) error {
	return pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue(f.claim, ids)
		b.Queue(f.lock, members)
		res := tx.SendBatch(ctx, b)
		rows, _ := res.Query()
		fresh, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			_ = res.Close()
			return fmt.Errorf("claim event ids: %w", err)
		}
		rows, _ = res.Query()
		states, err := collectStates(rows)
		if err != nil {
			_ = res.Close()
			return fmt.Errorf("lock member states: %w", err)
		}
		if err := res.Close(); err != nil {
			return err
		}
		eff, err := apply(fresh, states)
		if err != nil || len(eff.States)+len(eff.Ledger)+len(eff.Outbox) == 0 {
			return err
		}
		b = &pgx.Batch{}
		if len(eff.States) > 0 {
			f.queueUpsert(b, eff.States)
		}
		if n := len(eff.Ledger); n > 0 {
			evs, ms, amounts := make([]string, n), make([]uuid.UUID, n), make([]int64, n)
			for i, l := range eff.Ledger {
				evs[i], ms[i], amounts[i] = l.EventID, l.Member, l.Amount
			}
			b.Queue(f.insLedger, evs, ms, amounts)
		}
		if n := len(eff.Outbox); n > 0 {
			ms, seqs, evs, payloads := make([]uuid.UUID, n), make([]int64, n), make([]string, n), make([][]byte, n)
			for i, o := range eff.Outbox {
				ms[i], seqs[i], evs[i], payloads[i] = o.Member, o.Sequence, o.EventID, o.Payload
			}
			b.Queue(f.ob, ms, seqs, evs, payloads)
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("write effects: %w", err)
		}
		return nil
	})
}

// Totals sums the floor's tables.
func (f *EOFloor) Totals(ctx context.Context) (FloorTotals, error) {
	var t FloorTotals
	if err := f.totalsInto(ctx, &t); err != nil {
		return t, err
	}
	err := f.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM `+f.processed+`), (SELECT count(*) FROM `+f.ledger+`),
		(SELECT coalesce(sum(amount), 0)::bigint FROM `+f.ledger+`), (SELECT count(*) FROM `+f.outbox+`)`).
		Scan(&t.Processed, &t.Ledger, &t.LedgerAmount, &t.Outbox)
	return t, err
}

// StateFloor is the in-memory state floor's tables: a state per member,
// written behind, and each partition's next offset, written in the same
// transaction (the exactly-once mark: no processed ids).
type StateFloor struct {
	stateTable
	offsets           string // sanitized
	saveOffset, start string
}

// NewStateFloor creates the tables of the floor name.
func NewStateFloor(ctx context.Context, pool *pgxpool.Pool, name string) (*StateFloor, error) {
	f := OpenStateFloor(pool, name)
	err := f.createWith(ctx, f.Drop, `CREATE TABLE `+f.offsets+` (topic text NOT NULL, partition int NOT NULL,
		next_offset bigint NOT NULL, PRIMARY KEY (topic, partition))`)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// OpenStateFloor is the floor name whose tables exist.
func OpenStateFloor(pool *pgxpool.Pool, name string) *StateFloor {
	f := &StateFloor{stateTable: newStateTable(pool, name+"_state"), offsets: pgx.Identifier{name + "_offsets"}.Sanitize()}
	f.saveOffset = `INSERT INTO ` + f.offsets + ` (topic, partition, next_offset) VALUES ($1, $2, $3)
		ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset`
	f.start = `SELECT partition, next_offset FROM ` + f.offsets + ` WHERE topic = $1`
	return f
}

// Drop removes the floor's tables.
func (f *StateFloor) Drop() {
	_, _ = f.pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+f.table+`, `+f.offsets)
}

// Load reads the states of the members that have one.
func (f *StateFloor) Load(ctx context.Context, members []uuid.UUID) (map[uuid.UUID]MemberState, error) {
	rows, err := f.pool.Query(ctx, f.load, members)
	if err != nil {
		return nil, err
	}
	return collectStates(rows)
}

// Offsets reads the next offset of each of topic's partitions written so
// far.
func (f *StateFloor) Offsets(ctx context.Context, topic string) (map[int32]int64, error) {
	rows, err := f.pool.Query(ctx, f.start, topic)
	if err != nil {
		return nil, err
	}
	out := map[int32]int64{}
	var p int32
	var next int64
	_, err = pgx.ForEachRow(rows, []any{&p, &next}, func() error { out[p] = next; return nil })
	return out, err
}

// Flush writes the states and the partition's next offset in one
// transaction: one round trip (a pipeline in an implicit transaction).
func (f *StateFloor) Flush(ctx context.Context, topic string, partition int32, next int64, states []StateRow) error {
	b := &pgx.Batch{}
	if len(states) > 0 {
		f.queueUpsert(b, states)
	}
	b.Queue(f.saveOffset, topic, partition, next)
	if err := f.pool.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("write behind %d states with offset %d of %s/%d: %w", len(states), next, topic, partition, err)
	}
	return nil
}

// Totals sums the floor's state table.
func (f *StateFloor) Totals(ctx context.Context) (FloorTotals, error) {
	var t FloorTotals
	return t, f.totalsInto(ctx, &t)
}
