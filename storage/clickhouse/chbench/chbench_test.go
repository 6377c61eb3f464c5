package chbench_test

import (
	"context"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/clickhouse/chbench"
	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
)

// The version reads send the members asked for as an external table:
// every member asked for that has rows is answered, with its newest version
// among the rows computed since the time asked (LatestVersions) or its
// current one (FinalVersions), members without rows are left out, and a
// list as long as a freshness checker's is taken.
func TestVersionsOfTheMembersAsked(t *testing.T) {
	conn, _ := chtest.NewDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cols := []clickhouse.ProfileColumn{{Name: "vip", Type: "bool"}}
	if err := clickhouse.EnsureProfiles(ctx, conn, cols); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	var rows []clickhouse.ProfileRow
	want := map[string]uint64{}
	for i := range 3000 {
		id := fmt.Sprintf("00000000-0000-0000-0000-%012d", i)
		for v := uint64(1); v <= uint64(i%3+1); v++ { // 1 to 3 versions each
			rows = append(rows, clickhouse.ProfileRow{MemberID: id, Version: v, UpdatedAt: at, Values: map[string]any{"vip": v%2 == 0}})
		}
		if i%2 == 0 {
			want[id] = uint64(i%3 + 1)
		}
	}
	// An earlier run's rows of the same members: higher versions, labels
	// computed an hour before. LatestVersions since at leaves them out;
	// FinalVersions has their highest version as the current one.
	final := maps.Clone(want)
	for i := 0; i < 3000; i += 4 {
		id := fmt.Sprintf("00000000-0000-0000-0000-%012d", i)
		rows = append(rows, clickhouse.ProfileRow{MemberID: id, Version: 9, UpdatedAt: at.Add(-time.Hour), Values: map[string]any{"vip": true}})
		final[id] = 9
	}
	if err := clickhouse.NewWriter(conn).InsertProfiles(ctx, cols, rows); err != nil {
		t.Fatal(err)
	}
	var asked []string
	for id := range want {
		asked = append(asked, id)
	}
	for i := range 4000 { // members with no row
		asked = append(asked, fmt.Sprintf("ffffffff-0000-0000-0000-%012d", i))
	}
	for name, read := range map[string]func(context.Context, []string) (map[string]uint64, error){
		"LatestVersions": func(ctx context.Context, ids []string) (map[string]uint64, error) {
			return chbench.LatestVersions(ctx, conn, ids, at)
		},
		"FinalVersions": func(ctx context.Context, ids []string) (map[string]uint64, error) {
			return chbench.FinalVersions(ctx, conn, ids)
		},
	} {
		want := want
		if name == "FinalVersions" {
			want = final
		}
		got, err := read(ctx, asked)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !maps.Equal(got, want) {
			t.Errorf("%s: %d members answered, want %d", name, len(got), len(want))
			for id, v := range want {
				if got[id] != v {
					t.Errorf("%s: %s at %d, want %d", name, id, got[id], v)
					break
				}
			}
		}
		if got, err := read(ctx, nil); err != nil || len(got) != 0 {
			t.Errorf("%s of no member: %v, %v", name, got, err)
		}
	}
}
