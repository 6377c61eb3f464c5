package migration

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sync/errgroup"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/attributes"
	"github.com/membercenter/membercenter/services/benefits"
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
	now := im.now
	rep := VerifyReport{Fields: map[string]int{}}
	// Chunks of members are compared concurrently (each only reads, a
	// chunk's state in one statement per kind of row); the report is put
	// in file order at the end.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(verifyWorkers)
	var mu sync.Mutex
	done := 0
	record := func(apply func()) {
		mu.Lock()
		defer mu.Unlock()
		apply()
	}
	chunks := chunker{size: verifyChunk, run: func(ms []*Member) {
		g.Go(func() error {
			at := now()
			outs, err := im.compareChunk(gctx, ms, at)
			if err != nil {
				return err
			}
			record(func() {
				for k, m := range ms {
					rep.add(m, outs[k], at)
					done++
				}
				if progress != nil {
					progress(done)
				}
			})
			return nil
		})
	}}
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
		chunks.add(m)
		return nil
	})
	err = chunks.finish(g, err)
	sort.SliceStable(rep.Mismatches, func(i, j int) bool {
		a, b := rep.Mismatches[i], rep.Mismatches[j]
		return before(a.File, a.Line, b.File, b.Line)
	})
	rep.Took = time.Since(start)
	return rep, err
}

// verifyChunk is how many members one comparison reads at once, and
// verifyWorkers how many comparisons run at once.
const (
	verifyChunk   = 500
	verifyWorkers = 3
)

// compared is how the platform differs from a member of the source.
type compared struct {
	diffs  []diff
	points int64 // the platform's balance
	// erased or merged since the import (nothing left to compare, agreeing),
	// or absorbing others (loyalty not compared)
	erased, merged, absorbing bool
}

// add counts a member's comparison in the report.
func (r *VerifyReport) add(m *Member, c compared, now time.Time) {
	if c.erased || c.merged {
		// Imported, then erased at the member's request or merged into
		// another: nothing of it is left to compare here.
		r.Members++
		r.Agreeing++
		if c.erased {
			r.Erased++
		} else {
			r.Merged++
		}
		return
	}
	if c.absorbing {
		r.Absorbing++
	}
	r.Members++
	r.SourcePoints += openPoints(m.Loyalty, now)
	r.PlatformPoints += c.points
	failed := map[string]bool{}
	for _, d := range c.diffs {
		failed[d.field] = true
		r.Mismatches = append(r.Mismatches, Mismatch{File: m.File, Line: m.Line, LegacyID: m.LegacyID, What: d.what})
	}
	for _, f := range verifiedFields {
		if !failed[f] && !failed["imported"] {
			r.Fields[f]++
		}
	}
	if len(c.diffs) == 0 {
		r.Agreeing++
	}
}

// verifiedFields are what Verify compares, in report order.
var verifiedFields = []string{"imported", "identifiers", "attributes", "consents", "balance", "lots", "tier", "coupons"}

type diff struct{ field, what string }

