package platform_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/clocktest"
	"github.com/membercenter/membercenter/services/identity"
	"github.com/membercenter/membercenter/services/platform"
	"github.com/membercenter/membercenter/services/platform/platformtest"
)

// With MC_KEYSTORE_URL the members' data keys live in a database of their
// own: the member's key is made there (none in the platform's database),
// its identifier is sealed under it, and an erasure shreds it there.
func TestKeyStoreInADatabaseApart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	keysURL := pgtest.NewDB(t)
	keysDB, err := pgx.Connect(ctx, keysURL)
	if err != nil {
		t.Fatal(err)
	}
	defer keysDB.Close(ctx)
	// A database the platform's migrations never ran on: only the key
	// store's table, made by MigrateKeyStore.
	if _, err := keysDB.Exec(ctx, `DROP SCHEMA public CASCADE; CREATE SCHEMA public`); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, pgtest.NewDB(t), "membercenter-platform-test")
	cfg.KeyStore = postgres.KeyStoreConfig{URL: keysURL}
	e := platformtest.OpenT(t, cfg, io.Discard)
	for range 2 { // idempotent
		if err := postgres.MigrateKeyStore(ctx, e.P.KeyStore()); err != nil {
			t.Fatal(err)
		}
	}
	r := platformtest.StartT(t, e.P, platform.Options{Services: []string{"identity", "profile"}, Now: clocktest.New().Now})
	res, err := mcv1.NewIdentityServiceClient(r.Conn).Resolve(ctx, &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_POS, CreateIfMissing: true,
		IdempotencyKey: "keys-apart", Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: "13755556666"}}})
	if err != nil {
		t.Fatal(err)
	}
	member := uuid.MustParse(res.GetMemberId())
	var kid string
	if err := e.P.Pool().QueryRow(ctx, `SELECT key_id FROM member_identifiers WHERE member_id = $1`, member).Scan(&kid); err != nil || kid != identity.MemberKeyID(member) {
		t.Fatalf("identifier sealed under %q (%v), want the member's data key", kid, err)
	}
	count := func(q postgres.Querier, sql string) int {
		t.Helper()
		var n int
		if err := q.QueryRow(ctx, sql, member).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	const live = `SELECT count(*) FROM member_keys WHERE member_id = $1 AND wrapped IS NOT NULL`
	if inMain, inStore := count(e.P.Pool(), live), count(keysDB, live); inMain != 0 || inStore != 1 {
		t.Fatalf("member keys: %d in the platform's database, %d in the key store; want 0 and 1", inMain, inStore)
	}
	resp, err := mcv1.NewProfileServiceClient(r.Conn).EraseMember(ctx, &mcv1.EraseMemberRequest{MemberId: member.String(), Reason: "DSR-keys-apart", IdempotencyKey: "erase"})
	if err != nil || resp.GetPostgresRows()["member_keys"] != 1 {
		t.Fatalf("EraseMember: %v, %v", resp, err)
	}
	if n := count(keysDB, `SELECT count(*) FROM member_keys WHERE member_id = $1 AND wrapped IS NULL AND shredded_at IS NOT NULL`); n != 1 {
		t.Errorf("%d shredded key rows in the key store, want 1", n)
	}
}
