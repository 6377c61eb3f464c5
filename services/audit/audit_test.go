package audit_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/google/uuid"

	"github.com/membercenter/membercenter/pipeline/clocktest"
	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/services/audit"
	"github.com/membercenter/membercenter/services/auth"
	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/versioned"
)

// chAudit is an operator_audit row in ClickHouse, as the test compares.
type chAudit struct {
	actor, action, member, cause, document, version, sha, detail string
}

func chRows(t *testing.T, ctx context.Context, conn driver.Conn) map[string]chAudit {
	t.Helper()
	rows, err := conn.Query(ctx, `SELECT audit_id, actor, action, member_id, cause_id, document, version, sha256, detail
		FROM operator_audit FINAL`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]chAudit{}
	for rows.Next() {
		var id string
		var r chAudit
		if err := rows.Scan(&id, &r.actor, &r.action, &r.member, &r.cause, &r.document, &r.version, &r.sha, &r.detail); err != nil {
			t.Fatal(err)
		}
		out[id] = r
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestOperatorActionsReachClickHouse: what operators do — an adjustment, a
// large one's request and rejection, coupons issued, a programme loaded —
// reaches ClickHouse's operator_audit with who did it, from the exporter
// loop the sink stage runs; every record once, the queues drained.
func TestOperatorActionsReachClickHouse(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pool := pgtest.NewPool(t, nil)
	conn, _ := chtest.NewDB(t)
	svc := benefits.New(pool, changes.Writer{}, slog.New(slog.DiscardHandler))
	srv := benefits.NewServer(svc)
	member := uuid.Must(uuid.NewV7())
	if err := postgres.InsertMember(ctx, pool, member, clocktest.Start()); err != nil {
		t.Fatal(err)
	}
	m := member.String()
	alice, bob := auth.WithActor(ctx, "backoffice/alice"), auth.WithActor(ctx, "backoffice/bob")
	if _, err := srv.Adjust(alice, &mcv1.AdjustRequest{MemberId: m, Points: 100, Reason: "goodwill", IdempotencyKey: "a1"}); err != nil {
		t.Fatal(err)
	}
	big, err := srv.Adjust(alice, &mcv1.AdjustRequest{MemberId: m, Points: 50_000, Reason: "lost order", IdempotencyKey: "a2"})
	if err != nil || !big.GetPending() {
		t.Fatalf("large adjustment: %v, %v; want it pending", big, err)
	}
	if _, err := srv.DecideAdjustment(bob, &mcv1.DecideAdjustmentRequest{ApprovalId: big.GetApprovalId(), Approve: false,
		Note: "no receipt", IdempotencyKey: "d1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.IssueCoupons(bob, &mcv1.IssueCouponsRequest{TemplateId: "C10", MemberIds: []string{m}, Reason: "sorry",
		IdempotencyKey: "i1"}); err != nil {
		t.Fatal(err)
	}
	src := []byte(strings.Replace(string(benefits.DefaultProgramSource()), "version: default-1", "version: exported-1", 1))
	if _, err := benefits.Programmes.Store(ctx, pool, src, versioned.Loader{Actor: "cli/carol"}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{ // action: actor
		"adjust.applied": "backoffice/alice", "adjust.requested": "backoffice/alice", "adjust.rejected": "backoffice/bob",
		"coupon.issued": "backoffice/bob", "program.loaded": "cli/carol",
	}

	loops := pgtest.StartLoops(ctx, audit.NewExporter(pool, clickhouse.NewWriter(conn), slog.New(slog.DiscardHandler)).Run)
	var got map[string]chAudit
	// The exporter inserts into ClickHouse, then takes the records off
	// PostgreSQL's queues: both are waited for (the rows can be in
	// ClickHouse a moment before the queues are empty).
	loops.WaitFor(t, "every audit record in ClickHouse and off the queues", func() (bool, error) {
		got = chRows(t, ctx, conn)
		ops, err := postgres.PendingOperatorAudit(ctx, pool, 10)
		if err != nil {
			return false, err
		}
		cfg, err := postgres.PendingConfigAudit(ctx, pool, 10)
		return len(got) == len(want) && len(ops) == 0 && len(cfg) == 0, err
	})
	loops.Stop(t)

	for id, r := range got {
		if want[r.action] != r.actor {
			t.Errorf("%s: %s by %q; want by %q", id, r.action, r.actor, want[r.action])
		}
		switch r.action {
		case "program.loaded":
			if r.member != "" || r.document != "program_versions" || r.version != "exported-1" || len(r.sha) != 64 || r.detail != "{}" {
				t.Errorf("configuration record %+v", r)
			}
		case "coupon.issued":
			if r.member != m || r.cause != "rpc:benefits.IssueCoupons:i1:"+m || !strings.Contains(r.detail, `"code": "C10-`+m+`-1"`) {
				t.Errorf("coupon record %+v", r)
			}
		default:
			if r.member != m || r.document != "" || r.version != "" || r.sha != "" {
				t.Errorf("adjustment record %+v", r)
			}
		}
	}
}

// failAfter inserts, then fails: ClickHouse holds the rows but the
// exporter does not know (a crash, a timeout after the server wrote).
type failAfter struct{ w *clickhouse.Writer }

func (f failAfter) InsertOperatorAudit(ctx context.Context, rows []clickhouse.OperatorAuditRow) error {
	if err := f.w.InsertOperatorAudit(ctx, rows); err != nil {
		return err
	}
	return errors.New("connection lost")
}

// TestAnExportRetriedAfterAFailureCopiesNothingTwice: records whose insert
// the exporter could not confirm stay queued and are copied again; in
// ClickHouse each is one row.
func TestAnExportRetriedAfterAFailureCopiesNothingTwice(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := pgtest.NewPool(t, nil)
	conn, _ := chtest.NewDB(t)
	member := uuid.Must(uuid.NewV7())
	if err := postgres.InsertMember(ctx, pool, member, clocktest.Start()); err != nil {
		t.Fatal(err)
	}
	if err := postgres.InsertOperatorAudit(ctx, pool,
		postgres.OperatorAudit{AuditID: uuid.Must(uuid.NewV7()), At: clocktest.Start(), Actor: "backoffice/alice", Action: "member.erased", MemberID: member, CauseID: "rpc:e"},
		postgres.OperatorAudit{AuditID: uuid.Must(uuid.NewV7()), At: clocktest.Start(), Actor: "backoffice/alice", Action: "coupon.issued", MemberID: member, CauseID: "rpc:i"},
	); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	if _, err := audit.NewExporter(pool, failAfter{clickhouse.NewWriter(conn)}, log).Export(ctx, 10); err == nil {
		t.Fatal("a failed insert was not reported")
	}
	e := audit.NewExporter(pool, clickhouse.NewWriter(conn), log)
	if n, err := e.Export(ctx, 10); err != nil || n != 2 {
		t.Fatalf("export after the failure: %d, %v; want both records again", n, err)
	}
	if n, err := e.Export(ctx, 10); err != nil || n != 0 {
		t.Fatalf("export with nothing queued: %d, %v", n, err)
	}
	if got := chRows(t, ctx, conn); len(got) != 2 {
		t.Errorf("ClickHouse operator_audit FINAL: %v; want the 2 records once", got)
	}
}
