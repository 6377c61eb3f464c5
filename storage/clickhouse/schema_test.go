package clickhouse

import (
	"slices"
	"strings"
	"testing"
)

// TestShardStatements: on a cluster every migration statement that creates
// or changes the columns of a per-member table becomes the local table's
// statement followed by the Distributed table's; one server runs them as
// written.
func TestShardStatements(t *testing.T) {
	ms, err := Migrations()
	if err != nil {
		t.Fatal(err)
	}
	l := layout{cluster: "mc.two-shards", database: "mc"}
	created := map[string]bool{}
	for _, m := range ms {
		for _, stmt := range m.Statements {
			if got, err := shardStatements(stmt, layout{}); err != nil || !slices.Equal(got, []string{stmt}) {
				t.Errorf("%s unsharded: %q, %v", m.Name, got, err)
			}
			got, err := shardStatements(stmt, l)
			if err != nil {
				t.Fatalf("%s: %v", m.Name, err)
			}
			if c := createTable.FindStringSubmatch(stmt); c != nil {
				created[c[1]] = true
				want := []string{
					strings.Replace(stmt, c[1], c[1]+LocalSuffix, 1),
					"CREATE TABLE IF NOT EXISTS " + c[1] + " AS " + c[1] + "_local ENGINE = Distributed('mc.two-shards', 'mc', '" + c[1] + "_local', cityHash64(member_id))",
				}
				if !slices.Equal(got, want) {
					t.Errorf("%s: %q, want %q", m.Name, got, want)
				}
				continue
			}
			if a := alterTable.FindStringSubmatch(stmt); a != nil {
				want := []string{strings.Replace(stmt, a[1], a[1]+LocalSuffix, 1), stmt}
				if !slices.Equal(got, want) {
					t.Errorf("%s: %q, want %q", m.Name, got, want)
				}
			}
		}
	}
	for _, tbl := range ShardedTables {
		if tbl != ProfilesTable && !created[tbl] {
			t.Errorf("no migration creates %s", tbl)
		}
	}

	if _, err := shardStatements("CREATE TABLE IF NOT EXISTS campaigns (id String) ENGINE = MergeTree ORDER BY id", l); err == nil {
		t.Error("a table of unknown layout was sharded")
	}
	got, _ := shardStatements("ALTER TABLE member_events DELETE WHERE member_id = 'm1'", l)
	if !slices.Equal(got, []string{"ALTER TABLE member_events_local DELETE WHERE member_id = 'm1'"}) {
		t.Errorf("a mutation: %q (it concerns the local tables only)", got)
	}
}

func TestConfigValidatesCluster(t *testing.T) {
	for name, ok := range map[string]bool{"": true, "mc": true, "mc.two-shards_1": true, "a'b": false, "1x": false, "a b": false} {
		cfg := Config{Addr: "127.0.0.1:9000", Database: "mc", Cluster: name}
		if err := cfg.Validate(); (err == nil) != ok {
			t.Errorf("cluster %q: %v", name, err)
		}
	}
}
