package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// MemberTable is a table that holds rows about members, found by its
// columns (MemberTables), and how to find a member's rows in it.
type MemberTable struct {
	Name string
	// uuid columns that name a member: member_id and every *_member_id
	// (origin_member_id, source/target_member_id, other_member_id,
	// resolved_member_id).
	MemberColumns []string
	// uuid[] columns that list members (identity_conflicts.member_ids).
	MemberArrays []string
	// The table names members by their number (member_code_failures).
	ByMemberNo bool
	// bytea columns: hashes, ciphertexts, encoded state.
	Bytea []string
	// The primary key, which orders the rows (empty: no key, no order).
	Key []string
}

// MemberTables lists the base tables of the current schema that hold rows
// about members, by naming convention rather than foreign keys (the
// outbox, audits and queues name members without one): a uuid column
// member_id or *_member_id, a uuid[] column *member_ids, or a bigint
// member_no outside members itself. A table added by a migration is found
// without a change here.
func MemberTables(ctx context.Context, q Querier) ([]MemberTable, error) {
	rows, err := q.Query(ctx, `
		SELECT c.table_name::text,
		       coalesce(array_agg(c.column_name::text ORDER BY c.ordinal_position)
		                FILTER (WHERE c.data_type = 'uuid' AND (c.column_name = 'member_id' OR c.column_name LIKE '%\_member\_id')), '{}'),
		       coalesce(array_agg(c.column_name::text ORDER BY c.ordinal_position)
		                FILTER (WHERE c.data_type = 'ARRAY' AND c.udt_name = '_uuid' AND c.column_name LIKE '%member\_ids'), '{}'),
		       coalesce(bool_or(c.column_name = 'member_no' AND c.data_type = 'bigint') AND c.table_name <> 'members', false),
		       coalesce(array_agg(c.column_name::text ORDER BY c.ordinal_position) FILTER (WHERE c.data_type = 'bytea'), '{}'),
		       coalesce((SELECT array_agg(k.column_name::text ORDER BY k.ordinal_position)
		                   FROM information_schema.table_constraints tc
		                   JOIN information_schema.key_column_usage k
		                     ON k.constraint_schema = tc.constraint_schema AND k.constraint_name = tc.constraint_name
		                    AND k.table_name = tc.table_name
		                  WHERE tc.table_schema = current_schema() AND tc.table_name = c.table_name
		                    AND tc.constraint_type = 'PRIMARY KEY'), '{}')
		  FROM information_schema.columns c
		  JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
		 WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
		 GROUP BY c.table_name
		 ORDER BY c.table_name`)
	if err != nil {
		return nil, fmt.Errorf("member tables: %w", err)
	}
	all, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (MemberTable, error) {
		var m MemberTable
		err := row.Scan(&m.Name, &m.MemberColumns, &m.MemberArrays, &m.ByMemberNo, &m.Bytea, &m.Key)
		return m, err
	})
	if err != nil {
		return nil, fmt.Errorf("member tables: %w", err)
	}
	out := all[:0]
	for _, m := range all {
		if len(m.MemberColumns) > 0 || len(m.MemberArrays) > 0 || m.ByMemberNo {
			out = append(out, m)
		}
	}
	return out, nil
}

// MergedMembers returns member and every member merged into it, directly or
// through a chain of merges (members.merged_into), member first.
func MergedMembers(ctx context.Context, q Querier, member uuid.UUID) ([]uuid.UUID, error) {
	return queryValues[uuid.UUID](ctx, q, "merged members", `
		WITH RECURSIVE merged(member_id, depth) AS (
		    SELECT member_id, 0 FROM members WHERE member_id = $1
		  UNION
		    SELECT m.member_id, d.depth + 1
		      FROM members m JOIN merged d ON m.merged_into = d.member_id
		     WHERE d.depth < 100)
		SELECT member_id FROM merged ORDER BY depth, member_id`, member)
}

// MemberRows returns the rows of table t about members, each as the JSON
// object row_to_json makes of it (bytea as "\x…" hex), in key order.
func MemberRows(ctx context.Context, q Querier, t MemberTable, members []uuid.UUID) ([]json.RawMessage, error) {
	var conds []string
	for _, c := range t.MemberColumns {
		conds = append(conds, "t."+pgx.Identifier{c}.Sanitize()+" = ANY($1::uuid[])")
	}
	for _, c := range t.MemberArrays {
		conds = append(conds, "t."+pgx.Identifier{c}.Sanitize()+" && $1::uuid[]")
	}
	if t.ByMemberNo {
		conds = append(conds, "t.member_no IN (SELECT member_no FROM members WHERE member_id = ANY($1::uuid[]))")
	}
	if len(conds) == 0 {
		return nil, fmt.Errorf("member rows of %s: no member column", t.Name)
	}
	sql := "SELECT row_to_json(t)::text FROM " + pgx.Identifier{t.Name}.Sanitize() + " t WHERE " + strings.Join(conds, " OR ")
	if len(t.Key) > 0 {
		keys := make([]string, len(t.Key))
		for i, k := range t.Key {
			keys[i] = "t." + pgx.Identifier{k}.Sanitize()
		}
		sql += " ORDER BY " + strings.Join(keys, ", ")
	}
	rows, err := queryValues[string](ctx, q, "member rows of "+t.Name, sql, members)
	if err != nil {
		return nil, err
	}
	out := make([]json.RawMessage, len(rows))
	for i, r := range rows {
		out[i] = json.RawMessage(r)
	}
	return out, nil
}
