package postgres_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

// TestFeatureStateBecomesBytes: migration 00015 keeps a JSON feature state
// as its text (which the tag engine still reads), takes binary states, and
// its rollback gives the JSON back and empties binary ones.
func TestFeatureStateBecomesBytes(t *testing.T) {
	ctx := context.Background()
	at := time.Date(2026, 3, 18, 12, 0, 0, 0, time.UTC) // any instant: nothing here reads it
	pool, p := migratedTo(t, 13)
	jsonMember, binMember := uuid.New(), uuid.New()
	for _, m := range []uuid.UUID{jsonMember, binMember} {
		if err := postgres.InsertMember(ctx, pool, m, at); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, `INSERT INTO member_features (member_id, state) VALUES ($1, '{"p": [{"t": 1, "m": 200}]}')`, jsonMember); err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(ctx, 15); err != nil {
		t.Fatal(err)
	}
	var state []byte
	if err := pool.QueryRow(ctx, `SELECT state FROM member_features WHERE member_id = $1`, jsonMember).Scan(&state); err != nil {
		t.Fatal(err)
	}
	if string(state) != `{"p": [{"m": 200, "t": 1}]}` {
		t.Errorf("JSON state after the migration: %q", state)
	}
	// (Written as the worker wrote it then: today's write has columns
	// later migrations add.)
	bin := []byte{0x01, 0x0a, 0x03, 'p', 'o', 's'}
	if _, err := pool.Exec(ctx, `INSERT INTO member_features (member_id, state, labels_pb, version, updated_at) VALUES ($1, $2, '', 1, $3)`,
		binMember, bin, at); err != nil {
		t.Fatal(err)
	}
	var back []byte
	if err := pool.QueryRow(ctx, `SELECT state FROM member_features WHERE member_id = $1`, binMember).Scan(&back); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, bin) {
		t.Errorf("binary state read back as %x", back)
	}
	// Rolled back: JSON is JSON again, binary is gone.
	if _, err := p.DownTo(ctx, 14); err != nil {
		t.Fatal(err)
	}
	var js, bs string
	if err := pool.QueryRow(ctx, `SELECT (SELECT state::text FROM member_features WHERE member_id = $1),
		(SELECT state::text FROM member_features WHERE member_id = $2)`, jsonMember, binMember).Scan(&js, &bs); err != nil {
		t.Fatal(err)
	}
	if js != `{"p": [{"m": 200, "t": 1}]}` || bs != "{}" {
		t.Errorf("rolled back: %s and %s", js, bs)
	}
}

// TestUnchangedLabelsAreKept: a features write without labels (they did
// not change) keeps the stored ones; a new row gets none; written labels_pb
// supersede the JSON labels of a row written before it.
func TestUnchangedLabelsAreKept(t *testing.T) {
	ctx := context.Background()
	at := time.Date(2026, 3, 18, 12, 0, 0, 0, time.UTC) // any instant: nothing here reads it
	pool := pgtest.NewPool(t, nil)
	m, fresh := uuid.New(), uuid.New()
	for _, id := range []uuid.UUID{m, fresh} {
		if err := postgres.InsertMember(ctx, pool, id, at); err != nil {
			t.Fatal(err)
		}
	}
	write := func(fs ...postgres.FeaturesWrite) {
		t.Helper()
		b := &pgx.Batch{}
		postgres.QueueFeaturesBatch(b, fs, nil)
		if err := pool.SendBatch(ctx, b).Close(); err != nil {
			t.Fatal(err)
		}
	}
	write(postgres.FeaturesWrite{Member: m, State: []byte{1}, Version: 0, At: at})
	if _, err := pool.Exec(ctx, `UPDATE member_features SET labels = '{"a": true}' WHERE member_id = $1`, m); err != nil {
		t.Fatal(err)
	}
	write(postgres.FeaturesWrite{Member: m, State: []byte{1}, LabelsPB: []byte{1, 2}, Version: 1, At: at})
	write(postgres.FeaturesWrite{Member: m, State: []byte{1, 9}, Version: 1, At: at},
		postgres.FeaturesWrite{Member: fresh, State: []byte{1}, Version: 0, At: at})
	for _, c := range []struct {
		id            uuid.UUID
		state, labels string
		pb            []byte
	}{{m, "\x01\x09", `{}`, []byte{1, 2}}, {fresh, "\x01", `{}`, nil}} {
		var state, pb []byte
		var labels string
		if err := pool.QueryRow(ctx, `SELECT state, labels::text, labels_pb FROM member_features WHERE member_id = $1`, c.id).Scan(&state, &labels, &pb); err != nil {
			t.Fatal(err)
		}
		if string(state) != c.state || labels != c.labels || !bytes.Equal(pb, c.pb) {
			t.Errorf("member %s: state %x, labels %s, labels_pb %x; want %x, %s, %x", c.id, state, labels, pb, c.state, c.labels, c.pb)
		}
	}
}

