package benefits_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/fault"
	"github.com/membercenter/membercenter/services/benefits"
)

func day(y int, m time.Month, d int) time.Time { return time.Date(y, m, d, 0, 0, 0, 0, sh) }

// legacySample is a legacy member's loyalty as of wed (2026-03-11): an open
// lot, a pending one, one expired before the import, one that never
// expires and a spent one; gold since November with the three months that
// keep it; an issued, a used and an expired coupon.
func legacySample() benefits.Legacy {
	return benefits.Legacy{
		Lots: []benefits.LegacyLot{
			{Ref: "ord-1", Earned: 500, Remaining: 300, EarnedAt: day(2025, 6, 1), ExpiresAt: day(2026, 6, 1)},
			{Ref: "ord-2", Earned: 1000, Remaining: 1000, EarnedAt: day(2026, 3, 8), AvailableAt: day(2026, 3, 15), ExpiresAt: day(2027, 3, 8)},
			{Ref: "ord-0", Earned: 200, Remaining: 150, EarnedAt: day(2025, 1, 10), ExpiresAt: day(2026, 1, 10)},
			{Ref: "welcome", Earned: 50, Remaining: 50, EarnedAt: day(2025, 12, 1)},
			{Ref: "spent", Earned: 80, Remaining: 0, EarnedAt: day(2025, 7, 1), ExpiresAt: day(2026, 7, 1)},
		},
		Tier:      "gold",
		TierSince: day(2025, 11, 1),
		Months: []benefits.LegacyMonth{
			{Year: 2025, Month: time.December, Spend: 600_000, Points: 600, Orders: 4},
			{Year: 2026, Month: time.January, Spend: 500_000, Points: 500, Orders: 3},
			{Year: 2026, Month: time.February, Spend: 700_000, Points: 700, Orders: 5},
		},
		Coupons: []benefits.LegacyCoupon{
			{Code: "LEG-C10-1", Template: "C10", State: "issued", ValidFrom: day(2026, 3, 1), ValidUntil: day(2026, 4, 1), IssuedAt: day(2026, 3, 1)},
			{Code: "LEG-P10-1", Template: "P10", State: "used", ValidFrom: day(2026, 1, 5), ValidUntil: day(2026, 1, 19), IssuedAt: day(2026, 1, 5)},
			{Code: "LEG-C10-2", Template: "C10", State: "expired", ValidFrom: day(2026, 2, 1), ValidUntil: day(2026, 5, 1), IssuedAt: day(2026, 2, 1)},
		},
	}
}

