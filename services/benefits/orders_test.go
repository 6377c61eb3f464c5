package benefits_test

import (
	"errors"
	"strings"
	"sync"
	"testing"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/benefits"
)

// TestAnOrderIdOfAnotherMemberIsRefused: order ids are unique across
// members. Commit and Quote of a basket whose order id another member
// committed are refused with ErrOrderTaken (AlreadyExists over gRPC)
// naming the order, and change nothing; before, Commit failed on the
// orders' primary key (Internal), every time it was retried. Two members
// committing one new order id at once: one gets it, the other is refused.
func TestAnOrderIdOfAnotherMemberIsRefused(t *testing.T) {
	f, c := begin(t)
	owner, other := f.member(t), f.member(t)
	f.commit(t, c, &mcv1.CommitRequest{MemberId: owner, Basket: basket("o-1", 20_000), IdempotencyKey: "owner"})
	before := f.rows(t)
	taken := func(what string, err error, order string) {
		t.Helper()
		if !errors.Is(err, benefits.ErrOrderTaken) || !strings.Contains(err.Error(), `"`+order+`"`) {
			t.Errorf("%s: %v; want ErrOrderTaken naming %q", what, err, order)
		}
	}
	_, err := f.srv.Commit(c, &mcv1.CommitRequest{MemberId: other, Basket: basket("o-1", 5_000), IdempotencyKey: "other"})
	taken("Commit", err, "o-1")
	_, err = f.srv.Quote(c, &mcv1.QuoteRequest{MemberId: other, Basket: basket("o-1", 5_000)})
	taken("Quote", err, "o-1")
	if after := f.rows(t); after != before {
		t.Fatalf("refused requests changed the database: %v → %v", before, after)
	}
	// The owner's retry under another key is still its order's answer.
	if _, err := f.srv.Commit(c, &mcv1.CommitRequest{MemberId: owner, Basket: basket("o-1", 20_000), IdempotencyKey: "owner-again"}); err != nil {
		t.Fatalf("the owner's order again: %v", err)
	}

	// Members committing one new order id concurrently (grouped or not).
	const n = 4
	ms := make([]string, n)
	for i := range ms {
		ms[i] = f.member(t)
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, errs[i] = f.srv.Commit(c, &mcv1.CommitRequest{MemberId: m, Basket: basket("o-race", 8_000), IdempotencyKey: "race-" + m})
		}()
	}
	close(start)
	wg.Wait()
	won := 0
	for i, err := range errs {
		if err == nil {
			won++
			continue
		}
		taken("a concurrent Commit of member "+ms[i], err, "o-race")
	}
	var orders int
	if err := f.pool.QueryRow(c, `SELECT count(*) FROM orders WHERE order_id = 'o-race'`).Scan(&orders); err != nil {
		t.Fatal(err)
	}
	if won != 1 || orders != 1 {
		t.Errorf("%d of %d concurrent Commits of one order id succeeded and %d orders recorded; want 1 and 1", won, n, orders)
	}
}
