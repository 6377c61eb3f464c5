package changes_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/clocktest"
	"github.com/membercenter/membercenter/pipeline/relay"
	"github.com/membercenter/membercenter/services/changes"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func member(t *testing.T, pool *pgxpool.Pool) uuid.UUID {
	t.Helper()
	id := uuid.Must(uuid.NewV7())
	if err := postgres.InsertMember(context.Background(), pool, id, clocktest.Start()); err != nil {
		t.Fatal(err)
	}
	return id
}

func points(delta int64) *mcv1.MemberChange {
	return &mcv1.MemberChange{Change: &mcv1.MemberChange_PointsChanged{PointsChanged: &mcv1.PointsChanged{Delta: delta}}}
}

// TestAppendNumbersEachMembersChanges: a subscriber resumes by sequence, so
// each member's changes are numbered 1, 2, 3… in commit order, even when
// written concurrently, and carry the trace of the transaction that wrote
// them.
func TestAppendNumbersEachMembersChanges(t *testing.T) {
	pool := pgtest.NewPool(t, nil)
	c := ctx(t)
	clock := clocktest.Frozen(clocktest.Start())
	tp := sdktrace.NewTracerProvider()
	w := changes.Writer{Propagator: propagation.TraceContext{}, Now: clock.Now}
	a, b := member(t, pool), member(t, pool)

	sc, span := tp.Tracer("test").Start(c, "commit")
	var first *mcv1.MemberChange
	if err := pgx.BeginFunc(sc, pool, func(tx pgx.Tx) error {
		var err error
		first, err = w.Append(sc, tx, a, points(10))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	span.End()
	if first.GetSequence() != 1 || first.GetMemberId() != a.String() || !first.GetOccurredAt().AsTime().Equal(clock.Now()) || first.GetChangeId() == "" {
		t.Errorf("first change: %v", first)
	}
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := a
			if i%2 == 1 {
				m = b
			}
			if err := pgx.BeginFunc(c, pool, func(tx pgx.Tx) error {
				_, err := w.Append(c, tx, m, points(int64(i)))
				return err
			}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for _, tc := range []struct {
		m    uuid.UUID
		want int
	}{{a, 11}, {b, 10}} {
		rows, err := pool.Query(c, `SELECT sequence, change_id, payload, traceparent FROM outbox WHERE member_id = $1 ORDER BY outbox_id`, tc.m)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[int64]bool{}
		ids := map[uuid.UUID]bool{}
		n := 0
		for rows.Next() {
			var seq int64
			var id uuid.UUID
			var payload []byte
			var tp string
			if err := rows.Scan(&seq, &id, &payload, &tp); err != nil {
				t.Fatal(err)
			}
			n++
			ch := &mcv1.MemberChange{}
			if err := proto.Unmarshal(payload, ch); err != nil || ch.GetSequence() != uint64(seq) || ch.GetChangeId() != id.String() {
				t.Errorf("outbox row %d of %s holds %v (%v)", seq, tc.m, ch, err)
			}
			if seq == 1 && tc.m == a && tp != "00-"+span.SpanContext().TraceID().String()+"-"+span.SpanContext().SpanID().String()+"-01" {
				t.Errorf("first change's traceparent %q is not the writer's span", tp)
			}
			seen[seq], ids[id] = true, true
		}
		rows.Close()
		if n != tc.want || len(ids) != n {
			t.Errorf("member %s: %d changes with %d ids, want %d", tc.m, n, len(ids), tc.want)
		}
		for s := int64(1); s <= int64(tc.want); s++ {
			if !seen[s] {
				t.Errorf("member %s: sequence %d missing", tc.m, s)
			}
		}
	}
}

// TestIdempotentAnswersRetriesWithTheFirstAnswer covers the key's life: the
// first call runs and stores its answer; a retry (or a duplicate sent at the
// same time) gets that answer without running again; the key with another
// request is refused; a call that failed stored nothing, so its retry runs.
func TestIdempotentAnswersRetriesWithTheFirstAnswer(t *testing.T) {
	pool := pgtest.NewPool(t, nil)
	c := ctx(t)
	var runs atomic.Int64
	call := func(req *mcv1.RedeemRequest, fail error) (*mcv1.RedeemResponse, bool, error) {
		out := &mcv1.RedeemResponse{}
		var replayed bool
		err := pgx.BeginFunc(c, pool, func(tx pgx.Tx) error {
			var err error
			replayed, err = changes.Idempotent(c, tx, "test.Redeem", req.GetIdempotencyKey(), req, out, func() error {
				n := runs.Add(1)
				if fail != nil {
					return fail
				}
				// Long enough for duplicates to arrive while it runs.
				if _, err := tx.Exec(c, `SELECT pg_sleep(0.2)`); err != nil {
					return err
				}
				out.TransactionId, out.Balance = "t", n
				return nil
			})
			return err
		})
		return out, replayed, err
	}
	req := &mcv1.RedeemRequest{MemberId: uuid.NewString(), Points: 100, IdempotencyKey: "till-1"}
	first, replayed, err := call(req, nil)
	if err != nil || replayed || first.GetBalance() != 1 {
		t.Fatalf("first call: %v replayed=%v %v", first, replayed, err)
	}
	again, replayed, err := call(req, nil)
	if err != nil || !replayed || !proto.Equal(again, first) || runs.Load() != 1 {
		t.Fatalf("retry: %v replayed=%v %v after %d runs", again, replayed, err, runs.Load())
	}
	other := proto.Clone(req).(*mcv1.RedeemRequest)
	other.Points = 200
	if _, _, err := call(other, nil); !errors.Is(err, changes.ErrKeyReused) {
		t.Fatalf("the key with another request: %v, want ErrKeyReused", err)
	}

	failing := &mcv1.RedeemRequest{MemberId: uuid.NewString(), Points: 1, IdempotencyKey: "till-2"}
	if _, _, err := call(failing, errors.New("refused")); err == nil {
		t.Fatal("a failing call succeeded")
	}
	if _, replayed, err := call(failing, nil); err != nil || replayed {
		t.Fatalf("retry of a failed call: replayed=%v %v; want it to run", replayed, err)
	}

	// Duplicates at once: one runs, every copy gets its answer.
	runs.Store(0)
	dup := &mcv1.RedeemRequest{MemberId: uuid.NewString(), Points: 5, IdempotencyKey: "till-3"}
	answers := make([]*mcv1.RedeemResponse, 5)
	errs := make([]error, 5)
	var wg sync.WaitGroup
	for i := range answers {
		wg.Add(1)
		go func() { defer wg.Done(); answers[i], _, errs[i] = call(dup, nil) }()
	}
	wg.Wait()
	for i := range answers {
		if errs[i] != nil || !proto.Equal(answers[i], answers[0]) {
			t.Errorf("duplicate %d: %v %v; want %v", i, answers[i], errs[i], answers[0])
		}
	}
	if runs.Load() != 1 {
		t.Errorf("%d duplicates ran, want 1", runs.Load())
	}
}

// TestOutboxBatchesInOrderOnceAndFenced: the relay claims unpublished
// changes in outbox order as a batch in flight; nothing more is claimed
// until that batch is marked published; a new term (a new leader) finds the
// batch in flight, and the old term can neither mark nor claim anything any
// more.
func TestOutboxBatchesInOrderOnceAndFenced(t *testing.T) {
	pool := pgtest.NewPool(t, nil)
	c := ctx(t)
	w := changes.Writer{}
	m := member(t, pool)
	for i := 1; i <= 5; i++ {
		if err := pgx.BeginFunc(c, pool, func(tx pgx.Tx) error { _, err := w.Append(c, tx, m, points(int64(i))); return err }); err != nil {
			t.Fatal(err)
		}
	}
	seqs := func(b *relay.Batch) []int64 {
		var out []int64
		if b != nil {
			for _, ch := range b.Changes {
				out = append(out, ch.Sequence)
			}
		}
		return out
	}
	o := changes.Outbox{Pool: pool}
	old, err := o.Lead(c, "mc-relay", "a")
	if err != nil {
		t.Fatal(err)
	}
	first, err := old.Claim(c, 3)
	if err != nil || !slices.Equal(seqs(first), []int64{1, 2, 3}) {
		t.Fatalf("first claim: %v, %v; want sequences 1..3", seqs(first), err)
	}
	if b, err := old.Claim(c, 3); err == nil {
		t.Errorf("claimed %v while a batch is in flight", seqs(b))
	}
	old.Close() // the leader's connection is gone; its lock with it

	lead, err := o.Lead(c, "mc-relay", "b")
	if err != nil {
		t.Fatal(err)
	}
	defer lead.Close()
	if lead.Term() <= old.Term() {
		t.Errorf("new term %d after %d", lead.Term(), old.Term())
	}
	inFlight, err := lead.InFlight(c)
	if err != nil || inFlight == nil || inFlight.ID != first.ID || !slices.Equal(seqs(inFlight), []int64{1, 2, 3}) {
		t.Fatalf("in flight for the new leader: %v %v, %v; want batch %s with 1..3", inFlight, seqs(inFlight), err, first.ID)
	}
	if err := old.Published(c, first); !errors.Is(err, postgres.ErrRelayFenced) {
		t.Errorf("the old term marked its batch: %v", err)
	}
	if _, err := old.Claim(c, 3); !errors.Is(err, postgres.ErrRelayFenced) {
		t.Errorf("the old term claimed: %v", err)
	}
	if err := lead.Published(c, inFlight); err != nil {
		t.Fatal(err)
	}
	next, err := lead.Claim(c, 3)
	if err != nil || !slices.Equal(seqs(next), []int64{4, 5}) {
		t.Fatalf("next claim: %v, %v; want 4, 5", seqs(next), err)
	}
	if err := lead.Published(c, next); err != nil {
		t.Fatal(err)
	}
	if b, err := lead.Claim(c, 3); err != nil || b != nil {
		t.Errorf("claim with nothing left: %v, %v", seqs(b), err)
	}
	var unpublished int
	if err := pool.QueryRow(c, `SELECT count(*) FROM outbox_pending`).Scan(&unpublished); err != nil || unpublished != 0 {
		t.Errorf("%d unpublished (%v)", unpublished, err)
	}
}
