package tags_test

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/tags"
)

// TestStateBaseKeptWhileRecordsAreAdded: a member with a history met again
// event after event keeps its stored state's base as it was (the stage
// writes only the tail, tags.EncodeStateParts) until the tail has grown,
// then writes both again; the two parts always read as every event folded.
func TestStateBaseKeptWhileRecordsAreAdded(t *testing.T) {
	c := ctxT(t)
	for _, cache := range []bool{true, false} {
		f := newFixture(t)
		if !cache {
			f.svc.SetStateCache(0) // every state decoded from its parts
		}
		m := f.member(t)
		at := t0
		var history []*mcv1.MemberEvent
		for i := range 40 {
			history = append(history, purchase(fmt.Sprintf("h%d", i), m, at.Add(-time.Duration(40-i)*24*time.Hour), 1000+int64(i), "coffee", "bakery"))
		}
		*f.clock = at
		if _, err := f.svc.ApplyBatch(c, history); err != nil {
			t.Fatal(err)
		}
		var base []byte
		kept, rewritten := 0, 0
		for i := range 40 {
			at = at.Add(3 * time.Hour)
			*f.clock = at
			if rejected, err := f.svc.ApplyBatch(c, []*mcv1.MemberEvent{purchase(fmt.Sprintf("e%d", i), m, at, 2000, "dairy")}); err != nil || len(rejected) > 0 {
				t.Fatalf("event %d: %v %v", i, rejected, err)
			}
			var state, tail []byte
			if err := f.pool.QueryRow(c, `SELECT state, state_tail FROM member_features WHERE member_id = $1`, m).Scan(&state, &tail); err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(state, base) {
				kept++
			} else {
				rewritten++
			}
			base = state
			st, err := tags.DecodeStateParts(state, tail)
			if err != nil {
				t.Fatalf("event %d: %v", i, err)
			}
			if len(st.Purchases) != 41+i {
				t.Fatalf("event %d: the stored parts hold %d purchases, want %d", i, len(st.Purchases), 41+i)
			}
		}
		// A 40-purchase base takes a tail of a few records before it is
		// written again.
		if kept < 25 || rewritten < 2 {
			t.Fatalf("cache %v: the base was kept by %d writes and written again by %d", cache, kept, rewritten)
		}
	}
}
