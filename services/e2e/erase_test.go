package e2e_test

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/ingest"
	"github.com/membercenter/membercenter/pipeline/sink"
	"github.com/membercenter/membercenter/services/identity"
	"github.com/membercenter/membercenter/services/identity/identitytest"
)

// EraseMember, end to end: a member with identifiers, PII attributes,
// consents, purchases and a member merged into it is erased; afterwards no
// raw value, keyed hash or ciphertext of theirs is in any PostgreSQL column
// or ClickHouse table, the change stream announced the erasure, the member
// is not found, the same phone makes a new member, and the ledger is kept
// under the (now pseudonymous) id.
func TestEraseMemberLeavesNothingReadable(t *testing.T) {
	e := start(t)
	ctx := within(t, 120*time.Second)
	stream := e.subscribe(t, ctx, &mcv1.SubscribeRequest{})
	ids := mcv1.NewIdentityServiceClient(e.conn)
	profiles := mcv1.NewProfileServiceClient(e.conn)

	const phone, mail, other = "13722228888", "Erase.Me@Example.com", "13722229999"
	events := []*mcv1.ChannelEvent{
		{EventId: "erase-1", Channel: mcv1.Channel_CHANNEL_APP, OccurredAt: timestamppb.New(lastWednesdayNoon()),
			Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: phone}, {Type: mcv1.IdentifierType_IDENTIFIER_TYPE_EMAIL, Value: mail}},
			Payload:     &mcv1.ChannelEvent_SignUp{SignUp: &mcv1.SignUp{City: "Suzhou", Gender: "f"}}},
		{EventId: "erase-2", Channel: mcv1.Channel_CHANNEL_POS, StoreId: "S1", OccurredAt: timestamppb.New(lastWednesdayNoon()),
			Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: phone}},
			Payload:     &mcv1.ChannelEvent_Transaction{Transaction: &mcv1.Transaction{OrderId: "O-erase-1", Total: &mcv1.Money{Currency: "CNY", AmountMinor: 12000}}}},
	}
	for _, ev := range events {
		e.publishEvent(t, ctx, phone, ev)
	}
	var member string
	for member == "" {
		if c := nextChange(t, stream); c.GetPointsChanged() != nil {
			member = c.GetMemberId()
		}
	}
	// An account the member was merged into by mistake, the merge undone:
	// that account's changes of the merge and the unmerge list the
	// member's identifiers; they stay its own, blanked, after the erasure.
	partner := e.createMember(t, ctx, mcv1.Channel_CHANNEL_POS, "erase-partner", "13722226666", "")
	mistake, err := ids.Merge(ctx, &mcv1.MergeRequest{SourceMemberId: member, TargetMemberId: partner, Reason: "same person?", IdempotencyKey: "erase-mistake"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ids.Unmerge(ctx, &mcv1.UnmergeRequest{MergeId: mistake.GetMergeId(), Reason: "two people", IdempotencyKey: "erase-unmerge"}); err != nil {
		t.Fatal(err)
	}
	partnerChanges := `SELECT count() FROM member_changes FINAL WHERE member_id = ? AND change_type = 'identity_changed' AND position(payload, ?) > 0`
	if _, err := profiles.UpdateAttributes(ctx, &mcv1.UpdateAttributesRequest{MemberId: member, IdempotencyKey: "erase-attrs",
		Attributes: map[string]string{"mobile": "136 2222 7777", "name": "Erase Me Fully", "birth_date": "1991-02-03"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := profiles.SetConsent(ctx, &mcv1.SetConsentRequest{MemberId: member, Purpose: mcv1.ConsentPurpose_CONSENT_PURPOSE_MARKETING,
		Granted: false, IdempotencyKey: "erase-consent"}); err != nil {
		t.Fatal(err)
	}
	// A second account of the same person, merged into the first.
	folded := e.createMember(t, ctx, mcv1.Channel_CHANNEL_POS, "erase-other", other, "")
	if _, err := ids.Merge(ctx, &mcv1.MergeRequest{SourceMemberId: folded, TargetMemberId: member, Reason: "same person", IdempotencyKey: "erase-merge"}); err != nil {
		t.Fatal(err)
	}

	// Everything in ClickHouse, and the values to look for afterwards:
	// the raw ones, and the keyed hashes and ciphertexts PostgreSQL holds.
	eventually(t, "the member's changes and profile in ClickHouse", func() (bool, error) {
		var unpublished, changes, profilesRows, naming uint64
		if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM outbox_pending`).Scan(&unpublished); err != nil {
			return false, err
		}
		if err := e.ch.QueryRow(ctx, partnerChanges, partner, member).Scan(&naming); err != nil || naming < 2 {
			return false, err
		}
		if err := e.ch.QueryRow(ctx, `SELECT count() FROM member_changes FINAL WHERE member_id = ?`, member).Scan(&changes); err != nil {
			return false, err
		}
		if err := e.ch.QueryRow(ctx, `SELECT count() FROM member_profiles WHERE member_id = ?`, member).Scan(&profilesRows); err != nil {
			return false, err
		}
		return unpublished == 0 && changes >= 5 && profilesRows > 0, nil
	})
	needles := []string{phone, "8613722228888", "Erase.Me", "erase.me", "13622227777", "Erase Me Fully", other}
	var hashes, ciphers [][]byte
	// A backup taken now: the member's PII ciphertexts, each under the data
	// key of the member that sealed it. They open now; after the erasure
	// they must not, wherever a copy of them is.
	type sealed struct {
		ct, hash []byte
		kid      string
	}
	var backup []sealed
	rows, err := e.pool.Query(ctx, `SELECT value_hash, coalesce(value_cipher, ''::bytea), coalesce(key_id, '') FROM member_identifiers WHERE member_id = ANY($1)`,
		[]uuid.UUID{uuid.MustParse(member), uuid.MustParse(folded)})
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var h, c []byte
		var kid string
		if err := rows.Scan(&h, &c, &kid); err != nil {
			t.Fatal(err)
		}
		hashes, ciphers = append(hashes, h), append(ciphers, c)
		if len(c) > 0 {
			backup = append(backup, sealed{c, h, kid})
		}
	}
	rows.Close()
	var attrs map[string]string
	if err := e.pool.QueryRow(ctx, `SELECT attributes FROM members WHERE member_id = $1`, member).Scan(&attrs); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"mobile", "name"} {
		f := strings.SplitN(attrs[k], ":", 6) // pii:v1:<key id>:<hash>:<ciphertext>:<masked>
		if len(f) != 6 {
			t.Fatalf("attributes[%s] stored as %q, want sealed", k, attrs[k])
		}
		h, err1 := base64.RawURLEncoding.DecodeString(f[3])
		c, err2 := base64.RawURLEncoding.DecodeString(f[4])
		if err1 != nil || err2 != nil {
			t.Fatalf("attributes[%s]: %v %v", k, err1, err2)
		}
		backup = append(backup, sealed{c, h, f[2]})
	}
	keys := identitytest.Keys(t, e.pool) // the platform's keys (the development ones here)
	// A purchase of the member's that ingest refuses (the programme runs in
	// CNY): its dead letter, raw phone inside, is sealed under the member's
	// key, and is part of the backup.
	e.publishEvent(t, ctx, phone, &mcv1.ChannelEvent{EventId: "erase-refused", Channel: mcv1.Channel_CHANNEL_POS, StoreId: "S1",
		OccurredAt: timestamppb.New(lastWednesdayNoon()), Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: phone}},
		Payload: &mcv1.ChannelEvent_Transaction{Transaction: &mcv1.Transaction{OrderId: "O-erase-usd", Total: &mcv1.Money{Currency: "USD", AmountMinor: 1000}}}})
	var refused *dlq.Letter
	for _, r := range readTopic(t, ctx, e.cfg.Kafka.Brokers, e.cfg.Kafka.Topics.DLQ, 1, time.Second) {
		if l := dlq.Parse(r); l.Stage == ingest.Stage {
			refused = &l
		}
	}
	if refused == nil || refused.SealedKeyID != identity.MemberKeyID(uuid.MustParse(member)) {
		t.Fatalf("the refused purchase's dead letter: %+v; want it sealed under the member's key", refused)
	}
	if opened := *refused; opened.Open(keys) != nil || !strings.Contains(string(opened.Record.Value), phone) {
		t.Fatalf("the refused purchase's dead letter does not open before the erasure")
	}
	for _, b := range backup {
		if !identity.IsMemberKey(b.kid) {
			t.Errorf("a ciphertext under %q, not under a member's data key", b.kid)
		}
		if _, err := keys.Reveal(ctx, b.ct, b.kid, b.hash); err != nil {
			t.Fatalf("before the erasure a ciphertext under %s does not open: %v", b.kid, err)
		}
	}
	if len(hashes) < 3 {
		t.Fatalf("%d identifiers stored before the erasure, want the two phones and the e-mail", len(hashes))
	}
	for _, h := range hashes {
		needles = append(needles, hex.EncodeToString(h))
	}
	var ledgerBefore int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM ledger_transactions WHERE member_id = $1`, member).Scan(&ledgerBefore); err != nil || ledgerBefore == 0 {
		t.Fatalf("ledger before the erasure: %d, %v", ledgerBefore, err)
	}

	req := &mcv1.EraseMemberRequest{MemberId: folded, Reason: "DSR-2026-0042", IdempotencyKey: "erase-1"}
	resp, err := profiles.EraseMember(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetMemberId() != member || !slices.Equal(resp.GetMergedMemberIds(), []string{folded}) || resp.GetPostgresRows()["member_identifiers"] < 3 ||
		resp.GetPostgresRows()["member_keys"] != 2 || resp.GetPostgresRows()["outbox_others"] != 2 {
		t.Errorf("EraseMember of the merged id answered %v", resp)
	}
	// Crypto-shredding: the backup's ciphertexts and the dead letter no
	// longer open, in a process that never held the keys as in one that did.
	if err := refused.Open(keys); !errors.Is(err, postgres.ErrKeyShredded) {
		t.Errorf("the refused purchase's dead letter after the erasure: %v; want ErrKeyShredded", err)
	}
	fresh := identitytest.Keys(t, e.pool)
	for _, b := range backup {
		for _, k := range []*identity.PII{keys, fresh} {
			if v, err := k.Reveal(ctx, b.ct, b.kid, b.hash); !errors.Is(err, postgres.ErrKeyShredded) {
				t.Errorf("after the erasure a ciphertext under %s: %q, %v; want ErrKeyShredded", b.kid, v, err)
			}
		}
	}
	for {
		c := nextChange(t, stream)
		if er := c.GetMemberErased(); er != nil {
			if c.GetMemberId() != member || !slices.Equal(er.GetMergedMemberIds(), []string{folded}) {
				t.Errorf("erasure announced as %v", c)
			}
			break
		}
	}
	// ClickHouse follows the change: only the erasure's own row is left.
	eventually(t, "the member's rows gone from ClickHouse", func() (bool, error) {
		for _, q := range []string{
			`SELECT count() FROM member_changes WHERE member_id IN (?, ?) AND change_type != 'member_erased'`,
			`SELECT count() FROM label_changes WHERE member_id IN (?, ?)`,
			`SELECT count() FROM identity_audit WHERE member_id IN (?, ?)`,
			`SELECT count() FROM member_profiles WHERE member_id IN (?, ?)`,
		} {
			var n uint64
			if err := e.ch.QueryRow(ctx, q, member, folded).Scan(&n); err != nil {
				return false, err
			}
			if n > 0 {
				return false, nil
			}
		}
		return true, nil
	})
	// The sink acknowledged the erasure's batch (its erasure finished, it is
	// not retrying it): its group's committed offset is past the change.
	var erasedAt *kgo.Record
	for _, r := range readTopic(t, ctx, e.cfg.Kafka.Brokers, e.cfg.Kafka.Topics.MemberChanges, 1, time.Second) {
		var ch mcv1.MemberChange
		if proto.Unmarshal(r.Value, &ch) == nil && ch.GetMemberErased() != nil {
			erasedAt = r
		}
	}
	if erasedAt == nil {
		t.Fatal("no MemberErased change on the change stream")
	}
	adm := kadm.NewClient(e.kafka.Client)
	eventually(t, "the sink past the erasure", func() (bool, error) {
		offsets, err := adm.FetchOffsets(ctx, e.cfg.Kafka.Group(sink.Stage))
		if err != nil {
			return false, err
		}
		o, ok := offsets.Lookup(erasedAt.Topic, erasedAt.Partition)
		return ok && o.At > erasedAt.Offset, nil
	})
	// … by erasing, not by giving the change up as a dead letter.
	for _, r := range readTopic(t, ctx, e.cfg.Kafka.Brokers, e.cfg.Kafka.Topics.DLQ, 0, time.Second) {
		if l := dlq.Parse(r); l.Stage == sink.Stage {
			t.Errorf("the sink dead-lettered %s/%d@%d: %s", l.Topic, l.Partition, l.Offset, l.Reason)
		}
	}
	// The partner keeps its changes of the mistaken merge and its undoing,
	// naming the member (the scan below finds nothing else of it there).
	var naming uint64
	if err := e.ch.QueryRow(ctx, partnerChanges, partner, member).Scan(&naming); err != nil || naming != 2 {
		t.Errorf("the partner's identity changes naming the erased member: %d, %v; want the merge and the unmerge", naming, err)
	}
	var erasedRows uint64
	if err := e.ch.QueryRow(ctx, `SELECT count() FROM member_changes FINAL WHERE member_id = ? AND change_type = 'member_erased'`, member).Scan(&erasedRows); err != nil || erasedRows != 1 {
		t.Errorf("member_erased rows in ClickHouse: %d, %v", erasedRows, err)
	}

	// No raw value, hash or ciphertext anywhere in ClickHouse or PostgreSQL.
	chTables := []string{"member_changes", "label_changes", "identity_audit", "member_profiles", "member_events"}
	for _, table := range chTables {
		for _, row := range dumpCH(t, ctx, e, table) {
			for _, n := range needles {
				if strings.Contains(row, n) {
					t.Errorf("ClickHouse %s holds %q after the erasure: %s", table, n, row)
				}
			}
		}
	}
	cols := scannableColumns(t, ctx, e)
	for _, c := range cols {
		for _, n := range needles {
			if hits := countIn(t, ctx, e, c, []byte(n)); hits > 0 {
				t.Errorf("PostgreSQL %s.%s holds %q in %d rows after the erasure", c.table, c.column, n, hits)
			}
		}
		if c.typ != "bytea" {
			continue
		}
		for _, b := range append(slices.Clone(hashes), ciphers...) {
			if len(b) == 0 {
				continue
			}
			if hits := countIn(t, ctx, e, c, b); hits > 0 {
				t.Errorf("PostgreSQL %s.%s holds a hash or ciphertext of the member in %d rows", c.table, c.column, hits)
			}
		}
	}

	// The member is gone for every API; the phone makes a new member; the
	// ledger stays under the id.
	for _, id := range []string{member, folded} {
		if _, err := profiles.GetProfile(ctx, &mcv1.GetProfileRequest{MemberId: id}); status.Code(err) != codes.NotFound {
			t.Errorf("GetProfile of erased %s: %v", id, err)
		}
	}
	if _, err := ids.GetIdentityGraph(ctx, &mcv1.GetIdentityGraphRequest{MemberId: member}); status.Code(err) != codes.NotFound {
		t.Errorf("GetIdentityGraph of the erased member: %v; want NotFound", err)
	}
	if again := e.createMember(t, ctx, mcv1.Channel_CHANNEL_POS, "erase-after", phone, ""); again == member || again == folded {
		t.Errorf("the erased member's phone resolves to the erased member %s", again)
	}
	var ledgerAfter int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM ledger_transactions WHERE member_id = $1`, member).Scan(&ledgerAfter); err != nil || ledgerAfter != ledgerBefore {
		t.Errorf("ledger transactions %d → %d (%v): the ledger is kept", ledgerBefore, ledgerAfter, err)
	}
	// A retry answers the same; a new request finds no member.
	if retry, err := profiles.EraseMember(ctx, req); err != nil || retry.GetMemberId() != member {
		t.Errorf("retry: %v, %v", retry, err)
	}
	if _, err := profiles.EraseMember(ctx, &mcv1.EraseMemberRequest{MemberId: member, Reason: "again", IdempotencyKey: "erase-2"}); status.Code(err) != codes.NotFound {
		t.Errorf("erasing an erased member: %v", err)
	}
	if _, err := profiles.EraseMember(ctx, &mcv1.EraseMemberRequest{MemberId: member, IdempotencyKey: "erase-3"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("an erasure without a reason: %v", err)
	}
	// The audit says who erased whom and why.
	var actor, reason string
	if err := e.pool.QueryRow(ctx, `SELECT actor, detail->>'reason' FROM operator_audit WHERE member_id = $1 AND action = 'member.erased'`, member).Scan(&actor, &reason); err != nil || reason != "DSR-2026-0042" {
		t.Errorf("operator audit of the erasure: %q %q %v", actor, reason, err)
	}
}

type pgColumn struct{ table, column, typ string }

// scannableColumns lists every text, JSON, array and byte column of every
// table.
func scannableColumns(t *testing.T, ctx context.Context, e *env) []pgColumn {
	t.Helper()
	var cols []pgColumn
	var c pgColumn
	forEachRow(t, ctx, e.pool, []any{&c.table, &c.column, &c.typ}, func() { cols = append(cols, c) },
		`SELECT table_name, column_name, data_type FROM information_schema.columns
		WHERE table_schema = 'public' AND data_type IN ('text', 'jsonb', 'bytea', 'character varying', 'ARRAY')`)
	if len(cols) < 20 {
		t.Fatalf("only %d columns to scan", len(cols))
	}
	return cols
}

// countIn counts the rows of c's table whose c holds b.
func countIn(t *testing.T, ctx context.Context, e *env, c pgColumn, b []byte) int {
	t.Helper()
	q := fmt.Sprintf(`SELECT count(*) FROM %q WHERE position(convert_to($1, 'UTF8') IN convert_to(%q::text, 'UTF8')) > 0`, c.table, c.column)
	arg := any(string(b))
	if c.typ == "bytea" {
		q = fmt.Sprintf(`SELECT count(*) FROM %q WHERE position($1::bytea IN %q) > 0`, c.table, c.column)
		arg = b
	}
	var hits int
	if err := e.pool.QueryRow(ctx, q, arg).Scan(&hits); err != nil {
		t.Fatalf("scan %s.%s: %v", c.table, c.column, err)
	}
	return hits
}
