package profile_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/google/uuid"
	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/attributes"
	"github.com/membercenter/membercenter/services/identity"
	"github.com/membercenter/membercenter/services/identity/identitytest"
	"github.com/membercenter/membercenter/services/profile"
)

// rawIn returns where any of needles appears in the rows PostgreSQL holds
// for the member: its row, its idempotency records and its outbox changes.
func (f fixture) rawIn(t *testing.T, member string, needles ...string) []string {
	t.Helper()
	rows, err := f.pool.Query(context.Background(), `
		SELECT 'members', convert_to(m::text, 'UTF8') FROM members m WHERE member_id = $1
		UNION ALL SELECT 'idempotency_keys', response FROM idempotency_keys
		UNION ALL SELECT 'outbox', payload FROM outbox WHERE member_id = $1`, member)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var found []string
	n := 0
	for rows.Next() {
		var table string
		var blob []byte
		if err := rows.Scan(&table, &blob); err != nil {
			t.Fatal(err)
		}
		n++
		for _, s := range needles {
			if bytes.Contains(blob, []byte(s)) {
				found = append(found, table+" holds "+s)
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n < 3 {
		t.Fatalf("%d rows read: the scan found nothing to look at", n)
	}
	return found
}

// PII attributes are sealed where they are stored and masked where they are
// shown: the raw values are nowhere in PostgreSQL, the response or the
// change; a retry and a rewrite of the same value change nothing.
func TestPIIAttributesAreSealedAndMasked(t *testing.T) {
	f := newFixture(t)
	c := ctxT(t)
	m := f.member(t)
	req := &mcv1.UpdateAttributesRequest{MemberId: m, IdempotencyKey: "pii-1", Attributes: map[string]string{
		"mobile": "137 1234 9876", "contact_email": "Wei.Zhang.Attr@Example.com", "name": "Zhang Weiwei", "city": "Suzhou"}}
	resp, err := f.srv.UpdateAttributes(c, req)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"mobile": "+8613*******76", "contact_email": "W***@example.com", "name": "Z***", "city": "Suzhou"}
	for k, v := range want {
		if got := resp.GetProfile().GetAttributes()[k]; got != v {
			t.Errorf("response attributes[%s] = %q, want %q", k, got, v)
		}
	}
	got, err := f.getProfile(t, c, m)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&mcv1.Profile{Attributes: got.GetProfile().GetAttributes()}, &mcv1.Profile{Attributes: want}) {
		t.Errorf("GetProfile attributes %v, want %v", got.GetProfile().GetAttributes(), want)
	}
	needles := []string{"13712349876", "Wei.Zhang.Attr", "wei.zhang.attr", "Zhang Weiwei"}
	if found := f.rawIn(t, m, needles...); len(found) > 0 {
		t.Errorf("raw PII stored: %v", found)
	}
	// The change says what changed, masked.
	rows, err := f.pool.Query(c, `SELECT payload FROM outbox WHERE member_id = $1`, m)
	if err != nil {
		t.Fatal(err)
	}
	var changed *mcv1.AttributesChanged
	for rows.Next() {
		var payload []byte
		var ch mcv1.MemberChange
		if err := rows.Scan(&payload); err != nil {
			t.Fatal(err)
		}
		if err := proto.Unmarshal(payload, &ch); err != nil {
			t.Fatal(err)
		}
		if ch.GetAttributesChanged() != nil {
			changed = ch.GetAttributesChanged()
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if a := changed.GetAttributes(); a["mobile"] != want["mobile"] || a["contact_email"] != want["contact_email"] || a["city"] != "Suzhou" {
		t.Errorf("change attributes %v", a)
	}

	// A retry answers the same; the same values under a new key (in
	// another form) change nothing; a new value does.
	before := f.counts(t)
	if again, err := f.srv.UpdateAttributes(c, req); err != nil || again.GetProfile().GetSequence() != resp.GetProfile().GetSequence() {
		t.Fatalf("retry: %v, sequence %d → %d", err, resp.GetProfile().GetSequence(), again.GetProfile().GetSequence())
	}
	same, err := f.srv.UpdateAttributes(c, &mcv1.UpdateAttributesRequest{MemberId: m, IdempotencyKey: "pii-2",
		Attributes: map[string]string{"mobile": "+86 137-1234-9876", "contact_email": "Wei.Zhang.Attr@example.COM"}})
	if err != nil || same.GetProfile().GetSequence() != resp.GetProfile().GetSequence() {
		t.Fatalf("same values: %v, sequence %d → %d", err, resp.GetProfile().GetSequence(), same.GetProfile().GetSequence())
	}
	if after := f.counts(t); after[0] != before[0] {
		t.Errorf("same values wrote a change: outbox %d → %d", before[0], after[0])
	}
	moved, err := f.srv.UpdateAttributes(c, &mcv1.UpdateAttributesRequest{MemberId: m, IdempotencyKey: "pii-3",
		Attributes: map[string]string{"mobile": "13900001111", "name": ""}})
	if err != nil {
		t.Fatal(err)
	}
	if a := moved.GetProfile().GetAttributes(); a["mobile"] != "+8613*******11" || a["name"] != "" || moved.GetProfile().GetSequence() == resp.GetProfile().GetSequence() {
		t.Errorf("after a new mobile and the name removed: %v", a)
	}
	if found := f.rawIn(t, m, append(needles, "13900001111")...); len(found) > 0 {
		t.Errorf("raw PII stored: %v", found)
	}
}

// An attribute the schema does not declare, or a value not of its type, is
// refused with InvalidArgument naming it; the whole request changes nothing
// and a PII value is not echoed.
func TestUndeclaredOrMistypedAttributesAreRefused(t *testing.T) {
	f := newFixture(t)
	c := ctxT(t)
	m := f.member(t)
	before := f.counts(t)
	for _, tc := range []struct {
		attrs map[string]string
		want  string
	}{
		{map[string]string{"city": "Suzhou", "favourite_colour": "red"}, "attributes[favourite_colour] (declared: "},
		{map[string]string{"city": "Suzhou", "mobile": "call 13712349876 now"}, "attributes[mobile]: the value is not a phone number"},
		{map[string]string{"contact_email": "wei.zhang.attr(at)example.com"}, "attributes[contact_email]: the value is not an e-mail address"},
		{map[string]string{"gender": strings.Repeat("f", 17)}, "attributes[gender]: 17 characters, at most 16"},
	} {
		_, err := f.srv.UpdateAttributes(c, &mcv1.UpdateAttributesRequest{MemberId: m, Attributes: tc.attrs, IdempotencyKey: "bad"})
		if !errors.Is(err, profile.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v; want InvalidArgument with %q", tc.attrs, err, tc.want)
		}
		if err != nil && (strings.Contains(err.Error(), "13712349876") || strings.Contains(err.Error(), "wei.zhang.attr")) {
			t.Errorf("the refusal echoes a PII value: %v", err)
		}
	}
	if after := f.counts(t); after != before {
		t.Errorf("refused requests changed rows: %v → %v", before, after)
	}
	// An attribute stored before the schema declared it can be removed.
	if _, err := f.pool.Exec(c, `UPDATE members SET attributes = '{"legacy_phone": "13712349876"}' WHERE member_id = $1`, m); err != nil {
		t.Fatal(err)
	}
	resp, err := f.srv.UpdateAttributes(c, &mcv1.UpdateAttributesRequest{MemberId: m, Attributes: map[string]string{"legacy_phone": ""}, IdempotencyKey: "clean"})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetProfile().GetAttributes()) != 0 {
		t.Errorf("after removing the legacy attribute: %v", resp.GetProfile().GetAttributes())
	}
}

// Attributes stored before the schema declared them PII, and values sealed
// under a platform key before members had data keys, are sealed by
// SealAttributes under their member's data key; what the API shows stays
// the masked value, and nothing else is touched. Shredding the member's
// key then leaves a copy of the stored value unreadable.
func TestSealAttributesSealsLegacyValuesUnderMemberKeys(t *testing.T) {
	f := newFixture(t)
	c := ctxT(t)
	platform, err := identity.NewPII(identity.DevKeys) // no key store: seals under the platform key
	if err != nil {
		t.Fatal(err)
	}
	keys := identitytest.Keys(t, f.pool)
	m := f.member(t)
	email, _ := attributes.Default().Lookup("contact_email")
	old, err := attributes.Seal(platform, email, "seal.me@example.com")
	if err != nil {
		t.Fatal(err)
	}
	legacy := f.member(t)
	for id, attrs := range map[string]string{
		m:      `{"contact_email": "` + old + `", "city": "Suzhou"}`,
		legacy: `{"mobile": "137 1234 9876", "name": "Legacy Name", "city": "Wuxi"}`,
	} {
		if _, err := f.pool.Exec(c, `UPDATE members SET attributes = $2::jsonb WHERE member_id = $1`, id, attrs); err != nil {
			t.Fatal(err)
		}
	}
	f.svc.SetAttributes(attributes.Default(), keys)
	n, err := f.svc.SealAttributes(c, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("%d members sealed, want the two", n)
	}
	stored := func(id string) map[string]string {
		var a map[string]string
		if err := f.pool.QueryRow(c, `SELECT attributes FROM members WHERE member_id = $1`, id).Scan(&a); err != nil {
			t.Fatal(err)
		}
		return a
	}
	backup := map[string]string{}
	for id, want := range map[string]map[string]string{
		m:      {"contact_email": "seal.me@example.com"},
		legacy: {"mobile": "+8613712349876", "name": "Legacy Name"},
	} {
		a := stored(id)
		for k, raw := range want {
			if !strings.HasPrefix(a[k], "pii:v1:"+identity.MemberKeyID(uuid.MustParse(id))+":") {
				t.Errorf("member %s attributes[%s] stored as %q, want sealed under the member's data key", id, k, a[k])
			}
			if got, err := attributes.Open(c, keys, a[k]); err != nil || got != raw {
				t.Errorf("member %s attributes[%s] opens to %q, %v", id, k, got, err)
			}
			backup[id+"/"+k] = a[k]
		}
	}
	if a := stored(legacy); a["city"] != "Wuxi" {
		t.Errorf("a personal attribute changed: %v", a)
	}
	p, err := f.getProfile(t, c, legacy)
	if err != nil {
		t.Fatal(err)
	}
	if a := p.GetProfile().GetAttributes(); a["mobile"] != "+8613*******76" || a["name"] != "L***" || a["city"] != "Wuxi" {
		t.Errorf("legacy member shown as %v", a)
	}
	// A second run finds nothing to do.
	if n, err := f.svc.SealAttributes(c, 100, nil); err != nil || n != 0 {
		t.Errorf("second run: %d members, %v", n, err)
	}
	// Shredding the legacy member's key: the copies of its values no
	// longer open, in this process or another; the other member's still do.
	if _, err := keys.Shred(c, []uuid.UUID{uuid.MustParse(legacy)}, time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	other := identitytest.Keys(t, f.pool)
	for k, v := range backup {
		_, err1 := attributes.Open(c, keys, v)
		_, err2 := attributes.Open(c, other, v)
		if strings.HasPrefix(k, legacy) != (err1 != nil) || strings.HasPrefix(k, legacy) != (err2 != nil) {
			t.Errorf("%s after shredding the legacy member's key: opens with err %v / %v", k, err1, err2)
		}
		if strings.HasPrefix(k, legacy) && !errors.Is(err2, postgres.ErrKeyShredded) {
			t.Errorf("%s: %v, want ErrKeyShredded", k, err2)
		}
	}
}
