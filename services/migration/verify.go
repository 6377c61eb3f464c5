package migration

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sync/errgroup"

	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/identity"
)

// Mismatch is a difference between the source and the platform.
type Mismatch struct {
	File     string
	Line     int
	LegacyID string
	What     string
}

func (m Mismatch) String() string {
	return fmt.Sprintf("%s:%d: %s: %s", m.File, m.Line, m.LegacyID, m.What)
}

// VerifyReport is a reconciliation of a source against the platform.
type VerifyReport struct {
	Members  int // member records of the source (unreadable ones included)
	Agreeing int // imported and equal in every field verify compares
	// Per field compared, how many members agree.
	Fields map[string]int
	// Totals: points the source's open lots hold and what the platform
	// holds for the imported members.
	SourcePoints, PlatformPoints int64
	Mismatches                   []Mismatch
	// Erased members were imported and erased since at their request
	// (EraseMember); Merged ones merged into another member since; both
	// count as agreeing. Absorbing ones had others merged into them: their
	// loyalty is not compared (it holds the others').
	Erased, Merged, Absorbing int
	Took                      time.Duration
}

// errErasedSince marks a member erased since its import; errMergedSince
// one merged into another since.
var (
	errErasedSince = errors.New("erased since the import")
	errMergedSince = errors.New("merged into another member since the import")
)

// errAbsorbed marks a member others were merged into since the import,
// with the differences found before loyalty (which is not compared).
type errAbsorbed struct{ diffs []diff }

func (errAbsorbed) Error() string { return "others were merged into the member since the import" }

// OK reports 100% agreement.
func (r VerifyReport) OK() bool {
	return r.Members > 0 && r.Agreeing == r.Members && len(r.Mismatches) == 0
}

// Verify reconciles every member of src with what the platform holds:
// that it was imported; its identifiers (each finds the member); its
// attributes (PII by keyed hash); its consents; its balance, open lots
// (remaining and expiry), tier and since, and coupons (template and state).
// It changes nothing.
func (im *Importer) Verify(ctx context.Context, src *Source, progress func(read int)) (VerifyReport, error) {
	start := time.Now()
	now := time.Now
	if im.Now != nil {
		now = im.Now
	}
	rep := VerifyReport{Fields: map[string]int{}}
	// Members are compared concurrently (each only reads); the report is
	// put in file order at the end.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	var mu sync.Mutex
	done := 0
	record := func(apply func()) {
		mu.Lock()
		defer mu.Unlock()
		apply()
	}
	err := src.Each(func(m *Member, rerr *RowError) error {
		if err := gctx.Err(); err != nil {
			return err
		}
		if m == nil {
			record(func() {
				rep.Mismatches = append(rep.Mismatches, Mismatch{File: rerr.File, Line: rerr.Line, LegacyID: rerr.LegacyID, What: "unreadable: " + rerr.Reason})
				if strings.HasPrefix(rerr.File, "members.") {
					rep.Members++
				}
			})
			return nil
		}
		g.Go(func() error {
			diffs, points, err := im.compare(gctx, m, now())
			if errors.Is(err, errErasedSince) || errors.Is(err, errMergedSince) {
				// Imported, then erased at the member's request or merged
				// into another: nothing of it is left to compare here.
				record(func() {
					rep.Members++
					rep.Agreeing++
					if errors.Is(err, errErasedSince) {
						rep.Erased++
					} else {
						rep.Merged++
					}
					done++
					if progress != nil {
						progress(done)
					}
				})
				return nil
			}
			var abs errAbsorbed
			if errors.As(err, &abs) {
				diffs, err = abs.diffs, nil
				record(func() { rep.Absorbing++ })
			}
			if err != nil {
				return fmt.Errorf("%s:%d: %s: %w", m.File, m.Line, m.LegacyID, err)
			}
			record(func() {
				rep.Members++
				rep.SourcePoints += openPoints(m.Loyalty, now())
				rep.PlatformPoints += points
				failed := map[string]bool{}
				for _, d := range diffs {
					failed[d.field] = true
					rep.Mismatches = append(rep.Mismatches, Mismatch{File: m.File, Line: m.Line, LegacyID: m.LegacyID, What: d.what})
				}
				for _, f := range verifiedFields {
					if !failed[f] && !failed["imported"] {
						rep.Fields[f]++
					}
				}
				if len(diffs) == 0 {
					rep.Agreeing++
				}
				done++
				if progress != nil {
					progress(done)
				}
			})
			return nil
		})
		return nil
	})
	if werr := g.Wait(); err == nil || errors.Is(err, context.Canceled) && werr != nil {
		err = werr
	}
	sort.SliceStable(rep.Mismatches, func(i, j int) bool {
		a, b := rep.Mismatches[i], rep.Mismatches[j]
		return before(a.File, a.Line, b.File, b.Line)
	})
	rep.Took = time.Since(start)
	return rep, err
}

// verifiedFields are what Verify compares, in report order.
var verifiedFields = []string{"imported", "identifiers", "attributes", "consents", "balance", "lots", "tier", "coupons"}