// importMember creates a member in one transaction and imports l into it
// there, as `membercenter import` does; the error is the import's (the
// transaction is then committed all the same, with whatever the refused
// import left: nothing).
func (f *fixture) importMember(t *testing.T, c context.Context, l benefits.Legacy, cause string) (string, error) {
	t.Helper()
	id := uuid.Must(uuid.NewV7())
	var importErr error
	err := pgx.BeginFunc(c, f.pool, func(tx pgx.Tx) error {
		if err := postgres.InsertMember(c, tx, id, *f.clock); err != nil {
			return err
		}
		importErr = f.svc.ImportLegacy(c, tx, id, l, cause, *f.clock)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return id.String(), importErr
}

// beginWithLegacyMember is begin with a member imported from legacySample
// (cause import:legacy-1).
func beginWithLegacyMember(t *testing.T) (*fixture, context.Context, string) {
	t.Helper()
	f, c := begin(t)
	m, err := f.importMember(t, c, legacySample(), "import:legacy-1")
	if err != nil {
		t.Fatal(err)
	}
	return f, c, m
}

// loyaltyRows counts every row an import may write, of every member.
func (f *fixture) loyaltyRows(t *testing.T) string {
	t.Helper()
	var s string
	err := f.pool.QueryRow(context.Background(), `SELECT concat_ws(' ',
		(SELECT count(*) FROM ledger_transactions), (SELECT count(*) FROM ledger_entries), (SELECT count(*) FROM point_lots),
		(SELECT coalesce(sum(balance), 0) FROM points_accounts), (SELECT count(*) FROM coupons), (SELECT count(*) FROM coupon_template_counts),
		(SELECT coalesce(sum(issued), 0) FROM coupon_template_counts), (SELECT count(*) FROM member_activity), (SELECT count(*) FROM tier_history),
		(SELECT count(*) FROM loyalty_state), (SELECT count(*) FROM benefit_grants), (SELECT count(*) FROM outbox))`).Scan(&s)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustLegacyView(t *testing.T, c context.Context, f *fixture, member string) (benefits.Legacy, int64) {
	t.Helper()
	v, balance, err := f.svc.LegacyView(c, f.pool, uuid.MustParse(member))
	if err != nil {
		t.Fatal(err)
	}
	return v, balance
}

// sameLots compares lots field by field (times with Equal).
func sameLots(got, want []benefits.LegacyLot) error {
	if len(got) != len(want) {
		return fmt.Errorf("%d lots, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Ref != w.Ref || g.Earned != w.Earned || g.Remaining != w.Remaining || !g.EarnedAt.Equal(w.EarnedAt) ||
			!g.AvailableAt.Equal(w.AvailableAt) || !g.ExpiresAt.Equal(w.ExpiresAt) {
			return fmt.Errorf("lot %d = %+v, want %+v", i, g, w)
		}
	}
	return nil
}

// TestImportLegacyGivesTheLegacyLoyalty: an import gives the exact balance,
// lots with their dates, tier and since, months and coupons, one balanced
// import transaction against programme:migrated (and the expiry of the
// lot already expired), the changes on the outbox, and every read shows it.
func TestImportLegacyGivesTheLegacyLoyalty(t *testing.T) {
	f, c := begin(t)
	l := legacySample()
	m, err := f.importMember(t, c, l, "import:legacy-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := pgtest.CheckLedger(c, f.pool); err != nil {
		t.Fatal(err)
	}

	// Balance: 300 + 50 available, 1000 pending (the return window); the
	// expired 150 and the spent lot are not held.
	bal, err := f.srv.GetBalance(c, &mcv1.GetBalanceRequest{MemberId: m})
	if err != nil {
		t.Fatal(err)
	}
	if bal.GetAvailable() != 350 || bal.GetPending() != 1000 || !bal.GetNextExpiry().AsTime().Equal(day(2026, 6, 1)) {
		t.Fatalf("balance = %v; want 350 available, 1000 pending, next expiry 2026-06-01", bal)
	}

	// Ledger: the import of every point the legacy system held, then the
	// expiry of the lot that had expired.
	led, err := f.srv.ListLedger(c, &mcv1.ListLedgerRequest{MemberId: m})
	if err != nil {
		t.Fatal(err)
	}
	if e := led.GetEntries(); len(e) != 2 || e[1].GetDelta() != 1500 || e[1].GetCounterAccount() != benefits.MigratedAccount ||
		e[1].GetKind() != mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_IMPORT ||
		e[1].GetCauseId() != "import:legacy-1#0" || e[0].GetDelta() != -150 || e[0].GetKind() != mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_EXPIRE ||
		e[0].GetCounterAccount() != benefits.LiabilityAccount {
		t.Fatalf("ledger = %v; want +1500 from %s, then -150 expired", e, benefits.MigratedAccount)
	}
	var kind string
	var migrated int64
	if err := f.pool.QueryRow(c, `SELECT (SELECT kind FROM ledger_transactions WHERE cause_id = 'import:legacy-1#0'),
		(SELECT sum(delta) FROM ledger_entries WHERE account = 'programme:migrated')`).Scan(&kind, &migrated); err != nil {
		t.Fatal(err)
	}
	if kind != "import" || migrated != -1500 {
		t.Fatalf("import transaction kind %q, migrated account %d; want import, -1500", kind, migrated)
	}

	// Tier, with its history row.
	ts, err := f.srv.GetTierStatus(c, &mcv1.GetTierStatusRequest{MemberId: m})
	if err != nil {
		t.Fatal(err)
	}
	if ts.GetTier() != "gold" || !ts.GetTierSince().AsTime().Equal(l.TierSince) || ts.GetDowngradeAt() != nil {
		t.Fatalf("tier status = %v; want gold since %v", ts, l.TierSince)
	}
	var from, to, reason string
	var at time.Time
	if err := f.pool.QueryRow(c, `SELECT from_tier, to_tier, at, reason FROM tier_history WHERE member_id = $1`, m).
		Scan(&from, &to, &at, &reason); err != nil || from != "normal" || to != "gold" || !at.Equal(l.TierSince) || reason != "imported" {
		t.Fatalf("tier history = %s → %s at %v (%s), %v", from, to, at, reason, err)
	}

	// Coupons, with the states the legacy system gave them.
	cs, err := f.srv.ListCoupons(c, &mcv1.ListCouponsRequest{MemberId: m})
	if err != nil {
		t.Fatal(err)
	}
	wantStates := map[string]mcv1.CouponState{"LEG-C10-1": mcv1.CouponState_COUPON_STATE_ISSUED,
		"LEG-P10-1": mcv1.CouponState_COUPON_STATE_USED, "LEG-C10-2": mcv1.CouponState_COUPON_STATE_EXPIRED}
	if len(cs.GetCoupons()) != len(wantStates) {
		t.Fatalf("coupons = %v", cs.GetCoupons())
	}
	for _, cp := range cs.GetCoupons() {
		if cp.GetState() != wantStates[cp.GetCode()] {
			t.Errorf("coupon %s is %v, want %v", cp.GetCode(), cp.GetState(), wantStates[cp.GetCode()])
		}
	}
	var p10 int
	if err := f.pool.QueryRow(c, `SELECT issued FROM coupon_template_counts WHERE template_id = 'P10'`).Scan(&p10); err != nil || p10 != 1 {
		t.Fatalf("P10 issued %d (%v); want the migrated coupon counted against total_limit", p10, err)
	}
	// The expired one cannot be used, though its dates would allow it.
	b := basket("o-exp", 10_000)
	b.CouponCodes = []string{"LEG-C10-2"}
	if _, err := f.srv.Commit(c, &mcv1.CommitRequest{MemberId: m, Basket: b, IdempotencyKey: "exp"}); !errors.Is(err, benefits.ErrRefused) {
		t.Fatalf("commit with the expired coupon: %v; want refused", err)
	}

	// Benefits of the tier, and the changes channels receive.
	if got := f.benefitIDs(t, c, m); len(got) != 3 {
		t.Fatalf("benefits = %v; want gold's three", got)
	}
	var changes int
	if err := f.pool.QueryRow(c, `SELECT count(*) FROM outbox WHERE member_id = $1`, m).Scan(&changes); err != nil || changes != 2+1+3+3 {
		t.Fatalf("%d changes (%v); want 2 points, 1 tier, 3 benefits, 3 coupons", changes, err)
	}

	// The read-back the reconciliation compares with the source.
	v, balance := mustLegacyView(t, c, f, m)
	if balance != 1350 {
		t.Fatalf("view balance %d, want 1350", balance)
	}
	want := []benefits.LegacyLot{ // open lots, earliest expiry first; availability and "never" as given
		{Ref: "ord-1", Earned: 500, Remaining: 300, EarnedAt: day(2025, 6, 1), AvailableAt: day(2025, 6, 1), ExpiresAt: day(2026, 6, 1)},
		l.Lots[1],
		{Ref: "welcome", Earned: 50, Remaining: 50, EarnedAt: day(2025, 12, 1), AvailableAt: day(2025, 12, 1)},
	}
	if err := sameLots(v.Lots, want); err != nil {
		t.Fatal(err)
	}
	if v.Tier != "gold" || !v.TierSince.Equal(l.TierSince) {
		t.Fatalf("view tier %q since %v", v.Tier, v.TierSince)
	}
	if fmt.Sprint(v.Months) != fmt.Sprint(l.Months) {
		t.Fatalf("view months %v, want %v", v.Months, l.Months)
	}
	if len(v.Coupons) != 3 {
		t.Fatalf("view coupons %+v", v.Coupons)
	}
	for i, cp := range v.Coupons { // in issue order
		w := l.Coupons[[]int{1, 2, 0}[i]]
		if cp.Code != w.Code || cp.Template != w.Template || cp.State != w.State || !cp.ValidFrom.Equal(w.ValidFrom) ||
			!cp.ValidUntil.Equal(w.ValidUntil) || !cp.IssuedAt.Equal(w.IssuedAt) {
			t.Errorf("view coupon %d = %+v, want %+v", i, cp, w)
		}
	}
}

// TestImportLegacyOnlyOnce: a member that has loyalty — imported before,
// or through any operation — is refused, and nothing changes.
func TestImportLegacyOnlyOnce(t *testing.T) {
	f, c, m := beginWithLegacyMember(t)
	other := f.member(t)
	f.commit(t, c, &mcv1.CommitRequest{MemberId: other, Basket: basket("o1", 10_000), IdempotencyKey: "k1"})
	before := f.loyaltyRows(t)
	l := legacySample()
	for i := range l.Coupons {
		l.Coupons[i].Code += "-again" // codes of their own: only the member's loyalty stands in the way
	}
	for _, id := range []string{m, other} {
		err := pgx.BeginFunc(c, f.pool, func(tx pgx.Tx) error {
			return f.svc.ImportLegacy(c, tx, uuid.MustParse(id), l, "import:again:"+id, *f.clock)
		})
		if !errors.Is(err, benefits.ErrAlreadyImported) || !fault.IsData(err) {
			t.Errorf("import into %s: %v; want ErrAlreadyImported, a data error", id, err)
		}
	}
	if after := f.loyaltyRows(t); after != before {
		t.Fatalf("a refused import wrote: %s → %s", before, after)
	}
}

// TestImportLegacyRefusesBadInput: each bad input is refused with a data
// error naming the field and writes nothing; the caller's transaction
// stays usable (the member it created is kept).
func TestImportLegacyRefusesBadInput(t *testing.T) {
	f, c := begin(t)
	if _, err := f.importMember(t, c, benefits.Legacy{Coupons: []benefits.LegacyCoupon{
		{Code: "TAKEN", Template: "C10", State: "issued", ValidFrom: day(2026, 3, 1), ValidUntil: day(2026, 4, 1)}}}, "import:first"); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, field string
		edit        func(l *benefits.Legacy)
	}{
		{"remaining above earned", "lots[0].remaining", func(l *benefits.Legacy) { l.Lots[0].Remaining = 501 }},
		{"negative remaining", "lots[1].remaining", func(l *benefits.Legacy) { l.Lots[1].Remaining = -1 }},
		{"nothing earned", "lots[0].earned", func(l *benefits.Legacy) { l.Lots[0].Earned, l.Lots[0].Remaining = 0, 0 }},
		{"expiry before earning", "lots[2].expires_at", func(l *benefits.Legacy) { l.Lots[2].ExpiresAt = l.Lots[2].EarnedAt.Add(-time.Hour) }},
		{"earned after the import", "lots[0].earned_at", func(l *benefits.Legacy) { l.Lots[0].EarnedAt = wed.Add(time.Hour) }},
		{"unknown tier", "tier", func(l *benefits.Legacy) { l.Tier = "platinum" }},
		{"unknown coupon template", "coupons[1].template", func(l *benefits.Legacy) { l.Coupons[1].Template = "C99" }},
		{"coupon state", "coupons[0].state", func(l *benefits.Legacy) { l.Coupons[0].State = "restored" }},
		{"duplicate coupon code", "coupons[2].code", func(l *benefits.Legacy) { l.Coupons[2].Code = l.Coupons[0].Code }},
		{"another member's coupon code", "coupons[2].code", func(l *benefits.Legacy) { l.Coupons[2].Code = "TAKEN" }},
		{"over the per-member limit", "coupons[4].template", func(l *benefits.Legacy) {
			l.Coupons = append(l.Coupons, l.Coupons[1], l.Coupons[1])
			l.Coupons[3].Code, l.Coupons[4].Code = "LEG-P10-2", "LEG-P10-3"
		}},
		{"month 13", "months[0].month", func(l *benefits.Legacy) { l.Months[0].Month = 13 }},
		{"month given twice", "months[1].month", func(l *benefits.Legacy) { l.Months[1] = l.Months[0] }},
		{"month after the import", "months[2].month", func(l *benefits.Legacy) { l.Months[2].Year = 2027 }},
	}
	for _, tc := range cases {
		before := f.loyaltyRows(t)
		l := legacySample()
		tc.edit(&l)
		m, err := f.importMember(t, c, l, "import:"+tc.name)
		var fe *benefits.FieldError
		if !errors.Is(err, benefits.ErrInvalid) || !errors.As(err, &fe) || fe.Field != tc.field || !fault.IsData(err) {
			t.Errorf("%s: %v; want a data error naming %s", tc.name, err, tc.field)
			continue
		}
		if after := f.loyaltyRows(t); after != before {
			t.Errorf("%s: a refused import wrote: %s → %s", tc.name, before, after)
		}
		if v, balance := mustLegacyView(t, c, f, m); balance != 0 || len(v.Lots)+len(v.Coupons)+len(v.Months) != 0 {
			t.Errorf("%s: the member holds %+v, %d", tc.name, v, balance)
		}
	}
}

// TestImportLegacyTotalLimit: migrated coupons count against a template's
// total_limit like issued ones; one over it is refused, naming the coupon.
func TestImportLegacyTotalLimit(t *testing.T) {
	f, c := begin(t)
	src := bytes.Replace(benefits.DefaultProgramSource(), []byte("total_limit: 100000"), []byte("total_limit: 2"), 1)
	src = bytes.Replace(src, []byte("version: default-1"), []byte("version: p10-two-1"), 1)
	f.useProgram(t, c, src)
	p10 := func(code string) benefits.Legacy {
		return benefits.Legacy{Coupons: []benefits.LegacyCoupon{{Code: code, Template: "P10", State: "issued", ValidFrom: day(2026, 3, 1), ValidUntil: day(2026, 3, 15)}}}
	}
	for _, code := range []string{"A", "B"} {
		if _, err := f.importMember(t, c, p10(code), "import:"+code); err != nil {
			t.Fatal(err)
		}
	}
	before := f.loyaltyRows(t)
	var fe *benefits.FieldError
	if _, err := f.importMember(t, c, p10("C"), "import:C"); !errors.As(err, &fe) || fe.Field != "coupons[0].template" {
		t.Fatalf("third P10: %v; want refused naming coupons[0].template", err)
	}
	if after := f.loyaltyRows(t); after != before {
		t.Fatalf("a refused import wrote: %s → %s", before, after)
	}
}

// TestImportedPointsExpireOnSchedule: imported lots expire at their own
// dates through the scheduled job (an expire transaction), the tier is
// kept by the imported months, and a lot that never expires stays.
func TestImportedPointsExpireOnSchedule(t *testing.T) {
	f, c, m := beginWithLegacyMember(t)
	*f.clock = day(2026, 6, 1).Add(time.Minute)
	if n, err := f.svc.Advance(c, 500); err != nil || n != 1 {
		t.Fatalf("advance: %d, %v", n, err)
	}
	led, err := f.srv.ListLedger(c, &mcv1.ListLedgerRequest{MemberId: m, PageSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	if e := led.GetEntries(); len(e) != 1 || e[0].GetKind() != mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_EXPIRE || e[0].GetDelta() != -300 {
		t.Fatalf("last ledger entry %v; want ord-1's 300 expired", e)
	}
	bal, err := f.srv.GetBalance(c, &mcv1.GetBalanceRequest{MemberId: m})
	if err != nil {
		t.Fatal(err)
	}
	if bal.GetAvailable() != 1050 || bal.GetPending() != 0 || !bal.GetNextExpiry().AsTime().Equal(day(2027, 3, 8)) {
		t.Fatalf("balance = %v; want 1050 available, next expiry 2027-03-08", bal)
	}
	v, balance := mustLegacyView(t, c, f, m)
	if balance != 1050 || len(v.Lots) != 2 || v.Lots[0].Ref != "ord-2" || v.Lots[1].Ref != "welcome" || !v.Lots[1].ExpiresAt.IsZero() {
		t.Fatalf("view after expiry: %d %+v", balance, v.Lots)
	}
	// Three month starts went by: the imported months keep gold (¥18,000
	// over 12 months).
	if v.Tier != "gold" {
		t.Fatalf("tier %q after the month starts; want gold, kept by the imported months", v.Tier)
	}
	// Nothing more is due.
	if n, err := f.svc.Advance(c, 500); err != nil || n != 0 {
		t.Fatalf("advance again: %d, %v", n, err)
	}
}

// TestRedeemSpendsImportedLots: a redemption after an import spends the
// imported lots, earliest expiry first, never the pending one.
func TestRedeemSpendsImportedLots(t *testing.T) {
	f, c, m := beginWithLegacyMember(t)
	resp, err := f.srv.Redeem(c, &mcv1.RedeemRequest{MemberId: m, Points: 320, IdempotencyKey: "r1"})
	if err != nil || resp.GetBalance() != 1030 {
		t.Fatalf("redeem: %v, %v; want balance 1030", resp, err)
	}
	if _, err := f.srv.Redeem(c, &mcv1.RedeemRequest{MemberId: m, Points: 31, IdempotencyKey: "r2"}); !errors.Is(err, benefits.ErrRefused) {
		t.Fatalf("redeem of 31 with 30 available: %v; want refused", err)
	}
	v, balance := mustLegacyView(t, c, f, m)
	want := []benefits.LegacyLot{
		legacySample().Lots[1],
		{Ref: "welcome", Earned: 50, Remaining: 30, EarnedAt: day(2025, 12, 1), AvailableAt: day(2025, 12, 1)},
	}
	if err := sameLots(v.Lots, want); err != nil || balance != 1030 {
		t.Fatalf("after redeeming 320: %v (balance %d)", err, balance)
	}
}

// TestImportLegacyBatch: a batch imports its members in one transaction;
// an import refused on its own (bad input, a code another import of the
// batch has, a member with loyalty) writes nothing and holds back no other.
func TestImportLegacyBatch(t *testing.T) {
	f, c := begin(t)
	withLoyalty := f.member(t)
	f.commit(t, c, &mcv1.CommitRequest{MemberId: withLoyalty, Basket: basket("o1", 10_000), IdempotencyKey: "k1"})
	ids := make([]uuid.UUID, 4)
	imports := make([]benefits.LegacyImport, 5)
	for i := range ids {
		ids[i] = uuid.Must(uuid.NewV7())
		l := legacySample()
		for k := range l.Coupons {
			l.Coupons[k].Code += fmt.Sprint("-", i)
		}
		imports[i] = benefits.LegacyImport{Member: ids[i], Legacy: l, Cause: fmt.Sprint("import:batch:", i)}
	}
	imports[1].Legacy.Lots[0].Remaining = 501
	imports[2].Legacy.Coupons[1].Code = imports[0].Legacy.Coupons[0].Code
	imports[4] = benefits.LegacyImport{Member: uuid.MustParse(withLoyalty), Legacy: legacySample(), Cause: "import:batch:4"}
	var refused map[int]error
	err := pgx.BeginFunc(c, f.pool, func(tx pgx.Tx) error {
		for _, id := range ids {
			if err := postgres.InsertMember(c, tx, id, *f.clock); err != nil {
				return err
			}
		}
		var err error
		refused, err = f.svc.ImportLegacyBatch(c, tx, imports, *f.clock)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var fe *benefits.FieldError
	if len(refused) != 3 || !errors.As(refused[1], &fe) || fe.Field != "lots[0].remaining" ||
		!errors.As(refused[2], &fe) || fe.Field != "coupons[1].code" || !errors.Is(refused[4], benefits.ErrAlreadyImported) {
		t.Fatalf("refused = %v; want imports 1 (lots[0].remaining), 2 (coupons[1].code) and 4 (already has loyalty)", refused)
	}
	for i, id := range ids {
		v, balance := mustLegacyView(t, c, f, id.String())
		imported := refused[i] == nil
		if imported != (balance == 1350 && v.Tier == "gold" && len(v.Coupons) == 3 && len(v.Months) == 3) || (!imported && len(v.Lots)+len(v.Coupons) != 0) {
			t.Errorf("import %d (refused: %v) holds %d, %+v", i, refused[i], balance, v)
		}
	}
	if err := pgtest.CheckLedger(c, f.pool); err != nil {
		t.Fatal(err)
	}
}
