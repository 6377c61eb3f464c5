package profile_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/contract"

	"github.com/membercenter/membercenter/services/auth"
	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/facts"
	"github.com/membercenter/membercenter/services/identity"
	"github.com/membercenter/membercenter/services/profile"
)

// exportDoc is the export document as a reader parses it.
type exportDoc struct {
	Format     string                      `json:"format"`
	MemberID   string                      `json:"member_id"`
	ExportedAt string                      `json:"exported_at"`
	Members    []string                    `json:"members"`
	Postgres   map[string][]map[string]any `json:"postgres"`
	ClickHouse map[string][]map[string]any `json:"clickhouse"`
	Withheld   []struct {
		Table, Column, Reason string
	} `json:"withheld"`
	LeftOut map[string]string `json:"left_out"`
}

// A member with a phone, an e-mail (brought by a merged member), a sealed
// mobile attribute, a consent and a member code: the export holds both
// members, the raw phone, e-mail and mobile, rows of every table that has
// some, the ClickHouse events of both, and no hash, ciphertext or code
// secret; a merged member's id answers with the same document.
func TestExportMemberDataHoldsEverythingDecrypted(t *testing.T) {
	f := newFixture(t)
	c := ctxT(t)
	at := time.Date(2025, 3, 12, 4, 0, 0, 0, time.UTC)
	f.svc.SetClock(func() time.Time { return at })
	ch, _ := chtest.NewDB(t)
	f.svc.SetFacts(ch)
	ids, err := identity.New(identity.Config{DefaultRegion: "CN"}, f.pool, changes.Writer{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ids.SetClock(func() time.Time { return at })

	const phone, mail, mobile = "+8613712345601", "export.person@example.com", "+8613600005602"
	resolve := func(key string, id *mcv1.Identifier) string {
		r, err := ids.Resolve(c, &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_APP, CreateIfMissing: true, IdempotencyKey: key,
			Identifiers: []*mcv1.Identifier{id}})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetMemberId()
	}
	target := resolve("export-a", &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: phone})
	source := resolve("export-b", &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_EMAIL, Value: mail})
	other := resolve("export-c", &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: "+8613712345699"})
	if _, err := ids.Merge(c, &mcv1.MergeRequest{SourceMemberId: source, TargetMemberId: target, Reason: "same person", IdempotencyKey: "export-merge"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ids.IssueMemberCode(c, uuid.MustParse(target)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.srv.UpdateAttributes(c, &mcv1.UpdateAttributesRequest{MemberId: target, IdempotencyKey: "export-attrs",
		Attributes: map[string]string{"mobile": mobile, "city": "Suzhou"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.srv.SetConsent(c, &mcv1.SetConsentRequest{MemberId: target, IdempotencyKey: "export-consent",
		Purpose: mcv1.ConsentPurpose_CONSENT_PURPOSE_MARKETING, Granted: true}); err != nil {
		t.Fatal(err)
	}
	// Events in ClickHouse: one of each member, one of someone else.
	var evs []clickhouse.EventRow
	for i, m := range []string{target, source, other} {
		evs = append(evs, clickhouse.EventRow{EventID: "ev-" + m, MemberID: m, EventType: "transaction", Channel: "pos",
			OccurredAt: at.Add(-time.Duration(i) * time.Hour), IngestedAt: at, OrderID: "O-" + m, Currency: "CNY", AmountMinor: 4200})
	}
	if err := clickhouse.NewWriter(ch).InsertEvents(c, evs); err != nil {
		t.Fatal(err)
	}

	resp, err := f.srv.ExportMemberData(c, &mcv1.ExportMemberDataRequest{MemberId: source})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetMemberId() != target || !resp.GetExportedAt().AsTime().Equal(at) {
		t.Errorf("export of the merged member answered %s at %v; want %s at %v", resp.GetMemberId(), resp.GetExportedAt().AsTime(), target, at)
	}
	var doc exportDoc
	if err := json.Unmarshal([]byte(resp.GetDocument()), &doc); err != nil {
		t.Fatalf("document is not JSON: %v", err)
	}
	if doc.Format != profile.ExportFormat || doc.MemberID != target || doc.ExportedAt != "2025-03-12T04:00:00Z" {
		t.Errorf("document header %q %q %q", doc.Format, doc.MemberID, doc.ExportedAt)
	}
	if len(doc.Members) != 2 || doc.Members[0] != target || doc.Members[1] != source {
		t.Errorf("members %v; want [%s %s]", doc.Members, target, source)
	}
	for _, table := range []string{"members", "member_identifiers", "member_consents", "member_code_secrets", "merges", "identity_audit"} {
		if len(doc.Postgres[table]) == 0 {
			t.Errorf("no %s rows", table)
		}
	}
	if n := len(doc.Postgres["members"]); n != 2 {
		t.Errorf("%d members rows, want both members", n)
	}
	if _, ok := doc.LeftOut["outbox"]; !ok || doc.Postgres["outbox"] != nil {
		t.Errorf("outbox: left out %v, rows %v", doc.LeftOut, doc.Postgres["outbox"])
	}
	// Identifiers and attributes decrypted.
	values := map[string]bool{}
	for _, r := range doc.Postgres["member_identifiers"] {
		v, _ := r["value"].(string)
		values[v] = true
		if r["member_id"] != target {
			t.Errorf("identifier row of %v", r["member_id"])
		}
	}
	if !values[phone] || !values[mail] {
		t.Errorf("identifier values %v; want %s and %s", values, phone, mail)
	}
	var attrs map[string]any
	for _, r := range doc.Postgres["members"] {
		if r["member_id"] == target {
			attrs, _ = r["attributes"].(map[string]any)
		}
	}
	if attrs["mobile"] != mobile || attrs["city"] != "Suzhou" {
		t.Errorf("attributes %v; want mobile %s", attrs, mobile)
	}
	// No hash, ciphertext or secret, and nothing sealed left.
	if s := doc.Postgres["member_code_secrets"][0]["secret_cipher"]; s != "<withheld>" {
		t.Errorf("code secret shown as %v", s)
	}
	for _, s := range []string{`\\x`, "pii:v1:"} {
		if strings.Contains(resp.GetDocument(), s) {
			t.Errorf("document holds %q", s)
		}
	}
	withheld := map[string]bool{}
	for _, w := range doc.Withheld {
		withheld[w.Table+"."+w.Column] = w.Reason != ""
	}
	for _, col := range []string{"member_code_secrets.secret_cipher", "member_identifiers.value_hash", "member_identifiers.value_cipher"} {
		if !withheld[col] {
			t.Errorf("%s not listed as withheld with a reason: %v", col, doc.Withheld)
		}
	}
	// ClickHouse: both members' events, typed; nobody else's.
	got := map[string]bool{}
	for _, r := range doc.ClickHouse["member_events"] {
		got[r["member_id"].(string)] = true
		if r["amount_minor"] != float64(4200) || r["ingested_at"] != "2025-03-12T04:00:00Z" {
			t.Errorf("event row %v", r)
		}
	}
	if !got[target] || !got[source] || got[other] || len(got) != 2 {
		t.Errorf("ClickHouse events of %v; want %s and %s", got, target, source)
	}
	if strings.Contains(resp.GetDocument(), other) {
		t.Errorf("document names the other member %s", other)
	}

	// The canonical id answers with the same data.
	again, err := f.svc.ExportMemberData(c, uuid.MustParse(target))
	if err != nil {
		t.Fatal(err)
	}
	// … but for the audit of the first export, which it now holds.
	var first, second map[string]any
	if err := json.Unmarshal([]byte(resp.GetDocument()), &first); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(again.Document, &second); err != nil {
		t.Fatal(err)
	}
	audits := second["postgres"].(map[string]any)["operator_audit"].([]any)
	if len(audits) != 1 || audits[0].(map[string]any)["action"] != "member.exported" {
		t.Errorf("second export's operator_audit %v; want the first export", audits)
	}
	for _, d := range []map[string]any{first, second} {
		delete(d["postgres"].(map[string]any), "operator_audit")
		delete(d, "exported_at")
	}
	if a, b := fmt.Sprint(first), fmt.Sprint(second); a != b {
		t.Errorf("export by the canonical id differs from the export by the merged id")
	}
}

// An unknown member is NotFound; a malformed id is InvalidArgument; a
// process without ClickHouse refuses rather than answer with half the data.
func TestExportMemberDataRefusals(t *testing.T) {
	f := newFixture(t)
	c := ctxT(t)
	if _, err := f.srv.ExportMemberData(c, &mcv1.ExportMemberDataRequest{MemberId: f.member(t)}); !errors.Is(err, profile.ErrNoFacts) {
		t.Errorf("without ClickHouse: %v; want ErrNoFacts", err)
	}
	ch, _ := chtest.NewDB(t)
	f.svc.SetFacts(ch)
	if _, err := f.srv.ExportMemberData(c, &mcv1.ExportMemberDataRequest{MemberId: uuid.NewString()}); !errors.Is(err, postgres.ErrNotFound) {
		t.Errorf("unknown member: %v; want ErrNotFound", err)
	}
	if _, err := f.srv.ExportMemberData(c, &mcv1.ExportMemberDataRequest{MemberId: "not-a-uuid"}); !errors.Is(err, profile.ErrInvalid) {
		t.Errorf("bad id: %v; want ErrInvalid", err)
	}
	// A member with nothing but its row exports that row.
	m := f.member(t)
	d, err := f.svc.ExportMemberData(c, uuid.MustParse(m))
	if err != nil {
		t.Fatal(err)
	}
	var doc exportDoc
	if err := json.Unmarshal(d.Document, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Members) != 1 || len(doc.Postgres["members"]) != 1 || len(doc.Postgres["member_identifiers"]) != 0 || doc.ClickHouse == nil {
		t.Errorf("bare member's document %s", d.Document)
	}
	// Every export is in the operator audit: who read whose data, when.
	if _, err := f.svc.ExportMemberData(auth.WithActor(c, "backoffice/privacy-officer"), uuid.MustParse(m)); err != nil {
		t.Fatal(err)
	}
	actors := pgtest.Values[string](t, c, f.pool, `SELECT actor FROM operator_audit WHERE member_id = $1 AND action = 'member.exported' ORDER BY at`, m)
	if len(actors) != 2 || actors[1] != "backoffice/privacy-officer" {
		t.Errorf("exports audited as %v", actors)
	}
}

// A merge undone says the two were different people: the export of the
// target holds the merge and its audit, naming the source by its id and
// nothing else of it — not its phone (masked or hashed), its points, nor
// the name it lent the target (decrypted).
func TestExportShowsTheOtherSideOfAnUndoneMergeByIdOnly(t *testing.T) {
	f := newFixture(t)
	c := ctxT(t)
	at := time.Date(2025, 3, 12, 4, 0, 0, 0, time.UTC)
	f.svc.SetClock(func() time.Time { return at })
	ch, _ := chtest.NewDB(t)
	f.svc.SetFacts(ch)
	// The default rules, but two identifiers a member at most.
	def, err := os.ReadFile("../identity/rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	strict := strings.Replace(string(def), "max_identifiers: 100", "max_identifiers: 2", 1)
	rules := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(rules, []byte(strict), 0o600); err != nil || strict == string(def) {
		t.Fatalf("rules with max_identifiers 2: %v", err)
	}
	ids, err := identity.New(identity.Config{DefaultRegion: "CN", RulesPath: rules}, f.pool, changes.Writer{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ids.SetClock(func() time.Time { return at })
	resolve := func(key, phone string) (string, string) {
		r, err := ids.Resolve(c, &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_APP, CreateIfMissing: true, IdempotencyKey: key,
			Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: phone}}})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetMemberId(), r.GetLinked()[0].GetValueHash()
	}
	target, _ := resolve("undone-target", "13712345611")
	source, sourceHash := resolve("undone-source", "13712345612")
	const sourceMasked, sourceName = "137****5612", "Li Secret"
	if _, err := f.srv.UpdateAttributes(c, &mcv1.UpdateAttributesRequest{MemberId: source, IdempotencyKey: "undone-attrs",
		Attributes: map[string]string{"name": sourceName}}); err != nil {
		t.Fatal(err)
	}
	m, err := ids.Merge(c, &mcv1.MergeRequest{SourceMemberId: source, TargetMemberId: target, Reason: "same person?", IdempotencyKey: "undone-merge"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ids.Unmerge(c, &mcv1.UnmergeRequest{MergeId: m.GetMergeId(), Reason: "two people", IdempotencyKey: "undone-unmerge"}); err != nil {
		t.Fatal(err)
	}
	// The source gains an e-mail; then the two phones presented together
	// point at two members merge protection keeps apart (three identifiers
	// would be one too many): a conflict, recorded with both phones.
	if _, err := ids.Resolve(c, &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_APP, IdempotencyKey: "undone-mail",
		Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: "13712345612"},
			{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_EMAIL, Value: "undone@example.com"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ids.Resolve(c, &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_POS, CreateIfMissing: true, IdempotencyKey: "undone-both",
		Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: "13712345611"},
			{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: "13712345612"}}}); err != nil {
		t.Fatal(err)
	}
	if n := pgtest.Values[int](t, c, f.pool, `SELECT count(*)::int FROM identity_conflicts WHERE $1 = ANY(member_ids) AND identifiers::text LIKE '%' || $2 || '%'`,
		uuid.MustParse(target), sourceMasked); n[0] != 1 {
		t.Fatalf("%d conflicts of the target listing the source's phone; want 1", n[0])
	}
	// The change stream as the sink copies it to ClickHouse (changes, and
	// the identity audit derived from them).
	var stream []contract.FactChange
	for _, p := range pgtest.Values[[]byte](t, c, f.pool, `SELECT payload FROM outbox ORDER BY outbox_id`) {
		m := &mcv1.MemberChange{}
		if err := proto.Unmarshal(p, m); err != nil {
			t.Fatal(err)
		}
		stream = append(stream, contract.FactChange{Msg: m})
	}
	if err := (facts.Writer{W: clickhouse.NewWriter(ch), Now: func() time.Time { return at }}).WriteChanges(c, stream); err != nil {
		t.Fatal(err)
	}

	d, err := f.svc.ExportMemberData(c, uuid.MustParse(target))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(d.Document)
	for _, s := range []string{sourceName, sourceMasked, sourceHash} {
		if strings.Contains(doc, s) {
			i := strings.Index(doc, s)
			t.Errorf("the export of %s holds %q of the member unmerged from it: …%s…", target, s, doc[max(0, i-300):min(len(doc), i+100)])
		}
	}
	var parsed exportDoc
	if err := json.Unmarshal(d.Document, &parsed); err != nil {
		t.Fatal(err)
	}
	if len(parsed.Members) != 1 || len(parsed.Postgres["merges"]) != 1 || parsed.Postgres["merges"][0]["source_member_id"] != source {
		t.Errorf("members %v, merges %v; want the target alone, and the merge naming the source", parsed.Members, parsed.Postgres["merges"])
	}
	// The target's own record stays whole.
	if !strings.Contains(doc, "137****5611") {
		t.Errorf("the export lost the target's own phone")
	}
	for _, db := range []map[string][]map[string]any{parsed.Postgres, parsed.ClickHouse} {
		if len(db["identity_audit"]) < 4 {
			t.Errorf("identity_audit rows %v; want the create, the merge and the unmerge on both sides", db["identity_audit"])
		}
	}
	// The rows naming the source are there, by its id; what they hold of
	// it is withheld.
	naming := 0
	for _, r := range parsed.ClickHouse["member_changes"] {
		switch p, _ := r["payload"].(string); {
		case p == "<withheld>":
			naming++
		case strings.Contains(p, source):
			t.Errorf("a change naming the source is exported as it is: %s", p)
		}
	}
	if naming < 3 || len(parsed.Postgres["identity_conflicts"]) != 1 || parsed.Postgres["identity_conflicts"][0]["identifiers"] != "<withheld>" {
		t.Errorf("%d identity changes naming the source in ClickHouse (want the merge, the unmerge and the conflict), conflicts %v",
			naming, parsed.Postgres["identity_conflicts"])
	}
}