// compareChunk compares members of the source with the platform, reading
// each kind of state for all of them at once: their legacy records, member
// rows, identifiers, consents and loyalty.
func (im *Importer) compareChunk(ctx context.Context, ms []*Member, now time.Time) ([]compared, error) {
	out := make([]compared, len(ms))
	keys := make([]string, 0, 2*len(ms))
	for _, m := range ms {
		keys = append(keys, m.LegacyID, attributes.ErasedLegacyID(im.Identity.PII(), im.Source, m.LegacyID))
	}
	legacy, err := postgres.FindLegacyMembers(ctx, im.Pool, im.Source, keys)
	if err != nil {
		return nil, err
	}
	member := make([]uuid.UUID, len(ms))
	var ids []uuid.UUID
	for k, m := range ms {
		l, found := legacy[m.LegacyID]
		if !found {
			l, found = legacy[attributes.ErasedLegacyID(im.Identity.PII(), im.Source, m.LegacyID)]
		}
		switch {
		case found && l.Erased:
			out[k].erased = true
		case !found:
			out[k].diffs = []diff{{"imported", "not imported"}}
		default:
			member[k] = l.MemberID
			ids = append(ids, l.MemberID)
		}
	}
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := postgres.MemberViews(ctx, im.Pool, ids)
	if err != nil {
		return nil, err
	}
	// A member merged into another since (an operator resolving a
	// conflict) lives on in that member: nothing of it is compared.
	var live []uuid.UUID
	var liveAt []int
	for k, id := range member {
		if id == uuid.Nil {
			continue
		}
		row, ok := rows[id]
		switch {
		case !ok || row.Status == "erased" && row.MergedInto == nil:
			return nil, fmt.Errorf("%s:%d: %s: member %s: %w", ms[k].File, ms[k].Line, ms[k].LegacyID, id, postgres.ErrNotFound)
		case row.MergedInto != nil:
			// Where it lives on must exist (CanonicalMember says).
			if _, err := postgres.CanonicalMember(ctx, im.Pool, id); err != nil {
				return nil, fmt.Errorf("%s:%d: %s: %w", ms[k].File, ms[k].Line, ms[k].LegacyID, err)
			}
			out[k].merged = true
			continue
		}
		live, liveAt = append(live, id), append(liveAt, k)
	}
	idents := make([][]*mcv1.Identifier, len(live))
	for j, k := range liveAt {
		idents[j] = ms[k].Identifiers
	}
	missing, bad, err := im.Identity.HeldBy(ctx, im.Pool, live, idents)
	if err != nil {
		return nil, err
	}
	consents, err := postgres.ConsentsOfMembers(ctx, im.Pool, live)
	if err != nil {
		return nil, err
	}
	loyalty, err := im.Benefits.LegacyViews(ctx, im.Pool, live)
	if err != nil {
		return nil, err
	}
	for j, k := range liveAt {
		m, c, id := ms[k], &out[k], live[j]
		if bad[j] != nil {
			c.diffs = []diff{{"identifiers", bad[j].Error()}}
			continue
		}
		for _, s := range missing[j] {
			c.diffs = append(c.diffs, diff{"identifiers", s + " does not find the member"})
		}
		for _, a := range im.Profile.AttributesDiffer(rows[id].Attributes, m.Attributes) {
			c.diffs = append(c.diffs, diff{"attributes", a + " differs"})
		}
		for _, want := range m.Consents {
			var got *bool
			if g, ok := consents[id][int16(want.Purpose)]; ok {
				got = &g
			}
			if got == nil || *got != want.Granted {
				c.diffs = append(c.diffs, diff{"consents", fmt.Sprintf("consent %s: source %v, platform %v", want.Purpose, want.Granted, fmtBool(got))})
			}
		}
		// A member others were merged into holds their loyalty too: its
		// loyalty is not the source's to compare.
		l := loyalty[id]
		if l.Err != nil {
			return nil, fmt.Errorf("%s:%d: %s: %w", m.File, m.Line, m.LegacyID, l.Err)
		}
		if rows[id].Absorbing {
			c.absorbing, c.points = true, openPoints(m.Loyalty, now)
			continue
		}
		c.points = l.Balance
		c.diffs = append(c.diffs, compareLoyalty(m.Loyalty, l.Legacy, l.Balance, now)...)
	}
	return out, nil
}

// compareLoyalty lists how the platform's loyalty (have, balance) differs
// from the source's.
func compareLoyalty(src, have benefits.Legacy, balance int64, now time.Time) []diff {
	var out []diff
	want := openPoints(src, now)
	if balance != want {
		out = append(out, diff{"balance", fmt.Sprintf("balance: source %d, platform %d", want, balance)})
	}
	if d := compareLots(src.Lots, have.Lots, now); d != "" {
		out = append(out, diff{"lots", d})
	}
	if src.Tier != "" && (have.Tier != src.Tier || (!src.TierSince.IsZero() && !have.TierSince.Equal(src.TierSince))) {
		out = append(out, diff{"tier", fmt.Sprintf("tier: source %s since %s, platform %s since %s", src.Tier, day(src.TierSince), have.Tier, day(have.TierSince))})
	}
	if d := compareCoupons(src.Coupons, have.Coupons, now); d != "" {
		out = append(out, diff{"coupons", d})
	}
	return out
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
