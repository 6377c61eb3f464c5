package clickhouse_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
	"github.com/membercenter/membercenter/storage/clickhouse/segment"
)

// A member_profiles table from before the consent columns gets them, with
// a never-decided member's defaults for its rows; rows written with
// decisions carry them; a segment for a purpose keeps the members who
// consent to it, and the analyst views those who consent to analytics.
func TestProfilesCarryConsentPerPurpose(t *testing.T) {
	ctx := context.Background()
	conn, _ := chtest.NewDB(t)
	cols := []clickhouse.ProfileColumn{{Name: "vip", Type: "bool"}}
	// The table as the release before consent created it.
	if err := conn.Exec(ctx, "CREATE TABLE "+clickhouse.ProfilesTable+" (member_id String, version UInt64, updated_at DateTime, "+
		"catalog_version String, behavioural_withheld UInt8, vip Nullable(UInt8)) ENGINE = ReplacingMergeTree(version) ORDER BY member_id"); err != nil {
		t.Fatal(err)
	}
	old, err := conn.PrepareBatch(ctx, "INSERT INTO "+clickhouse.ProfilesTable+" (member_id, version, updated_at, catalog_version, behavioural_withheld, vip)")
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Append("old", uint64(1), time.Date(2026, 10, 1, 9, 0, 0, 0, time.UTC), "v1", uint8(0), ptr(uint8(1))); err != nil {
		t.Fatal(err)
	}
	if err := old.Send(); err != nil {
		t.Fatal(err)
	}
	if err := clickhouse.EnsureProfiles(ctx, conn, cols); err != nil {
		t.Fatalf("ensure profiles over the older table: %v", err)
	}
	at := time.Date(2026, 11, 1, 9, 0, 0, 0, time.UTC)
	vip := map[string]any{"vip": true}
	rows := []clickhouse.ProfileRow{
		{MemberID: "undecided", Version: 1, UpdatedAt: at, Values: vip},
		{MemberID: "no-marketing", Version: 1, UpdatedAt: at, Values: vip, Consent: clickhouse.Consent{NoMarketing: true}},
		{MemberID: "sharer", Version: 1, UpdatedAt: at, Values: vip, Consent: clickhouse.Consent{ThirdParty: true}},
		{MemberID: "no-analytics", Version: 1, UpdatedAt: at, Values: vip, Withheld: true, Consent: clickhouse.Consent{NoAnalytics: true}},
		// A later version of the member who opted out: opted in again.
		{MemberID: "no-marketing", Version: 2, UpdatedAt: at, Values: vip},
		{MemberID: "undecided", Version: 0, UpdatedAt: at, Values: vip, Consent: clickhouse.Consent{NoMarketing: true}}, // older: ignored
	}
	if err := clickhouse.NewWriter(conn).InsertProfiles(ctx, cols, rows[:4]); err != nil {
		t.Fatal(err)
	}
	q, err := segment.Compile("vip", []segment.Label{{ID: "vip", Type: "bool"}})
	if err != nil {
		t.Fatal(err)
	}
	members := func(column string) []string {
		t.Helper()
		cq, err := q.Consenting(column)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		if err := segment.Export(ctx, conn, cq, 0, func(b []string) error { ids = append(ids, b...); return nil }); err != nil {
			t.Fatal(err)
		}
		n, err := segment.Count(ctx, conn, cq)
		if err != nil || int(n) != len(ids) {
			t.Fatalf("count %d (%v) beside an export of %d", n, err, len(ids))
		}
		return ids
	}
	check := func(column string, want ...string) {
		t.Helper()
		if got := members(column); !slices.Equal(got, want) {
			t.Errorf("vip members consenting to %s: %v; want %v", column, got, want)
		}
	}
	check(clickhouse.ConsentMarketing, "no-analytics", "old", "sharer", "undecided")
	check(clickhouse.ConsentThirdParty, "sharer")
	check(clickhouse.ConsentAnalytics, "no-marketing", "old", "sharer", "undecided")
	check(clickhouse.ConsentProfiling, "no-marketing", "old", "sharer", "undecided")

	// The newest version decides.
	if err := clickhouse.NewWriter(conn).InsertProfiles(ctx, cols, rows[4:]); err != nil {
		t.Fatal(err)
	}
	check(clickhouse.ConsentMarketing, "no-analytics", "no-marketing", "old", "sharer", "undecided")

	// The analyst views leave out who opted out of analytics.
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM current_profiles").Scan(&n); err != nil || n != 4 {
		t.Errorf("current_profiles: %d rows (%v); want 4 (not the member who opted out of analytics)", n, err)
	}
	if err := conn.QueryRow(ctx, "SELECT sum(members) FROM label_distribution WHERE label_id = 'vip'").Scan(&n); err != nil || n != 4 {
		t.Errorf("label_distribution counts %d vip members (%v); want 4", n, err)
	}

	// Only a consent column restricts a segment.
	if _, err := q.Consenting("vip"); err == nil {
		t.Error("a segment restricted by a label column; want an error")
	}
}

func ptr[T any](v T) *T { return &v }
