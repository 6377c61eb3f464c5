package postgres_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

// auditAt is when the records here are made: any instant, nothing reads it.
var auditAt = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

// TestAuditTablesAreAppendOnly: operator_audit, identity_audit and
// config_audit take new records and refuse every UPDATE and DELETE, and
// config_audit every TRUNCATE, even the table owner's
// (insufficient_privilege); the others' TRUNCATE and DROP are left to the
// owner role, which the services do not run as (deploy/postgres/roles.sql,
// docs/security.md).
func TestAuditTablesAreAppendOnly(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPool(t, nil)
	member := newMemberAt(t, pool, auditAt)
	if err := postgres.InsertOperatorAudit(ctx, pool, postgres.OperatorAudit{AuditID: uuid.Must(uuid.NewV7()), At: auditAt,
		Actor: "backoffice/alice", Action: "coupon.issued", MemberID: member, CauseID: "rpc:x"}); err != nil {
		t.Fatal(err)
	}
	if err := postgres.InsertConfigAudit(ctx, pool, postgres.ConfigAudit{AuditID: uuid.Must(uuid.NewV7()), At: auditAt,
		Actor: "cli/alice", Action: "program.loaded", Document: postgres.Programme, Version: "v1", SHA256: strings.Repeat("ab", 32)}); err != nil {
		t.Fatal(err)
	}
	if err := postgres.InsertAudit(ctx, pool, postgres.AuditRow{AuditID: uuid.Must(uuid.NewV7()), At: auditAt, Action: "link",
		Actor: "backoffice/alice", MemberID: member, CauseID: "rpc:y"}); err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{
		`UPDATE operator_audit SET actor = 'someone else'`,
		`DELETE FROM operator_audit`,
		`UPDATE config_audit SET actor = 'someone else'`,
		`DELETE FROM config_audit`,
		`UPDATE identity_audit SET actor = 'someone else'`,
		`DELETE FROM identity_audit`,
		`TRUNCATE config_audit CASCADE`,
	} {
		_, err := pool.Exec(ctx, stmt)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "42501" || !strings.Contains(pe.Message, "append-only") {
			t.Errorf("%s: %v; want insufficient_privilege, append-only", stmt, err)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM operator_audit WHERE actor = 'backoffice/alice')
		+ (SELECT count(*) FROM config_audit WHERE actor = 'cli/alice')
		+ (SELECT count(*) FROM identity_audit WHERE actor = 'backoffice/alice')`).Scan(&n); err != nil || n != 3 {
		t.Errorf("records after the refused statements: %d, %v; want 3", n, err)
	}
	// A configuration record without an actor, or with a malformed hash,
	// is refused.
	for _, bad := range []postgres.ConfigAudit{
		{Actor: "", SHA256: strings.Repeat("ab", 32)},
		{Actor: "cli/bob", SHA256: "not-a-hash"},
	} {
		bad.AuditID, bad.At, bad.Action, bad.Document, bad.Version = uuid.Must(uuid.NewV7()), auditAt, "catalog.loaded", postgres.Catalogue, "c1"
		if err := postgres.InsertConfigAudit(ctx, pool, bad); err == nil {
			t.Errorf("config audit %+v accepted", bad)
		}
	}
}

// TestAuditRecordsAreQueuedForClickHouse: every operator and configuration
// audit record is queued by the statement that writes it, read back whole
// (oldest first, a page at a time) and leaves the queue only when taken
// off it; the records stay.
func TestAuditRecordsAreQueuedForClickHouse(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPool(t, nil)
	member := newMemberAt(t, pool, auditAt)
	at := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	ops := []postgres.OperatorAudit{
		{AuditID: uuid.Must(uuid.NewV7()), At: at, Actor: "backoffice/alice", Action: "adjust.requested", MemberID: member, CauseID: "rpc:a",
			Detail: json.RawMessage(`{"points": 5}`)},
		{AuditID: uuid.Must(uuid.NewV7()), At: at, Actor: "backoffice/bob", Action: "adjust.approved", MemberID: member, CauseID: "rpc:b"},
	}
	if err := postgres.InsertOperatorAudit(ctx, pool, ops...); err != nil {
		t.Fatal(err)
	}
	cfg := postgres.ConfigAudit{AuditID: uuid.Must(uuid.NewV7()), At: at, Actor: "cli/carol", Action: "catalog.loaded",
		Document: postgres.Catalogue, Version: "c7", SHA256: strings.Repeat("0f", 32), Detail: json.RawMessage(`{"os_user":"carol"}`)}
	if err := postgres.InsertConfigAudit(ctx, pool, cfg); err != nil {
		t.Fatal(err)
	}

	first, err := postgres.PendingOperatorAudit(ctx, pool, 1)
	if err != nil || len(first) != 1 {
		t.Fatalf("first page: %v, %v", first, err)
	}
	all, err := postgres.PendingOperatorAudit(ctx, pool, 10)
	if err != nil || len(all) != 2 {
		t.Fatalf("pending operator audit: %v, %v", all, err)
	}
	got := all[0]
	if got.AuditID != ops[0].AuditID || !got.At.Equal(at) || got.Actor != "backoffice/alice" || got.Action != "adjust.requested" ||
		got.MemberID != member || got.CauseID != "rpc:a" || string(got.Detail) != `{"points": 5}` || all[1].AuditID != ops[1].AuditID {
		t.Errorf("pending operator audit %+v", all)
	}
	if err := postgres.DequeueOperatorAudit(ctx, pool, first); err != nil {
		t.Fatal(err)
	}
	if left, err := postgres.PendingOperatorAudit(ctx, pool, 10); err != nil || len(left) != 1 || left[0].AuditID != ops[1].AuditID {
		t.Errorf("after dequeuing the first: %v, %v", left, err)
	}

	pc, err := postgres.PendingConfigAudit(ctx, pool, 10)
	if err != nil || len(pc) != 1 {
		t.Fatalf("pending config audit: %v, %v", pc, err)
	}
	if c := pc[0]; c.AuditID != cfg.AuditID || c.Actor != "cli/carol" || c.Document != postgres.Catalogue || c.Version != "c7" ||
		c.SHA256 != cfg.SHA256 || string(c.Detail) != `{"os_user": "carol"}` || !c.At.Equal(at) {
		t.Errorf("pending config audit %+v", c)
	}
	if err := postgres.DequeueConfigAudit(ctx, pool, []uuid.UUID{cfg.AuditID}); err != nil {
		t.Fatal(err)
	}
	if pc, err := postgres.PendingConfigAudit(ctx, pool, 10); err != nil || len(pc) != 0 {
		t.Errorf("after dequeuing: %v, %v", pc, err)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM operator_audit) + (SELECT count(*) FROM config_audit)`).Scan(&n); err != nil || n != 3 {
		t.Errorf("audit records: %d, %v; want all 3 kept", n, err)
	}
}
