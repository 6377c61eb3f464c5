package segment

import (
	"context"
	"errors"
	"fmt"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/membercenter/membercenter/storage/clickhouse"
)

// DefaultBatch is Export's batch size when none is given.
const DefaultBatch = 1000

// ErrLabelsBehind: the segment reads a column that member_profiles does
// not have yet. A catalogue that adds labels is loaded by every process,
// and the profile exporter adds their columns when it loads it (and the
// columns a release adds, such as merged_into, when the pipeline runs that
// release); a segment asked for in between can be asked again shortly.
var ErrLabelsBehind = errors.New("a column the segment reads (a label of the catalogue, or one this release added) is not in ClickHouse's member_profiles yet: the profile exporter adds it; retry shortly")

// notMade reports whether err is a query's refusal because member_profiles
// is not made yet (clickhouse.ProfilesNotMade): any other table missing —
// a shard's local table, a database that is not the platform's — stays an
// error.
func notMade(ctx context.Context, conn driver.Conn, err error) bool {
	if !clickhouse.IsUnknownTable(err) {
		return false
	}
	yes, cerr := clickhouse.ProfilesNotMade(ctx, conn)
	return cerr == nil && yes
}

// queryError is err of a segment's query, with ErrLabelsBehind for a column
// ClickHouse does not have.
func queryError(what string, q *Query, err error) error {
	if clickhouse.IsUnknownColumn(err) {
		return fmt.Errorf("%s %q: %w (%w)", what, q.Expr, ErrLabelsBehind, err)
	}
	return fmt.Errorf("%s %q: %w", what, q.Expr, err)
}

// Consenting is q restricted to the members who consent to a purpose: its
// member_profiles consent column (clickhouse.ConsentMarketing, ...). Every
// use of a segment for a purpose goes through it. The row of an id merged
// into another is no member's (clickhouse.IsMember) and is left out.
func (q *Query) Consenting(column string) (*Query, error) {
	switch column {
	case clickhouse.ConsentMarketing, clickhouse.ConsentProfiling, clickhouse.ConsentThirdParty, clickhouse.ConsentAnalytics:
	default:
		return nil, fmt.Errorf("segment: %q is not a consent column", column)
	}
	c := *q
	c.Where = "(" + q.Where + ") AND " + column + " = 1 AND " + clickhouse.IsMember
	return &c, nil
}

// Count is the number of members whose current profile (the newest version,
// member_profiles FINAL) matches q. member_profiles is made by the tag
// stage's first catalogue: before it (a fresh install, `pipeline --stages`
// without the stage) no member has a profile, and the count is 0.
func Count(ctx context.Context, conn driver.Conn, q *Query) (uint64, error) {
	if q == nil || q.Where == "" {
		return 0, errors.New("segment count: no compiled query")
	}
	var n uint64
	err := conn.QueryRow(ctx, "SELECT count() FROM "+clickhouse.ProfilesTable+" FINAL WHERE "+q.Where).Scan(&n)
	if notMade(ctx, conn, err) {
		return 0, nil
	}
	if err != nil {
		return 0, queryError("segment count", q, err)
	}
	return n, nil
}

// Export streams the ids of the members matching q, ordered by member id, in
// slices of at most batch ids (DefaultBatch when batch <= 0). Each slice is
// new, so fn may keep it. An error from fn stops the export and is returned
// as is. Before member_profiles is made (see Count), nothing is exported.
func Export(ctx context.Context, conn driver.Conn, q *Query, batch int, fn func([]string) error) error {
	if q == nil || q.Where == "" {
		return errors.New("segment export: no compiled query")
	}
	if batch <= 0 {
		batch = DefaultBatch
	}
	// Closing rows drains the rest of the result: cancel the query first,
	// so that stopping early (fn failed) does not read it all.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rows, err := conn.Query(ctx, "SELECT member_id FROM "+clickhouse.ProfilesTable+" FINAL WHERE "+q.Where+" ORDER BY member_id")
	if notMade(ctx, conn, err) {
		return nil
	}
	if err != nil {
		return queryError("segment export", q, err)
	}
	defer func() {
		cancel()
		_ = rows.Close()
	}()
	ids := make([]string, 0, batch)
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return fmt.Errorf("segment export %q: %w", q.Expr, err)
		}
		ids = append(ids, id)
		if len(ids) == batch {
			if err := fn(ids); err != nil {
				return err
			}
			ids = make([]string, 0, batch)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("segment export %q: %w", q.Expr, err)
	}
	if len(ids) > 0 {
		return fn(ids)
	}
	return nil
}