// TestDequeueLeavesAMemberAWorkerHolds: the exporter's dequeue does not
// wait for a worker queuing a newer version of a member: it removes the
// members no one holds, leaves the held one queued, and the worker's
// version stands once it commits.
func TestDequeueLeavesAMemberAWorkerHolds(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	at := time.Date(2026, 3, 18, 12, 0, 0, 0, time.UTC) // any instant: nothing here reads it
	pool := pgtest.NewPool(t, nil)
	held, free := uuid.New(), uuid.New()
	queue := func(q interface {
		SendBatch(context.Context, *pgx.Batch) pgx.BatchResults
	}, m uuid.UUID, version int64) {
		t.Helper()
		b := &pgx.Batch{}
		postgres.QueueProfileExports(b, []uuid.UUID{m}, []int64{version})
		if err := q.SendBatch(ctx, b).Close(); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range []uuid.UUID{held, free} {
		if err := postgres.InsertMember(ctx, pool, m, at); err != nil {
			t.Fatal(err)
		}
		queue(pool, m, 1)
	}
	worker, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer worker.Rollback(ctx)
	queue(worker, held, 2) // not committed: the row is the worker's
	dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
	defer dcancel()
	if err := postgres.DequeueProfileExports(dctx, pool, []uuid.UUID{held, free}, []int64{1, 1}); err != nil {
		t.Fatalf("dequeue while a worker holds a member: %v", err)
	}
	if err := worker.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	queued := map[uuid.UUID]int64{}
	rows, err := pool.Query(ctx, `SELECT member_id, version FROM profile_exports WHERE member_id = ANY($1)`, []uuid.UUID{held, free})
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var m uuid.UUID
		var v int64
		if err := rows.Scan(&m, &v); err != nil {
			t.Fatal(err)
		}
		queued[m] = v
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(queued) != 1 || queued[held] != 2 {
		t.Fatalf("queued after the dequeue and the worker's commit: %v; want only the held member, at version 2", queued)
	}
}

// TestKeptStateBase: a write that keeps the state's base (KeepState)
// writes only the tail, and the stored base stays as it was, byte for
// byte; a whole write replaces both.
func TestKeptStateBase(t *testing.T) {
	ctx := context.Background()
	at := time.Date(2026, 3, 18, 12, 0, 0, 0, time.UTC) // any instant: nothing here reads it
	pool := pgtest.NewPool(t, nil)
	m := uuid.New()
	if err := postgres.InsertMember(ctx, pool, m, at); err != nil {
		t.Fatal(err)
	}
	base := bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7}, 3000) // stored out of line
	write := func(f postgres.FeaturesWrite) {
		t.Helper()
		f.Member, f.At = m, at
		b := &pgx.Batch{}
		postgres.QueueFeaturesBatch(b, []postgres.FeaturesWrite{f}, nil)
		if err := pool.SendBatch(ctx, b).Close(); err != nil {
			t.Fatal(err)
		}
	}
	stored := func() (state, tail []byte) {
		t.Helper()
		if err := pool.QueryRow(ctx, `SELECT state, state_tail FROM member_features WHERE member_id = $1`, m).Scan(&state, &tail); err != nil {
			t.Fatal(err)
		}
		return state, tail
	}
	write(postgres.FeaturesWrite{State: base, Tail: []byte{1, 9}})
	write(postgres.FeaturesWrite{State: []byte{0xff}, Tail: []byte{1, 8, 8}, KeepState: true, Version: 1})
	if s, tl := stored(); !bytes.Equal(s, base) || !bytes.Equal(tl, []byte{1, 8, 8}) {
		t.Fatalf("after a tail-only write: state of %d bytes (want the %d kept), tail %x", len(s), len(base), tl)
	}
	write(postgres.FeaturesWrite{State: []byte{1, 7}, Version: 2})
	if s, tl := stored(); !bytes.Equal(s, []byte{1, 7}) || tl != nil {
		t.Fatalf("after a whole write: state %x, tail %x; want 0107 and none", s, tl)
	}
	// A base cannot be kept for a row that is not there.
	other := uuid.New()
	if err := postgres.InsertMember(ctx, pool, other, at); err != nil {
		t.Fatal(err)
	}
	b := &pgx.Batch{}
	postgres.QueueFeaturesBatch(b, []postgres.FeaturesWrite{{Member: other, Tail: []byte{1}, KeepState: true, At: at}}, nil)
	if err := pool.SendBatch(ctx, b).Close(); err == nil {
		t.Fatal("a kept base written for a member without features")
	}
}

// TestFeaturesCountSharedDevices: a member's device share is the most
// members seen on one of its devices, as the batch load and one member's
// load both read it, the sightings of the batch counted.
func TestFeaturesCountSharedDevices(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	at := time.Date(2026, 3, 18, 12, 0, 0, 0, time.UTC) // any instant: nothing here reads it
	pool := pgtest.NewPool(t, nil)
	a, b, c, x, y := uuid.New(), uuid.New(), uuid.New(), uuid.New(), uuid.New()
	for _, m := range []uuid.UUID{a, b, c, x, y} {
		if err := postgres.InsertMember(ctx, pool, m, at); err != nil {
			t.Fatal(err)
		}
	}
	// d1 is shared by a, b and c; d2 is a's alone; d3 is b's and x's.
	seen := []postgres.DeviceSighting{{Member: a, Device: "d1"}, {Member: b, Device: "d1"}, {Member: c, Device: "d1"},
		{Member: a, Device: "d2"}, {Member: b, Device: "d3"}, {Member: x, Device: "d3"}}
	want := map[uuid.UUID]int{a: 3, b: 3, c: 3, x: 2, y: 0}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	rows, err := postgres.LoadFeaturesBatch(ctx, tx, []uuid.UUID{a, b, c, x, y}, seen, nil)
	if err != nil {
		t.Fatal(err)
	}
	for m, n := range want {
		if got := rows[m].DeviceShare; got != n {
			t.Errorf("batch load: member %s shares a device with %d members; want %d", m, got, n)
		}
		one, err := postgres.LoadFeatures(ctx, tx, m, nil)
		if err != nil {
			t.Fatal(err)
		}
		if one.DeviceShare != n {
			t.Errorf("one member's load: member %s shares a device with %d members; want %d", m, one.DeviceShare, n)
		}
	}
}