type diff struct{ field, what string }

// compare lists how the platform differs from m, and the member's balance.
func (im *Importer) compare(ctx context.Context, m *Member, now time.Time) ([]diff, int64, error) {
	member, erased, err := im.memberOf(ctx, m.LegacyID)
	if err != nil {
		return nil, 0, err
	}
	if erased {
		return nil, 0, errErasedSince
	}
	if member == uuid.Nil {
		return []diff{{"imported", "not imported"}}, 0, nil
	}
	// A member merged into another since (an operator resolving a
	// conflict) lives on in that member: nothing of it is compared.
	canonical, err := postgres.CanonicalMember(ctx, im.Pool, member)
	if err != nil {
		return nil, 0, err
	}
	if canonical != member {
		return nil, 0, errMergedSince
	}
	var out []diff
	missing, err := im.Identity.Held(ctx, im.Pool, member, m.Identifiers)
	if errors.Is(err, identity.ErrInvalidIdentifier) {
		return []diff{{"identifiers", err.Error()}}, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	for _, id := range missing {
		out = append(out, diff{"identifiers", id + " does not find the member"})
	}
	bad, err := im.Profile.AttributesMatch(ctx, im.Pool, member, m.Attributes)
	if err != nil {
		return nil, 0, err
	}
	for _, a := range bad {
		out = append(out, diff{"attributes", a + " differs"})
	}
	for _, c := range m.Consents {
		got, err := postgres.ConsentOf(ctx, im.Pool, member, int16(c.Purpose))
		if err != nil {
			return nil, 0, err
		}
		if got == nil || *got != c.Granted {
			out = append(out, diff{"consents", fmt.Sprintf("consent %s: source %v, platform %v", c.Purpose, c.Granted, fmtBool(got))})
		}
	}
	// A member others were merged into holds their loyalty too: its
	// loyalty is not the source's to compare.
	absorbed, err := postgres.AbsorbedOthers(ctx, im.Pool, member)
	if err != nil {
		return nil, 0, err
	}
	have, balance, err := im.Benefits.LegacyView(ctx, im.Pool, member)
	if err != nil {
		return nil, 0, err
	}
	if absorbed {
		return out, openPoints(m.Loyalty, now), errAbsorbed{out}
	}
	want := openPoints(m.Loyalty, now)
	if balance != want {
		out = append(out, diff{"balance", fmt.Sprintf("balance: source %d, platform %d", want, balance)})
	}
	if d := compareLots(m.Loyalty.Lots, have.Lots, now); d != "" {
		out = append(out, diff{"lots", d})
	}
	if m.Loyalty.Tier != "" && (have.Tier != m.Loyalty.Tier || (!m.Loyalty.TierSince.IsZero() && !have.TierSince.Equal(m.Loyalty.TierSince))) {
		out = append(out, diff{"tier", fmt.Sprintf("tier: source %s since %s, platform %s since %s", m.Loyalty.Tier, day(m.Loyalty.TierSince), have.Tier, day(have.TierSince))})
	}
	if d := compareCoupons(m.Loyalty.Coupons, have.Coupons, now); d != "" {
		out = append(out, diff{"coupons", d})
	}
	return out, balance, nil
}

func fmtBool(b *bool) string {
	if b == nil {
		return "undecided"
	}
	return fmt.Sprint(*b)
}

func day(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// compareLots compares the source's open lots with the platform's by
// remaining points and expiry.
func compareLots(src, have []benefits.LegacyLot, now time.Time) string {
	key := func(l benefits.LegacyLot) string {
		return fmt.Sprintf("%d until %s", l.Remaining, day(l.ExpiresAt))
	}
	var a, b []string
	for _, l := range src {
		if l.Remaining > 0 && (l.ExpiresAt.IsZero() || l.ExpiresAt.After(now)) {
			a = append(a, key(l))
		}
	}
	for _, l := range have {
		if l.Remaining > 0 {
			b = append(b, key(l))
		}
	}
	sort.Strings(a)
	sort.Strings(b)
	if fmt.Sprint(a) != fmt.Sprint(b) {
		return fmt.Sprintf("open lots: source %v, platform %v", a, b)
	}
	return ""
}

// compareCoupons compares coupons by code: template and state (an issued
// coupon no longer valid at now is expired, as the platform shows it).
func compareCoupons(src, have []benefits.LegacyCoupon, now time.Time) string {
	got := map[string]benefits.LegacyCoupon{}
	for _, c := range have {
		got[c.Code] = c
	}
	for _, c := range src {
		h, ok := got[c.Code]
		if c.State == "issued" && !c.ValidUntil.IsZero() && !now.Before(c.ValidUntil) {
			c.State = "expired"
		}
		switch {
		case !ok:
			return fmt.Sprintf("coupon %s missing", c.Code)
		case h.Template != c.Template || h.State != c.State:
			return fmt.Sprintf("coupon %s: source %s/%s, platform %s/%s", c.Code, c.Template, c.State, h.Template, h.State)
		}
	}
	return ""
}
