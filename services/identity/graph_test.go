package identity_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/identity"
)

func email(v string) *mcv1.Identifier {
	return &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_EMAIL, Value: v}
}
func device(v string) *mcv1.Identifier {
	return &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_DEVICE_ID, Value: v}
}

// newServiceWithRules builds the service with the default rules, the text
// from in their YAML replaced by to.
func newServiceWithRules(t *testing.T, from, to string) fixture {
	t.Helper()
	def, err := os.ReadFile("rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, []byte(strings.Replace(string(def), from, to, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	pool := pgtest.NewPool(t, nil)
	svc, err := identity.New(identity.Config{RulesPath: path}, pool, changes.Writer{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return withMemberData(svc, pool)
}

func (f fixture) resolve(t *testing.T, key string, ids ...*mcv1.Identifier) *mcv1.ResolveResponse {
	t.Helper()
	resp, err := f.svc.Resolve(ctxT(t), resolveReq(key, true, ids...))
	if err != nil {
		t.Fatalf("resolve %s: %v", key, err)
	}
	return resp
}

// mergeRefused asks to merge source into target and fails the test (what
// names the case) unless the merge is refused with want.
func (f fixture) mergeRefused(t *testing.T, source, target, reason, key string, want error, what string) {
	t.Helper()
	_, err := f.svc.Merge(ctxT(t), &mcv1.MergeRequest{SourceMemberId: source, TargetMemberId: target, Reason: reason, IdempotencyKey: key})
	if !errors.Is(err, want) {
		t.Fatalf("%s: %v", what, err)
	}
}

// merge merges source into target, failing the test on an error.
func (f fixture) merge(t *testing.T, source, target, reason, key string) *mcv1.MergeResponse {
	t.Helper()
	resp, err := f.svc.Merge(ctxT(t), &mcv1.MergeRequest{SourceMemberId: source, TargetMemberId: target, Reason: reason, IdempotencyKey: key})
	if err != nil {
		t.Fatalf("merge %s: %v", key, err)
	}
	return resp
}

// unmerge undoes the merge mergeID, failing the test on an error.
func (f fixture) unmerge(t *testing.T, mergeID, reason, key string) {
	t.Helper()
	if _, err := f.svc.Unmerge(ctxT(t), &mcv1.UnmergeRequest{MergeId: mergeID, Reason: reason, IdempotencyKey: key}); err != nil {
		t.Fatalf("unmerge %s: %v", key, err)
	}
}

// earn credits a purchase to the member the event was resolved to, through
// the benefit worker, as the pipeline does.
func (f fixture) earn(t *testing.T, eventID string, ids []*mcv1.Identifier, amountMinor int64) {
	t.Helper()
	f.earnAt(t, eventID, ids, amountMinor, f.clock.Now())
}

// earnAt is earn of a purchase that happened at at.
func (f fixture) earnAt(t *testing.T, eventID string, ids []*mcv1.Identifier, amountMinor int64, at time.Time) {
	t.Helper()
	ctx := ctxT(t)
	ev := &mcv1.ChannelEvent{EventId: eventID, Channel: mcv1.Channel_CHANNEL_POS, OccurredAt: timestamppb.New(at), Identifiers: ids,
		Payload: &mcv1.ChannelEvent_Transaction{Transaction: &mcv1.Transaction{OrderId: "O-" + eventID,
			Total: &mcv1.Money{Currency: "CNY", AmountMinor: amountMinor}}}}
	res, err := f.svc.ResolveEvent(ctx, ev)
	if err != nil {
		t.Fatalf("resolve %s: %v", eventID, err)
	}
	me := &mcv1.MemberEvent{EventId: eventID, MemberId: res.MemberID, Channel: ev.GetChannel(), OccurredAt: ev.GetOccurredAt(),
		Resolution: res.Detail, Payload: &mcv1.MemberEvent_Transaction{Transaction: ev.GetTransaction()}}
	if err := f.benefits.Apply(ctx, me); err != nil {
		t.Fatalf("apply %s: %v", eventID, err)
	}
}

// memberState is everything identity owns about a member, for field-by-field
// comparison (the change sequence is excluded: it only grows).
type memberState struct {
	Status      string
	MergedInto  *uuid.UUID
	Attributes  map[string]string
	MergeCount  int
	Identifiers []string
	Account     postgres.Account
	Lots        []postgres.Lot
}

func state(t *testing.T, pool *pgxpool.Pool, id string) memberState {
	t.Helper()
	ctx := ctxT(t)
	member := uuid.MustParse(id)
	m, err := postgres.GetMember(ctx, pool, member)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := postgres.ListIdentifiers(ctx, pool, member)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range rows {
		ids = append(ids, fmt.Sprintf("%d/%s/%x origin=%s unique=%v masked=%s linked=%s cause=%s cipher=%x key=%s",
			r.Type, r.Scope, r.Hash, r.OriginMemberID, r.Unique, r.Masked, r.LinkedAt.UTC().Format(time.RFC3339Nano), r.CauseID, r.Cipher, r.KeyID))
	}
	sort.Strings(ids)
	acct, err := postgres.GetAccount(ctx, pool, member)
	if err != nil {
		t.Fatal(err)
	}
	acct.UpdatedAt = time.Time{}
	lots, err := postgres.ListLots(ctx, pool, member)
	if err != nil {
		t.Fatal(err)
	}
	for i := range lots {
		lots[i].EarnedAt, lots[i].AvailableAt, lots[i].ExpiresAt = lots[i].EarnedAt.UTC(), lots[i].AvailableAt.UTC(), lots[i].ExpiresAt.UTC()
	}
	return memberState{Status: m.Status, MergedInto: m.MergedInto, Attributes: m.Attributes, MergeCount: m.MergeCount,
		Identifiers: ids, Account: acct, Lots: lots}
}

func diffState(t *testing.T, what string, want, got memberState) {
	t.Helper()
	wv, gv := reflect.ValueOf(want), reflect.ValueOf(got)
	for i := 0; i < wv.NumField(); i++ {
		if !reflect.DeepEqual(wv.Field(i).Interface(), gv.Field(i).Interface()) {
			t.Errorf("%s: %s differs\n want %+v\n  got %+v", what, wv.Type().Field(i).Name, wv.Field(i).Interface(), gv.Field(i).Interface())
		}
	}
}

func TestMergeUnmergeRoundTripRestoresBothMembers(t *testing.T) {
	f, ctx := beginService(t)
	a := f.resolve(t, "a", phone("13911110001"), card("A-1")).GetMemberId()
	b := f.resolve(t, "b", phone("13911110002"), email("bo@example.cn"), device("tab-1")).GetMemberId()
	f.earn(t, "ea1", []*mcv1.Identifier{card("A-1")}, 12_300)
	f.earn(t, "ea2", []*mcv1.Identifier{phone("13911110001")}, 4_500)
	f.earn(t, "eb1", []*mcv1.Identifier{phone("13911110002")}, 70_000)
	if err := postgres.SetAttributes(ctx, f.pool, uuid.MustParse(a), map[string]string{"city": "Shanghai", "gender": "f"}); err != nil {
		t.Fatal(err)
	}
	if err := postgres.SetAttributes(ctx, f.pool, uuid.MustParse(b), map[string]string{"city": "Beijing"}); err != nil {
		t.Fatal(err)
	}
	beforeA, beforeB := state(t, f.pool, a), state(t, f.pool, b)

	merged := f.merge(t, a, b, "same shopper, confirmed at the service desk", "m1")
	midA, midB := state(t, f.pool, a), state(t, f.pool, b)
	if midA.Status != "merged" || midA.MergedInto == nil || midA.MergedInto.String() != b || len(midA.Identifiers) != 0 || midA.Account.Balance != 0 {
		t.Fatalf("source after merge = %+v", midA)
	}
	if got, want := len(midB.Identifiers), len(beforeA.Identifiers)+len(beforeB.Identifiers); got != want {
		t.Fatalf("target holds %d identifiers, want %d", got, want)
	}
	if midB.Account.Balance != beforeA.Account.Balance+beforeB.Account.Balance || len(midB.Lots) != 3 {
		t.Fatalf("target account %+v with %d lots, want %d points in 3 lots", midB.Account, len(midB.Lots), beforeA.Account.Balance+beforeB.Account.Balance)
	}
	if midB.Attributes["city"] != "Beijing" || midB.Attributes["gender"] != "f" || midB.MergeCount != 1 {
		t.Fatalf("target attributes %v merge count %d; want its own city, the source's gender, 1 merge", midB.Attributes, midB.MergeCount)
	}
	// Reads of the old id answer for the survivor.
	found, err := f.svc.FindByIdentifier(ctx, card("A-1"))
	if err != nil || found.GetMemberId() != b {
		t.Fatalf("card of the merged member finds %v (err %v), want %s", found.GetMemberId(), err, b)
	}
	graph, err := f.svc.Graph(ctx, uuid.MustParse(b))
	if err != nil {
		t.Fatal(err)
	}
	if len(graph.GetMerges()) != 1 || graph.GetMerges()[0].GetMergeId() != merged.GetMergeId() ||
		!strings.Contains(graph.GetMerges()[0].GetReason(), "service desk") || graph.GetMerges()[0].GetActor() == "" {
		t.Fatalf("graph merges = %v", graph.GetMerges())
	}

	f.unmerge(t, merged.GetMergeId(), "two people sharing a phone", "u1")
	diffState(t, "source after unmerge", beforeA, state(t, f.pool, a))
	diffState(t, "target after unmerge", beforeB, state(t, f.pool, b))

	// The ledger stays balanced and tells the story: two transfers.
	var sum, transfers int64
	if err := f.pool.QueryRow(ctx, `SELECT coalesce(sum(delta), 0), (SELECT count(*) FROM ledger_transactions WHERE kind = 'transfer') FROM ledger_entries`).Scan(&sum, &transfers); err != nil {
		t.Fatal(err)
	}
	if sum != 0 || transfers != 2 {
		t.Fatalf("ledger sum %d with %d transfers; want 0 and 2", sum, transfers)
	}
	// The audit has the merge and the unmerge, with reasons, and cannot be edited.
	var actions []string
	rows, err := f.pool.Query(ctx, `SELECT action || ':' || reason FROM identity_audit WHERE action IN ('merge', 'unmerge') ORDER BY at`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		_ = rows.Scan(&s)
		actions = append(actions, s)
	}
	if len(actions) != 2 || !strings.HasPrefix(actions[0], "merge:same shopper") || !strings.HasPrefix(actions[1], "unmerge:two people") {
		t.Fatalf("audit = %v", actions)
	}
	if _, err := f.pool.Exec(ctx, `DELETE FROM identity_audit`); err == nil {
		t.Fatal("identity_audit accepted a DELETE")
	}
}

// After a merge, what happens through the source's identifiers belongs to the
// source: an unmerge gives it back.
func TestUnmergeAttributesLaterActivity(t *testing.T) {
	f := newService(t)
	a := f.resolve(t, "a", phone("13922220001")).GetMemberId()
	b := f.resolve(t, "b", phone("13922220002")).GetMemberId()
	f.earn(t, "a-before", []*mcv1.Identifier{phone("13922220001")}, 1_000)
	merged := f.merge(t, a, b, "r", "m")
	// Through a's phone: a new e-mail and a purchase. Through b's phone: a purchase.
	if r := f.resolve(t, "a-email", phone("13922220001"), email("ann@example.cn")); r.GetMemberId() != b || len(r.GetLinked()) != 1 {
		t.Fatalf("resolve after merge = %v", r)
	}
	f.earn(t, "a-after", []*mcv1.Identifier{phone("13922220001")}, 2_000)
	f.earn(t, "b-after", []*mcv1.Identifier{phone("13922220002")}, 5_000)
	// An adjustment through a's id: points a holds, but not points earned
	// (before, the unmerge counted it as earned: a's lifetime points 35 and
	// b's 145, a survivor's could go below zero).
	if _, err := benefits.NewServer(f.benefits).Adjust(ctxT(t), &mcv1.AdjustRequest{MemberId: a, Points: 5, Reason: "goodwill", IdempotencyKey: "a-adjust"}); err != nil {
		t.Fatal(err)
	}
	// 10 + 20 + 50, the programme's 100-point bonus for a third purchase
	// in the month, earned by b's purchase, and the 5 given.
	if got := state(t, f.pool, b).Account.Balance; got != 185 {
		t.Fatalf("merged balance %d, want 185", got)
	}
	f.unmerge(t, merged.GetMergeId(), "r", "u")
	sa, sb := state(t, f.pool, a), state(t, f.pool, b)
	if sa.Account.Balance != 35 || sa.Account.LifetimeEarned != 30 || sb.Account.Balance != 150 || sb.Account.LifetimeEarned != 150 {
		t.Fatalf("after unmerge a=%+v b=%+v; want a 35 held of 30 earned, b 150 and 150", sa.Account, sb.Account)
	}
	if len(sa.Identifiers) != 2 || !strings.Contains(strings.Join(sa.Identifiers, " "), "a***@example.cn") {
		t.Fatalf("a's identifiers after unmerge = %v; want its phone and the e-mail linked through it", sa.Identifiers)
	}
	if len(sb.Identifiers) != 1 {
		t.Fatalf("b's identifiers after unmerge = %v", sb.Identifiers)
	}
}

// TestUnmergeCountsAPurchaseMadeBeforeTheMerge: a purchase made through
// the source before the merge but applied after it (an offline till, a
// stage behind) is the source's when the merge is undone, lifetime points
// included. Its lot is dated at the survivor's last operation, the merge's
// own time, which a count of lots earned after the merge left out: the
// source got the points back but not as earned.
func TestUnmergeCountsAPurchaseMadeBeforeTheMerge(t *testing.T) {
	f := newService(t)
	a := f.resolve(t, "a", phone("13922230001")).GetMemberId()
	b := f.resolve(t, "b", phone("13922230002")).GetMemberId()
	f.earn(t, "a-first", []*mcv1.Identifier{phone("13922230001")}, 1_000)
	merged := f.merge(t, a, b, "r", "m")
	f.earnAt(t, "a-offline", []*mcv1.Identifier{phone("13922230001")}, 2_000, f.clock.Now().Add(-time.Hour))
	f.unmerge(t, merged.GetMergeId(), "r", "u")
	sa, sb := state(t, f.pool, a), state(t, f.pool, b)
	if sa.Account.Balance != 30 || sa.Account.LifetimeEarned != 30 || sb.Account.Balance != 0 || sb.Account.LifetimeEarned != 0 {
		t.Fatalf("after unmerge a=%+v b=%+v; want a 30 held and earned, b nothing", sa.Account, sb.Account)
	}
}

func TestResolveMergesMembersTheIdentifiersProveOne(t *testing.T) {
	f, ctx := beginService(t)
	byPhone := f.resolve(t, "p", phone("13933330001")).GetMemberId()
	byCard := f.resolve(t, "c", card("C-77")).GetMemberId()
	resp := f.resolve(t, "both", card("C-77"), phone("13933330001"))
	// The card outranks the phone, so the card's member survives.
	if resp.GetMemberId() != byCard || len(resp.GetMergedMemberIds()) != 1 || resp.GetMergedMemberIds()[0] != byPhone || resp.GetConflict() {
		t.Fatalf("resolve = %v; want %s to absorb %s", resp, byCard, byPhone)
	}
	if st := state(t, f.pool, byPhone); st.Status != "merged" {
		t.Fatalf("phone member status %s", st.Status)
	}
	var reason string
	if err := f.pool.QueryRow(ctx, `SELECT reason FROM merges`).Scan(&reason); err != nil || !strings.Contains(reason, "seen together") {
		t.Fatalf("merge reason %q (err %v)", reason, err)
	}
}

func TestRulesForbidMergeRecordConflictForReview(t *testing.T) {
	// E-mail may not merge members here: a conflict is recorded instead.
	f := newServiceWithRules(t, "    may_merge: true\n    may_create: true\n    blocked: [\"test@example.com\"", "    may_merge: false\n    may_create: true\n    blocked: [\"test@example.com\"")
	ctx := ctxT(t)
	byPhone := f.resolve(t, "p", phone("13944440001")).GetMemberId()
	byEmail := f.resolve(t, "e", email("kai@example.cn")).GetMemberId()
	resp := f.resolve(t, "both", phone("13944440001"), email("kai@example.cn"))
	if resp.GetMemberId() != byPhone || !resp.GetConflict() || resp.GetConflictId() == "" || len(resp.GetMergedMemberIds()) != 0 {
		t.Fatalf("resolve = %v; want the phone's member and a conflict", resp)
	}
	list, err := f.svc.ListConflicts(ctx, &mcv1.ListConflictsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetConflicts()) != 1 || !reflect.DeepEqual(list.GetConflicts()[0].GetMemberIds(), []string{byPhone, byEmail}) ||
		!strings.Contains(list.GetConflicts()[0].GetReason(), "may not merge") {
		t.Fatalf("conflicts = %v", list.GetConflicts())
	}
	settled, err := f.svc.ResolveConflict(ctx, &mcv1.ResolveConflictRequest{ConflictId: resp.GetConflictId(), Merge: true, Reason: "checked ID", IdempotencyKey: "rc"})
	if err != nil {
		t.Fatal(err)
	}
	if settled.GetMemberId() != byPhone || state(t, f.pool, byEmail).Status != "merged" {
		t.Fatalf("settled = %v; e-mail member %s", settled, state(t, f.pool, byEmail).Status)
	}
	if list, _ := f.svc.ListConflicts(ctx, &mcv1.ListConflictsRequest{}); len(list.GetConflicts()) != 0 {
		t.Fatalf("settled conflict still listed: %v", list.GetConflicts())
	}
	_, err = f.svc.ResolveConflict(ctx, &mcv1.ResolveConflictRequest{ConflictId: resp.GetConflictId(), Reason: "again", IdempotencyKey: "rc2"})
	if !errors.Is(err, identity.ErrRefused) {
		t.Fatalf("settling twice: %v, want a refusal", err)
	}
}

// A store tablet's device id is shared: it never merges members and
// attaches a device-only event to the member last linked to it.
func TestSharedDeviceNeverMerges(t *testing.T) {
	f, ctx := beginService(t)
	first := f.resolve(t, "1", phone("13955550001"), device("store-tablet")).GetMemberId()
	second := f.resolve(t, "2", phone("13955550002"), device("store-tablet"))
	if second.GetMemberId() == first || len(second.GetMergedMemberIds()) != 0 || second.GetConflict() {
		t.Fatalf("second shopper on the tablet = %v; want a separate member, no merge, no conflict", second)
	}
	res, err := f.svc.ResolveEvent(ctx, channelEvent("tablet-visit", device("store-tablet")))
	if err != nil {
		t.Fatal(err)
	}
	if res.MemberID != second.GetMemberId() {
		t.Fatalf("device-only event went to %s, want the member last seen on the tablet %s", res.MemberID, second.GetMemberId())
	}
	// A device alone does not create members.
	_, err = f.svc.ResolveEvent(ctx, channelEvent("unknown-device", device("never-seen")))
	if !dlq.Rejected(err) || !errors.Is(err, identity.ErrUnroutable) {
		t.Fatalf("unknown device alone: %v, want an unroutable dead letter", err)
	}
}

func TestBlockedAndLimitedIdentifiers(t *testing.T) {
	f, ctx := beginService(t)
	member := f.resolve(t, "m", phone("13966660001")).GetMemberId()
	before := f.counts(t)

	cases := []struct {
		name string
		req  *mcv1.ResolveRequest
		rule string
	}{
		{"blocked phone", resolveReq("b1", true, phone("13800000000")), "phone.blocked"},
		{"placeholder card", resolveReq("b2", true, card("guest")), "member_card.blocked"},
		{"blocked e-mail with a good phone", resolveReq("b3", true, phone("13966660001"), email("TEST@example.com")), "email.blocked"},
	}
	for _, tc := range cases {
		_, err := f.svc.Resolve(ctx, tc.req)
		var re *identity.RuleError
		if !errors.As(err, &re) || re.Rule != tc.rule || !errors.Is(err, identity.ErrRefused) {
			t.Errorf("%s: err = %v, want refusal by %s", tc.name, err, tc.rule)
		}
	}
	if after := f.counts(t); after != before {
		t.Fatalf("refused requests changed the database: %+v → %+v", before, after)
	}
	// Five devices is the limit: the sixth is refused over RPC ...
	for i := 0; i < 5; i++ {
		f.resolve(t, fmt.Sprintf("d%d", i), phone("13966660001"), device(fmt.Sprintf("dev-%d", i)))
	}
	before = f.counts(t)
	_, err := f.svc.Resolve(ctx, resolveReq("d6", true, phone("13966660001"), device("dev-6")))
	var re *identity.RuleError
	if !errors.As(err, &re) || re.Rule != "device_id.max_per_member" {
		t.Fatalf("sixth device: %v, want device_id.max_per_member", err)
	}
	if after := f.counts(t); after != before {
		t.Fatalf("refused request changed the database: %+v → %+v", before, after)
	}
	// ... and ignored, with the rule reported, on a channel event.
	res, err := f.svc.ResolveEvent(ctx, channelEvent("ev-d6", phone("13966660001"), device("dev-6"), email("test@example.com")))
	if err != nil {
		t.Fatal(err)
	}
	var rules []string
	for _, ig := range res.Detail.GetIgnored() {
		rules = append(rules, ig.GetRule())
	}
	sort.Strings(rules)
	if res.MemberID != member || !reflect.DeepEqual(rules, []string{"device_id.max_per_member", "email.blocked"}) {
		t.Fatalf("event resolution member %s ignored %v", res.MemberID, rules)
	}
	// An event whose every identifier is blocked cannot be routed.
	if _, err := f.svc.ResolveEvent(ctx, channelEvent("ev-blocked", phone("13800000000"))); !dlq.Rejected(err) {
		t.Fatalf("all-blocked event: %v, want a dead letter", err)
	}
}

func TestMergeProtection(t *testing.T) {
	f := newServiceWithRules(t, "max_merges: 20", "max_merges: 1")
	ctx := ctxT(t)
	a := f.resolve(t, "a", phone("13977770001")).GetMemberId()
	b := f.resolve(t, "b", phone("13977770002")).GetMemberId()
	c := f.resolve(t, "c", phone("13977770003")).GetMemberId()
	f.merge(t, a, b, "one", "m1")
	beforeB, beforeC := state(t, f.pool, b), state(t, f.pool, c)
	_, err := f.svc.Merge(ctx, &mcv1.MergeRequest{SourceMemberId: c, TargetMemberId: b, Reason: "two", IdempotencyKey: "m2"})
	var re *identity.RuleError
	if !errors.As(err, &re) || re.Rule != "limits.max_merges" {
		t.Fatalf("second merge: %v, want refusal by limits.max_merges", err)
	}
	diffState(t, "target after refusal", beforeB, state(t, f.pool, b))
	diffState(t, "source after refusal", beforeC, state(t, f.pool, c))
	var reason string
	if err := f.pool.QueryRow(ctx, `SELECT reason FROM identity_audit WHERE action = 'merge_refused'`).Scan(&reason); err != nil || !strings.Contains(reason, "max_merges") {
		t.Fatalf("refusal audit reason %q (err %v)", reason, err)
	}
	// A retry with the same key is judged again, not answered "merged".
	f.mergeRefused(t, c, b, "two", "m2", identity.ErrRefused, "retried refused merge")
}

func TestUnmergeOrderAndRepeats(t *testing.T) {
	f, ctx := beginService(t)
	a := f.resolve(t, "a", phone("13988880001")).GetMemberId()
	b := f.resolve(t, "b", phone("13988880002")).GetMemberId()
	c := f.resolve(t, "c", phone("13988880003")).GetMemberId()
	ab := f.merge(t, a, b, "r", "ab")
	bc := f.merge(t, b, c, "r", "bc")
	if got := len(state(t, f.pool, c).Identifiers); got != 3 {
		t.Fatalf("c holds %d identifiers after two merges, want 3", got)
	}
	_, err := f.svc.Unmerge(ctx, &mcv1.UnmergeRequest{MergeId: ab.GetMergeId(), Reason: "r", IdempotencyKey: "u-ab"})
	var re *identity.RuleError
	if !errors.As(err, &re) || re.Rule != "unmerge.order" {
		t.Fatalf("unmerging the inner merge first: %v, want unmerge.order", err)
	}
	// Undoing b→c gives b back with a's identifiers, since a travels with b.
	f.unmerge(t, bc.GetMergeId(), "r", "u-bc")
	if got := len(state(t, f.pool, b).Identifiers); got != 2 {
		t.Fatalf("b holds %d identifiers after unmerge, want 2 (its own and a's)", got)
	}
	if _, err := f.svc.Unmerge(ctx, &mcv1.UnmergeRequest{MergeId: bc.GetMergeId(), Reason: "again", IdempotencyKey: "u-bc-2"}); !errors.Is(err, identity.ErrAlreadyUnmerged) {
		t.Fatalf("second unmerge: %v", err)
	}
	f.mergeRefused(t, a, c, "r", "ac", identity.ErrMemberInactive, "merging a member that is merged away")
}

func TestLinkAndUnlink(t *testing.T) {
	f, ctx := beginService(t)
	a := f.resolve(t, "a", phone("13999990001")).GetMemberId()
	b := f.resolve(t, "b", phone("13999990002")).GetMemberId()
	if _, err := f.svc.Link(ctx, &mcv1.LinkRequest{MemberId: a, Identifier: card("L-1"), Reason: "card issued", IdempotencyKey: "l1"}); err != nil {
		t.Fatal(err)
	}
	before := f.counts(t)
	cases := []struct {
		name string
		req  *mcv1.LinkRequest
		want error
	}{
		{"another member's phone", &mcv1.LinkRequest{MemberId: a, Identifier: phone("13999990002"), IdempotencyKey: "l2"}, identity.ErrRefused},
		{"blocked value", &mcv1.LinkRequest{MemberId: a, Identifier: email("test@example.com"), IdempotencyKey: "l3"}, identity.ErrRefused},
		{"unknown member", &mcv1.LinkRequest{MemberId: uuid.NewString(), Identifier: card("L-2"), IdempotencyKey: "l4"}, postgres.ErrNotFound},
		{"garbage", &mcv1.LinkRequest{MemberId: a, Identifier: phone("12"), IdempotencyKey: "l5"}, identity.ErrInvalidIdentifier},
	}
	for _, tc := range cases {
		_, err := f.svc.Link(ctx, tc.req)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		// Who holds an identifier is not told to whoever tries to link it.
		if err != nil && strings.Contains(err.Error(), b) {
			t.Errorf("%s: %v names the member holding the identifier", tc.name, err)
		}
	}
	if after := f.counts(t); after != before {
		t.Fatalf("refused links changed the database: %+v → %+v", before, after)
	}
	if _, err := f.svc.Unlink(ctx, &mcv1.UnlinkRequest{MemberId: b, Identifier: card("L-1"), IdempotencyKey: "u1"}); !errors.Is(err, postgres.ErrNotFound) {
		t.Fatalf("unlinking another member's card: %v", err)
	}
	resp, err := f.svc.Unlink(ctx, &mcv1.UnlinkRequest{MemberId: a, Identifier: card("L-1"), Reason: "card lost", IdempotencyKey: "u2"})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(resp.GetMember().GetIdentifiers()); n != 1 {
		t.Fatalf("after unlink the member holds %d identifiers, want 1", n)
	}
	var actions string
	if err := f.pool.QueryRow(ctx, `SELECT string_agg(action, ',' ORDER BY at) FROM identity_audit WHERE member_id = $1`, uuid.MustParse(a)).Scan(&actions); err != nil {
		t.Fatal(err)
	}
	if actions != "create,link,unlink" {
		t.Fatalf("audit of a = %s", actions)
	}
}

func TestRulesFileValidation(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown type", "types: {fax: {priority: 1, unique: true, max_per_member: 1}}\nlimits: {max_identifiers: 1, max_merges: 1}", "types.fax"},
		{"shared type may merge", strings.Replace(string(mustRead(t, "rules.yaml")), "may_merge: false", "may_merge: true", 1), "types.device_id: may_merge needs unique"},
		{"missing type", "types: {}\nlimits: {max_identifiers: 1, max_merges: 1}", "types.phone: missing"},
		{"typo in a field", strings.Replace(string(mustRead(t, "rules.yaml")), "max_merges", "max_mergez", 1), "max_mergez"},
	} {
		if _, err := identity.ParseRules([]byte(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error naming %q", tc.name, err, tc.want)
		}
	}
	if identity.DefaultRules().Limits.MaxIdentifiers != 100 {
		t.Fatal("default limits not loaded")
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// loyaltyState is what the programme keeps per member, for comparison.
func loyaltyState(t *testing.T, pool *pgxpool.Pool, id string) string {
	t.Helper()
	var out string
	err := pool.QueryRow(ctxT(t), `SELECT
		coalesce((SELECT state->>'tier' FROM loyalty_state WHERE member_id = $1), 'normal') || ' grants=' ||
		coalesce((SELECT string_agg(benefit_id, ',' ORDER BY benefit_id) FROM benefit_grants WHERE member_id = $1), '') || ' coupons=' ||
		coalesce((SELECT string_agg(code || ':' || state, ',' ORDER BY code) FROM coupons WHERE member_id = $1), '') || ' orders=' ||
		coalesce((SELECT string_agg(order_id, ',' ORDER BY order_id) FROM orders WHERE member_id = $1), '') || ' activity=' ||
		coalesce((SELECT string_agg(month || ':' || spend || '/' || points || '/' || orders, ',' ORDER BY month)
		            FROM (SELECT month, sum(spend) spend, sum(points) points, sum(orders) orders FROM member_activity WHERE member_id = $1 GROUP BY month) a), '')`,
		uuid.MustParse(id)).Scan(&out)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Merging combines tier inputs, coupons and orders (and may lift the tier);
// unmerging gives each member back exactly its own, tier and benefits
// included.
func TestMergeUnmergeRestoresLoyaltyState(t *testing.T) {
	f := newService(t)
	a := f.resolve(t, "a", phone("13955551001")).GetMemberId()
	b := f.resolve(t, "b", phone("13955551002")).GetMemberId()
	f.earn(t, "a1", []*mcv1.Identifier{phone("13955551001")}, 150_000) // ¥1,500: normal, a ¥10 coupon for a ¥500+ basket
	f.earn(t, "b1", []*mcv1.Identifier{phone("13955551002")}, 80_000)  // ¥800: normal, a coupon too
	beforeA, beforeB := loyaltyState(t, f.pool, a), loyaltyState(t, f.pool, b)
	beforeLotsA, beforeLotsB := state(t, f.pool, a), state(t, f.pool, b)

	merged := f.merge(t, a, b, "same shopper", "m")
	// Together: ¥2,300 over 12 months → silver, with its benefits and both coupons.
	mid := loyaltyState(t, f.pool, b)
	if !strings.HasPrefix(mid, "silver grants=free_shipping,priority_checkout coupons=C10-"+a) || !strings.Contains(mid, "C10-"+b) {
		t.Fatalf("merged member: %s", mid)
	}
	f.unmerge(t, merged.GetMergeId(), "two people", "u")
	if got := loyaltyState(t, f.pool, a); got != beforeA {
		t.Errorf("a after unmerge:\n got %s\nwant %s", got, beforeA)
	}
	if got := loyaltyState(t, f.pool, b); got != beforeB {
		t.Errorf("b after unmerge:\n got %s\nwant %s", got, beforeB)
	}
	diffState(t, "a", beforeLotsA, state(t, f.pool, a))
	diffState(t, "b", beforeLotsB, state(t, f.pool, b))
}

// erase erases member and every member merged into it, as EraseMember does
// in PostgreSQL.
func (f fixture) erase(t *testing.T, member string) {
	t.Helper()
	ctx := ctxT(t)
	err := pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error {
		folded, err := postgres.LockErasable(ctx, tx, uuid.MustParse(member))
		if err != nil {
			return err
		}
		_, err = postgres.EraseMembers(ctx, tx, append(folded, uuid.MustParse(member)))
		return err
	})
	if err != nil {
		t.Fatalf("erase %s: %v", member, err)
	}
}

// An erased member is no one: every identity write naming it, or a merge
// of it, is NotFound, as every read is — not FailedPrecondition "merged
// into <nil>".
func TestIdentityWritesOnAnErasedMemberAreNotFound(t *testing.T) {
	f, ctx := beginService(t)
	a := f.resolve(t, "a", phone("13922240001")).GetMemberId()
	b := f.resolve(t, "b", phone("13922240002")).GetMemberId()
	c := f.resolve(t, "c", phone("13922240003")).GetMemberId()
	merged := f.merge(t, a, b, "r", "m")
	f.erase(t, b) // and a, merged into it
	calls := map[string]error{}
	_, calls["merge of the erased survivor"] = f.svc.Merge(ctx, &mcv1.MergeRequest{SourceMemberId: b, TargetMemberId: c, Reason: "r", IdempotencyKey: "m1"})
	_, calls["merge into the erased survivor"] = f.svc.Merge(ctx, &mcv1.MergeRequest{SourceMemberId: c, TargetMemberId: b, Reason: "r", IdempotencyKey: "m2"})
	_, calls["merge of the erased absorbed member"] = f.svc.Merge(ctx, &mcv1.MergeRequest{SourceMemberId: a, TargetMemberId: c, Reason: "r", IdempotencyKey: "m3"})
	_, calls["unmerge"] = f.svc.Unmerge(ctx, &mcv1.UnmergeRequest{MergeId: merged.GetMergeId(), Reason: "r", IdempotencyKey: "u1"})
	_, calls["link"] = f.svc.Link(ctx, &mcv1.LinkRequest{MemberId: b, Identifier: email("b@example.cn"), IdempotencyKey: "l1"})
	_, calls["unlink"] = f.svc.Unlink(ctx, &mcv1.UnlinkRequest{MemberId: b, Identifier: phone("13922240002"), Reason: "r", IdempotencyKey: "ul1"})
	_, calls["issue member code"] = f.svc.IssueMemberCode(ctx, uuid.MustParse(b))
	for what, err := range calls {
		if !errors.Is(err, postgres.ErrNotFound) || errors.Is(err, identity.ErrMemberInactive) {
			t.Errorf("%s: %v, want not found", what, err)
		}
	}
}

// resolved is a Resolve's answer.
type resolved struct {
	resp *mcv1.ResolveResponse
	err  error
}

// resolveDuringErasure resolves req while an erasure of member holds the
// member's lock, the resolution waiting for it, then commits the erasure
// and returns the resolution's answer.
func (f fixture) resolveDuringErasure(t *testing.T, ctx context.Context, member string, req *mcv1.ResolveRequest) resolved {
	t.Helper()
	tx, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // committed below
	if _, err := postgres.LockErasable(ctx, tx, uuid.MustParse(member)); err != nil {
		t.Fatal(err)
	}
	if _, err := postgres.EraseMembers(ctx, tx, []uuid.UUID{uuid.MustParse(member)}); err != nil {
		t.Fatal(err)
	}
	done := make(chan resolved, 1)
	go func() {
		resp, err := f.svc.Resolve(ctx, req)
		done <- resolved{resp, err}
	}()
	pgtest.Eventually(t, "the resolution waits for the erasure", func() (bool, error) {
		n, err := lockWaiters(ctx, f.pool)
		return n == 1, err
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	return <-done
}

// A resolution that finds a member by its phone while the member is being
// erased, and brings an e-mail to link, waits for the erasure and then
// resolves again: the phone and the e-mail make a new member, and nothing
// is linked to the erased one (its e-mail would otherwise be held by no one
// who can be found, for good).
func TestResolutionRacingAnErasureLinksNothingToTheErasedMember(t *testing.T) {
	f, ctx := beginService(t)
	erased := f.resolve(t, "a", phone("13922260001")).GetMemberId()
	a := f.resolveDuringErasure(t, ctx, erased, resolveReq("b", true, phone("13922260001"), email("b@example.cn")))
	if a.err != nil || a.resp.GetMemberId() == erased || !a.resp.GetCreated() || len(a.resp.GetLinked()) != 2 {
		t.Errorf("resolution racing the erasure: %v, %v; want a new member with both identifiers", a.resp, a.err)
	}
	if n := pgtest.Values[int](t, ctx, f.pool, `SELECT count(*)::int FROM member_identifiers WHERE member_id = $1`, erased); n[0] != 0 {
		t.Errorf("the erased member holds %d identifiers", n[0])
	}
}

// A resolution that finds two members the rules may not merge, one of
// them being erased, waits for the erasure before it writes anything: no
// conflict and no audit row names the erased member, and the resolution
// goes on with the other member alone. Before, the conflict was recorded
// (with the erased member's masked phone and keyed hash in the audit),
// where no erasure could reach it any more.
func TestResolutionRacingAnErasureRecordsNoConflictWithTheErasedMember(t *testing.T) {
	f := newServiceWithRules(t, "    may_merge: true\n    may_create: true\n    blocked: [\"test@example.com\"", "    may_merge: false\n    may_create: true\n    blocked: [\"test@example.com\"")
	ctx := ctxT(t)
	erased := f.resolve(t, "p", phone("13944450001")).GetMemberId()
	byEmail := f.resolve(t, "e", email("kai2@example.cn")).GetMemberId()
	a := f.resolveDuringErasure(t, ctx, erased, resolveReq("both", true, phone("13944450001"), email("kai2@example.cn")))
	if a.err != nil || a.resp.GetMemberId() != byEmail || a.resp.GetConflict() {
		t.Errorf("resolution racing the erasure: %v, %v; want the e-mail's member, no conflict", a.resp, a.err)
	}
	if n := pgtest.Values[int](t, ctx, f.pool, `SELECT count(*)::int FROM identity_conflicts WHERE $1 = ANY(member_ids)`, uuid.MustParse(erased)); n[0] != 0 {
		t.Errorf("%d conflicts name the erased member", n[0])
	}
	if n := pgtest.Values[int](t, ctx, f.pool, `SELECT count(*)::int FROM identity_audit WHERE (member_id = $1 OR other_member_id = $1) AND action <> 'create'`, uuid.MustParse(erased)); n[0] != 0 {
		t.Errorf("%d audit rows about the erased member written after its erasure: %v", n[0], pgtest.Values[string](t, ctx, f.pool, `SELECT action || coalesce(other_member_id::text, '') FROM identity_audit WHERE member_id = $1 OR other_member_id = $1`, uuid.MustParse(erased)))
	}
}

// Resolutions and links that each bring a member a new e-mail at once
// count each other against the member's limit (3 e-mails): no more are
// linked than the rules allow, and the rest are refused by the rule.
func TestConcurrentResolutionsKeepThePerMemberLimit(t *testing.T) {
	f, ctx := beginService(t)
	member := f.resolve(t, "a", phone("13922270001")).GetMemberId()
	errs := atOnce(8, func(i int) error {
		mail := email(fmt.Sprintf("e%d@example.cn", i))
		if i%2 == 0 {
			_, err := f.svc.Link(ctx, &mcv1.LinkRequest{MemberId: member, Identifier: mail, IdempotencyKey: fmt.Sprintf("l%d", i)})
			return err
		}
		resp, err := f.svc.Resolve(ctx, resolveReq(fmt.Sprintf("e%d", i), true, phone("13922270001"), mail))
		if err == nil && resp.GetMemberId() != member {
			return fmt.Errorf("resolved to %s", resp.GetMemberId())
		}
		return err
	})
	linked := 0
	for i, err := range errs {
		var re *identity.RuleError
		switch {
		case err == nil:
			linked++
		case errors.As(err, &re) && re.Rule == "email.max_per_member":
		default:
			t.Errorf("resolution %d: %v", i, err)
		}
	}
	n := pgtest.Values[int](t, ctx, f.pool, `SELECT count(*)::int FROM member_identifiers WHERE member_id = $1 AND id_type = $2`,
		member, int16(mcv1.IdentifierType_IDENTIFIER_TYPE_EMAIL))
	if n[0] != 3 || linked != 3 {
		t.Errorf("%d e-mails held, %d resolutions linked one; want 3 (the limit)", n[0], linked)
	}
}

// TestLinkTakesTheIdentifierBeforeTheMember: a Link of an e-mail to a
// member waits for the e-mail's lock without holding the member's row, as
// every resolution takes them (identifiers first): a Resolve that brings
// the member's phone with that e-mail, at once, never waits for Link in
// the opposite order. Before, Link locked the member first, and the two
// deadlocked until PostgreSQL broke the cycle (deadlock_timeout, 1 s) and
// one side retried.
func TestLinkTakesTheIdentifierBeforeTheMember(t *testing.T) {
	f, ctx := beginService(t)
	member := f.resolve(t, "m", phone("13922280001")).GetMemberId()
	mail := email("both@example.cn")
	ns, err := f.svc.Normalize([]*mcv1.Identifier{mail})
	if err != nil {
		t.Fatal(err)
	}
	// A resolution holding the e-mail's lock, about to take the member.
	tx, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // committed below
	if err := postgres.LockIdentifiers(ctx, tx, []postgres.IdentifierKey{{Type: int16(ns[0].Type), Scope: ns[0].Scope, Hash: ns[0].Hash}}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := f.svc.Link(ctx, &mcv1.LinkRequest{MemberId: member, Identifier: mail, IdempotencyKey: "l"})
		done <- err
	}()
	pgtest.Eventually(t, "Link waits for the e-mail", func() (bool, error) {
		n, err := lockWaiters(ctx, f.pool)
		return n == 1, err
	})
	if _, err := tx.Exec(ctx, `SELECT 1 FROM members WHERE member_id = $1 FOR NO KEY UPDATE NOWAIT`, member); err != nil {
		t.Fatalf("the member's row is held while Link waits for the e-mail (%v): a resolution taking the e-mail, then the member, deadlocks with it", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("Link: %v", err)
	}
}

// TestMalformedIdentifierErrorNamesTheRequestField: LinkRequest,
// UnlinkRequest and FindByIdentifierRequest have one field `identifier`;
// an InvalidArgument for a malformed value names that field, not
// "identifiers[0]", which these requests do not have (a probe).
func TestMalformedIdentifierErrorNamesTheRequestField(t *testing.T) {
	f, ctx := beginService(t)
	m := f.resolve(t, "a", phone("13955520001")).GetMemberId()
	bad := email("a@b..c")
	_, errLink := f.svc.Link(ctx, &mcv1.LinkRequest{MemberId: m, Identifier: bad, IdempotencyKey: "l"})
	_, errUnlink := f.svc.Unlink(ctx, &mcv1.UnlinkRequest{MemberId: m, Identifier: bad, IdempotencyKey: "u"})
	_, errFind := f.svc.FindByIdentifier(ctx, bad)
	for name, err := range map[string]error{"Link": errLink, "Unlink": errUnlink, "FindByIdentifier": errFind} {
		if err == nil {
			t.Errorf("%s of a malformed e-mail: no error", name)
			continue
		}
		msg := err.Error()
		if len(msg) < len("identifier") || !startsWithField(msg) {
			t.Errorf("%s of a malformed e-mail: %q; want the error to name the request's field \"identifier\"", name, msg)
		}
	}
}

func startsWithField(msg string) bool {
	const f = "identifier"
	return len(msg) >= len(f) && msg[:len(f)] == f && (len(msg) == len(f) || msg[len(f)] != 's')
}
