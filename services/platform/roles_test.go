package platform_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/clocktest"
	"github.com/membercenter/membercenter/services/platform"
	"github.com/membercenter/membercenter/services/platform/platformtest"
)

// deploy/postgres/roles.sql, end to end: a database set up by it, migrated
// as the owner role, serves as the app role — members resolved, points
// adjusted, a member erased (which blanks identity_audit) — while the app
// role cannot change, delete, truncate or drop the audit tables or disable
// their triggers, and the owner cannot truncate the configuration audit.
func TestRolesScriptSeparatesTheAuditFromTheServices(t *testing.T) {
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Fatalf("psql (installed with PostgreSQL by scripts/deps.sh): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, pgtest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	suffix := strings.ReplaceAll(uuid.NewString()[:8], "-", "")
	db, owner, app := "mc_roles_"+suffix, "mc_owner_"+suffix, "mc_app_"+suffix
	for _, stmt := range []string{
		fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD 'owner-pw'`, owner),
		fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD 'app-pw'`, app),
		fmt.Sprintf(`GRANT %s TO CURRENT_USER`, owner), // what a superuser may do anyway
		fmt.Sprintf(`CREATE DATABASE %s`, db),
	} {
		if _, err := admin.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, pgtest.AdminURL())
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close(ctx)
		for _, stmt := range []string{"DROP DATABASE IF EXISTS " + db + " WITH (FORCE)", "DROP ROLE IF EXISTS " + app, "DROP ROLE IF EXISTS " + owner} {
			if _, err := c.Exec(ctx, stmt); err != nil {
				t.Errorf("%s: %v", stmt, err)
			}
		}
	})
	as := func(user, password string) string {
		u, err := url.Parse(pgtest.AdminURL())
		if err != nil {
			t.Fatal(err)
		}
		u.User, u.Path = url.UserPassword(user, password), "/"+db
		return u.String()
	}
	adminURL, _ := url.Parse(pgtest.AdminURL())
	adminURL.Path = "/" + db
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "..", "..", "deploy", "postgres", "roles.sql")
	run := func() {
		t.Helper()
		out, err := exec.CommandContext(ctx, psql, "-X", "-q", "-d", adminURL.String(), "-v", "db="+db, "-v", "owner="+owner, "-v", "app="+app, "-f", script).CombinedOutput()
		if err != nil {
			t.Fatalf("roles.sql: %v\n%s", err, out)
		}
	}
	run()
	ownerPool, err := postgres.Open(ctx, postgres.Config{URL: as(owner, "owner-pw"), MaxConns: 2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ownerPool.Close()
	if _, err := postgres.Migrate(ctx, ownerPool); err != nil {
		t.Fatalf("migrate as the owner: %v", err)
	}
	run() // again after the migrations: idempotent, and the audit stays locked

	cfg := testConfig(t, as(app, "app-pw"), "membercenter-roles-test")
	e := platformtest.OpenT(t, cfg, io.Discard)
	r := platformtest.StartT(t, e.P, platform.Options{Services: []string{"identity", "profile", "benefits"}, Now: clocktest.New().Now})
	ids, bens, profiles := mcv1.NewIdentityServiceClient(r.Conn), mcv1.NewBenefitsServiceClient(r.Conn), mcv1.NewProfileServiceClient(r.Conn)
	res, err := ids.Resolve(ctx, &mcv1.ResolveRequest{Channel: mcv1.Channel_CHANNEL_POS, CreateIfMissing: true, IdempotencyKey: "roles",
		Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: "13766667777"}}})
	if err != nil {
		t.Fatalf("Resolve as the app role: %v", err)
	}
	if _, err := bens.Adjust(ctx, &mcv1.AdjustRequest{MemberId: res.GetMemberId(), Points: 100, Reason: "goodwill", IdempotencyKey: "roles"}); err != nil {
		t.Fatalf("Adjust as the app role: %v", err)
	}
	if _, err := profiles.EraseMember(ctx, &mcv1.EraseMemberRequest{MemberId: res.GetMemberId(), Reason: "DSR-roles", IdempotencyKey: "roles"}); err != nil {
		t.Fatalf("EraseMember as the app role: %v", err)
	}
	if _, err := profiles.GetProfile(ctx, &mcv1.GetProfileRequest{MemberId: res.GetMemberId()}); status.Code(err) != codes.NotFound {
		t.Errorf("GetProfile after the erasure: %v", err)
	}

	appConn, err := pgx.Connect(ctx, as(app, "app-pw"))
	if err != nil {
		t.Fatal(err)
	}
	defer appConn.Close(ctx)
	ownerConn, err := pgx.Connect(ctx, as(owner, "owner-pw"))
	if err != nil {
		t.Fatal(err)
	}
	defer ownerConn.Close(ctx)
	var audits int
	if err := appConn.QueryRow(ctx, `SELECT (SELECT count(*) FROM identity_audit) + (SELECT count(*) FROM operator_audit)`).Scan(&audits); err != nil || audits < 2 {
		t.Fatalf("the app role reads %d audit records (%v), want the link and the erasure at least", audits, err)
	}
	refused := func(c *pgx.Conn, who, stmt string) {
		t.Helper()
		_, err := c.Exec(ctx, stmt)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "42501" {
			t.Errorf("%s: %s: %v; want insufficient_privilege", who, stmt, err)
		}
	}
	for _, table := range []string{"identity_audit", "operator_audit", "config_audit"} {
		for _, stmt := range []string{"DELETE FROM " + table, "TRUNCATE " + table, "DROP TABLE " + table, "ALTER TABLE " + table + " DISABLE TRIGGER ALL"} {
			refused(appConn, "app", stmt)
		}
	}
	refused(ownerConn, "owner", "TRUNCATE config_audit CASCADE")
	for _, table := range []string{"operator_audit", "config_audit"} {
		refused(appConn, "app", "UPDATE "+table+" SET actor = 'someone else'")
	}
	var after int
	if err := appConn.QueryRow(ctx, `SELECT (SELECT count(*) FROM identity_audit) + (SELECT count(*) FROM operator_audit)`).Scan(&after); err != nil || after != audits {
		t.Errorf("audit records %d → %d (%v)", audits, after, err)
	}
}
