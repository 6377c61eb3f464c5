package e2e_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// A merge clears the source member's labels, and the tag stage writes the
// cleared profile to member_profiles as a new version of the source's row
// (every label NULL): it names the member it was merged into, and no
// segment counts or exports it. A black-box probe found the merged-away id
// in every segment an all-absent profile matches (`true`,
// `!present(x)`): CountSegment counted one person twice and ExportSegment
// handed marketing an id that is no member.
func TestSegmentsLeaveOutMembersMergedAway(t *testing.T) {
	e, ctx := startWithin(t, 4*time.Minute)
	profiles := mcv1.NewProfileServiceClient(e.conn)
	ids := mcv1.NewIdentityServiceClient(e.conn)

	members := e.buyOnce(t, ctx, "segments-merge", "13655510001", "13655510002", "13655510003")
	a, b, c := members[0], members[1], members[2]
	const marketing = mcv1.ConsentPurpose_CONSENT_PURPOSE_MARKETING
	export := func(expr string) ([]string, error) { return exportSegment(ctx, profiles, expr, marketing) }
	check := func(expr string, want []string) error {
		n, err := profiles.CountSegment(ctx, &mcv1.CountSegmentRequest{Expression: expr, Purpose: marketing})
		if err != nil {
			return err
		}
		got, err := export(expr)
		if err != nil {
			return err
		}
		if int(n.GetMembers()) != len(want) || !slices.Equal(got, want) {
			return fmt.Errorf("%s: count %d, export %v; want %v (A=%s merged into B=%s)", expr, n.GetMembers(), got, want, a, b)
		}
		return nil
	}
	// segment waits up to 30 s for the segment to hold exactly want.
	segment := func(what, expr string, want ...string) {
		t.Helper()
		slices.Sort(want)
		var err error
		for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
			if err = check(expr, want); err == nil {
				return
			}
		}
		t.Errorf("%s: %v", what, err)
	}
	version := func(member string) (v uint64) {
		_ = e.ch.QueryRow(ctx, `SELECT max(version) FROM member_profiles WHERE member_id = ?`, member).Scan(&v)
		return v
	}
	eventually(t, "every shopper's profile in ClickHouse", func() (bool, error) {
		err := check("true", []string{a, b, c})
		return err == nil, err
	})
	before := version(b)

	merge, err := ids.Merge(ctx, &mcv1.MergeRequest{SourceMemberId: a, TargetMemberId: b, Reason: "same person", IdempotencyKey: "segments-merge"})
	if err != nil {
		t.Fatal(err)
	}
	// The merge is applied to the labels once B's row is recomputed from
	// both histories (a new version of B's row); A is no member any more.
	eventually(t, "B recomputed from both histories in ClickHouse", func() (bool, error) {
		return version(b) > before, nil
	})
	segment("A is gone from every segment once merged into B", "true", b, c)
	segment("A is not an all-absent member either", "!present(lifecycle_stage)")
	var into string
	if err := e.ch.QueryRow(ctx, `SELECT merged_into FROM member_profiles FINAL WHERE member_id = ?`, a).Scan(&into); err != nil || into != b {
		t.Errorf("A's profile row: merged_into %q (%v), want B %s", into, err, b)
	}

	// Unmerged, A is a member of its own again.
	if _, err := ids.Unmerge(ctx, &mcv1.UnmergeRequest{MergeId: merge.GetMergeId(), Reason: "two people", IdempotencyKey: "segments-unmerge"}); err != nil {
		t.Fatal(err)
	}
	segment("A is back in the segments once unmerged", "true", a, b, c)
}

// member_profiles is made by the tag stage's first catalogue: on a
// platform migrated and serving whose tag stage has not run yet (a fresh
// install, `pipeline --stages` without it) no member has a profile, and a
// segment is empty. CountSegment answered Internal ("Table
// ....member_profiles doesn't exist", found by a probe).
func TestSegmentsBeforeTheTagStageRan(t *testing.T) {
	e := startWith(t, []string{"ingest"})
	ctx := within(t, time.Minute)
	profiles := mcv1.NewProfileServiceClient(e.conn)
	const marketing = mcv1.ConsentPurpose_CONSENT_PURPOSE_MARKETING
	n, err := profiles.CountSegment(ctx, &mcv1.CountSegmentRequest{Expression: "true", Purpose: marketing})
	if err != nil || n.GetMembers() != 0 {
		t.Errorf("CountSegment before any profile exists: %v, %v; want 0 members", n, err)
	}
	if ids, err := exportSegment(ctx, profiles, "true", marketing); err != nil || len(ids) != 0 {
		t.Errorf("ExportSegment before any profile exists: %v, %v; want an empty export", ids, err)
	}
}
