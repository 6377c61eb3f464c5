package e2e_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// Segments are counted and exported for a declared purpose, and leave out
// the members without consent for it; a consent change applies within
// seconds; the analyst views keep the members who consent to analytics.
func TestSegmentsLeaveOutMembersWithoutConsent(t *testing.T) {
	e, ctx := startWithin(t, 2*time.Minute)
	profiles := mcv1.NewProfileServiceClient(e.conn)

	// Three shoppers buy once: each is in bought_365d.
	members := e.buyOnce(t, ctx, "consent", "13655500001", "13655500002", "13655500003")
	a, b, c := members[0], members[1], members[2]
	const expr = "bought_365d"
	export := func(p mcv1.ConsentPurpose) ([]string, error) { return exportSegment(ctx, profiles, expr, p) }
	// want waits until the segment for p holds exactly ids, counted and
	// exported alike.
	want := func(what string, p mcv1.ConsentPurpose, ids ...string) {
		t.Helper()
		slices.Sort(ids)
		eventually(t, what, func() (bool, error) {
			n, err := profiles.CountSegment(ctx, &mcv1.CountSegmentRequest{Expression: expr, Purpose: p})
			if err != nil {
				return false, err
			}
			got, err := export(p)
			if err != nil {
				return false, err
			}
			if int(n.GetMembers()) != len(ids) || !slices.Equal(got, ids) {
				return false, fmt.Errorf("count %d, export %v; want %v", n.GetMembers(), got, ids)
			}
			return true, nil
		})
	}
	const (
		marketing  = mcv1.ConsentPurpose_CONSENT_PURPOSE_MARKETING
		profiling  = mcv1.ConsentPurpose_CONSENT_PURPOSE_PROFILING
		thirdParty = mcv1.ConsentPurpose_CONSENT_PURPOSE_THIRD_PARTY_SHARING
		analytics  = mcv1.ConsentPurpose_CONSENT_PURPOSE_ANALYTICS
	)
	// Nobody decided: marketing, profiling and analytics by default, no
	// third-party sharing without a separate consent.
	want("every buyer, for marketing", marketing, a, b, c)
	want("nobody, for third parties", thirdParty)

	// A segment without a purpose is refused, and counts nothing.
	if _, err := profiles.CountSegment(ctx, &mcv1.CountSegmentRequest{Expression: expr}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("CountSegment without a purpose: %v; want InvalidArgument", err)
	}
	if _, err := export(mcv1.ConsentPurpose_CONSENT_PURPOSE_UNSPECIFIED); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("ExportSegment without a purpose: %v; want InvalidArgument", err)
	}

	set := func(member string, p mcv1.ConsentPurpose, granted bool, key string) {
		t.Helper()
		if _, err := profiles.SetConsent(ctx, &mcv1.SetConsentRequest{MemberId: member, Purpose: p, Granted: granted, IdempotencyKey: key}); err != nil {
			t.Fatalf("SetConsent %s %s %v: %v", member, p, granted, err)
		}
	}
	set(a, marketing, false, "consent-a-1")
	set(b, thirdParty, true, "consent-b-1")
	set(c, analytics, false, "consent-c-1")
	want("A opted out of marketing", marketing, b, c)
	want("B consented to third parties", thirdParty, b)
	want("C opted out of analytics", analytics, a, b)
	want("nobody withdrew profiling", profiling, a, b, c)

	// The analyst views: C, who opted out of analytics, is not there.
	var inView uint64
	if err := e.ch.QueryRow(ctx, `SELECT count() FROM current_profiles WHERE member_id IN (?, ?, ?)`, a, b, c).Scan(&inView); err != nil {
		t.Fatal(err)
	}
	if inView != 2 {
		t.Fatalf("current_profiles holds %d of the three buyers; want 2 (not the one who opted out of analytics)", inView)
	}

	// Consent given back applies as fast.
	set(a, marketing, true, "consent-a-2")
	want("A opted in again", marketing, a, b, c)
}
