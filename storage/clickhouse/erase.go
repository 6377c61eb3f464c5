package clickhouse

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// EraseMembers deletes the rows of members from tables (per-member tables,
// ordered by member_id), on every node of a cluster (its local tables: a
// Distributed table takes no ALTER), leaving member_changes' member_erased
// rows, the record of the erasure; identity_audit loses the rows naming
// them as the other member too. ClickHouse deletes by mutation, which
// rewrites the parts holding the rows in the background; this returns once
// every mutation is done, so a caller that acknowledges afterwards has
// erased. Idempotent: a repeat deletes nothing more.
func (s *Schema) EraseMembers(ctx context.Context, tables []string, members []string) error {
	if len(members) == 0 || len(tables) == 0 {
		return nil
	}
	conns, l, err := s.nodes(ctx)
	if err != nil {
		return err
	}
	defer s.release(conns)
	for _, m := range members {
		// Member ids are UUIDs; anything else would be a caller's bug, and
		// is refused rather than spliced into SQL.
		if len(m) != 36 || strings.Trim(m, "0123456789abcdef-") != "" {
			return fmt.Errorf("erase members: %q is not a member id", m)
		}
	}
	in := "member_id IN (" + quoted(members) + ")"
	for _, conn := range conns {
		var since time.Time
		if err := conn.QueryRow(ctx, "SELECT now()").Scan(&since); err != nil {
			return fmt.Errorf("erase members: %w", err)
		}
		var erased []string
		for _, t := range tables {
			table := t
			if l.sharded() {
				table += LocalSuffix
			}
			// member_profiles is made by the tag stage's first catalogue,
			// and a sink may run before any tag stage has (`pipeline
			// --stages`): not made yet, it holds no member's rows. Any
			// other table missing is a schema not migrated, and fails.
			if t == ProfilesTable {
				made, err := tableEngines(ctx, conn, []string{table})
				if err != nil {
					return fmt.Errorf("erase members: %w", err)
				}
				if _, ok := made[table]; !ok {
					continue
				}
			}
			erased = append(erased, t)
			where := in
			switch t {
			case "member_changes":
				where += " AND change_type != 'member_erased'"
			case "identity_audit":
				// Another member's record of a merge (undone since), an
				// unmerge or a refusal with the erased one holds the erased
				// one's identifiers (keyed hash, masked value): PostgreSQL
				// blanks them in such rows, and a row cannot be blanked
				// here, so it goes.
				where = "(" + in + " OR other_" + in + ")"
			}
			if err := conn.Exec(ctx, "ALTER TABLE "+table+" DELETE WHERE "+where); err != nil {
				return fmt.Errorf("erase members from %s: %w", table, err)
			}
			if t == "member_changes" {
				// Another member's identity change of a merge (undone
				// since), an unmerge, a refusal or a conflict with the
				// erased one lists its identifiers and summary: they are
				// blanked, as PostgreSQL blanks them in the outbox, and the
				// change stays, naming the erased one by id.
				// A mutation rewrites the column in every part it covers:
				// it is made only when there is a row to blank.
				naming := " WHERE change_type = 'identity_changed' AND NOT (" + in + ")" +
					` AND match(payload, '"otherMemberId":\\s*"(` + strings.Join(members, "|") + `)"')`
				var n uint64
				if err := conn.QueryRow(ctx, "SELECT count() FROM "+table+naming).Scan(&n); err != nil {
					return fmt.Errorf("erase members: others' changes in %s: %w", table, err)
				}
				if n == 0 {
					continue
				}
				if err := conn.Exec(ctx, "ALTER TABLE "+table+" UPDATE payload = "+blankIdentity+naming); err != nil {
					return fmt.Errorf("erase members from others' changes in %s: %w", table, err)
				}
			}
		}
		if err := waitMutations(ctx, conn, erased, l, since, members[0]); err != nil {
			return err
		}
	}
	return nil
}

// blankIdentity is the expression of member_changes' payload (an
// IdentityChanged as protojson) without its identifiers and with empty
// summaries: a JSON string may hold any character, escaped.
const blankIdentity = `replaceRegexpAll(replaceRegexpAll(replaceRegexpAll(payload,
	'"identifiers":\\s*\\[(?:[^\\]"]|"(?:[^"\\\\]|\\\\.)*")*\\]', '"identifiers":[]'),
	'"before":\\s*"(?:[^"\\\\]|\\\\.)*"', '"before":"{}"'),
	'"after":\\s*"(?:[^"\\\\]|\\\\.)*"', '"after":"{}"')`

// quoted is values as a list of string literals; the callers pass only
// checked member ids and this package's table names, which hold no quote.
func quoted(names []string) string {
	return "'" + strings.Join(names, "', '") + "'"
}

// waitMutations waits until the mutations of tables this erasure made
// (created since, naming its first member) are done on conn's server;
// others' (a stuck one of another erasure) do not hold it up.
func waitMutations(ctx context.Context, conn driver.Conn, tables []string, l layout, since time.Time, member string) error {
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = t
		if l.sharded() {
			names[i] += LocalSuffix
		}
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		var pending uint64
		if err := conn.QueryRow(ctx, `SELECT count() FROM system.mutations
			WHERE database = currentDatabase() AND table IN (`+quoted(names)+`) AND is_done = 0
			  AND create_time >= ? AND position(command, ?) > 0`, since, member).Scan(&pending); err != nil {
			return fmt.Errorf("erase members: read mutations: %w", err)
		}
		if pending == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("erase members: %d mutations still running: %w", pending, ctx.Err())
		case <-tick.C:
		}
	}
}
