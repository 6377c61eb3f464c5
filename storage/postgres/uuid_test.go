package postgres_test

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

// poolConn is a test pool and one of its connections, released when the
// test ends.
func poolConn(t *testing.T, ctx context.Context) (*pgxpool.Pool, *pgxpool.Conn) {
	t.Helper()
	pool := pgtest.NewPoolUnchecked(t, nil)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Release)
	return pool, conn
}

// TestUUIDRoundTrips: uuid.UUID values, arrays of them, pointers (nil too)
// and NULLs go through the pool's connections (which encode and scan
// uuid.UUID as 16 bytes) as through a plain pgx connection (its
// driver.Valuer and sql.Scanner paths), in both protocols.
func TestUUIDRoundTrips(t *testing.T) {
	ctx := context.Background()
	pool, conn := poolConn(t, ctx)
	plain, err := pgx.ConnectConfig(ctx, pool.Config().ConnConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close(ctx)
	// The pool's connections take the direct path.
	for _, v := range []any{uuid.UUID{}, []uuid.UUID{{}}, []*uuid.UUID{{}}} {
		plan := conn.Conn().TypeMap().PlanEncode(pgtype.UUIDArrayOID, pgtype.BinaryFormatCode, v)
		if _, ok := v.(uuid.UUID); ok {
			plan = conn.Conn().TypeMap().PlanEncode(pgtype.UUIDOID, pgtype.BinaryFormatCode, v)
		}
		if p := fmt.Sprintf("%T", plan); strings.Contains(p, "DriverValuer") || strings.Contains(p, "Reflect") {
			t.Errorf("%T encodes with %s", v, p)
		}
	}
	for name, c := range map[string]*pgx.Conn{"pool": conn.Conn(), "plain": plain} {
		a, b := uuid.Must(uuid.NewV7()), uuid.Must(uuid.NewV7())
		var one, viaText uuid.UUID
		var many []uuid.UUID
		var ptr, null *uuid.UUID
		kept := a
		if err := c.QueryRow(ctx, `SELECT $1::uuid, $2::uuid[], $3::uuid, NULL::uuid, $1::uuid::text::uuid, NULL::uuid`,
			a, []uuid.UUID{a, b}, &b).Scan(&one, &many, &ptr, &null, &viaText, &kept); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if one != a || len(many) != 2 || many[0] != a || many[1] != b || ptr == nil || *ptr != b || null != nil || viaText != a || kept != a {
			t.Errorf("%s: %v %v %v %v %v %v", name, one, many, ptr, null, viaText, kept)
		}
		var text string
		var isNull bool
		var back uuid.UUID
		if err := c.QueryRow(ctx, `SELECT $1::uuid::text, $2::uuid IS NULL, $1::uuid`, pgx.QueryExecModeSimpleProtocol, a, (*uuid.UUID)(nil)).
			Scan(&text, &isNull, &back); err != nil {
			t.Fatalf("%s, simple protocol: %v", name, err)
		}
		if text != a.String() || !isNull || back != a {
			t.Errorf("%s, simple protocol: %q, %v, %v", name, text, isNull, back)
		}
	}
}

// TestArraysEncodeAsPgxDoes: the pool's connections write the arrays the
// batch statements send (uuid.UUID, *uuid.UUID, []byte, string, int64,
// time.Time and *time.Time elements; NULL elements, empty and nil slices)
// byte for byte as pgx's own array codec does, and PostgreSQL reads them
// back as sent.
func TestArraysEncodeAsPgxDoes(t *testing.T) {
	ctx := context.Background()
	_, conn := poolConn(t, ctx)
	ours, theirs := conn.Conn().TypeMap(), pgtype.NewMap()
	a, b, c := uuid.Must(uuid.NewV7()), uuid.Must(uuid.NewV7()), uuid.Must(uuid.NewV7())
	shanghai := time.FixedZone("CST", 8*3600)
	t1 := time.Date(2026, 12, 7, 6, 45, 1, 123456789, shanghai)
	t2 := time.Date(1969, 12, 31, 23, 59, 59, 999999999, time.UTC) // before the Unix epoch, with a fraction
	t3 := time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)
	list := func(parts ...string) string { return "{" + strings.Join(parts, ",") + "}" }
	micros := func(ts ...*time.Time) string {
		var parts []string
		for _, x := range ts {
			if x == nil {
				parts = append(parts, "NULL")
				continue
			}
			parts = append(parts, fmt.Sprint(x.UnixMicro()))
		}
		return list(parts...)
	}
	for _, tc := range []struct {
		typ   string
		value any
		text  string // PostgreSQL's text of the array ("" for NULL); timestamptz[] as microseconds since the epoch
	}{
		{"uuid[]", []uuid.UUID(nil), ""},
		{"uuid[]", []uuid.UUID{}, "{}"},
		{"uuid[]", []uuid.UUID{a}, list(a.String())},
		{"uuid[]", []uuid.UUID{a, b, c, a}, list(a.String(), b.String(), c.String(), a.String())},
		{"uuid[]", []*uuid.UUID(nil), ""},
		{"uuid[]", []*uuid.UUID{}, "{}"},
		{"uuid[]", []*uuid.UUID{&a}, list(a.String())},
		{"uuid[]", []*uuid.UUID{nil}, "{NULL}"},
		{"uuid[]", []*uuid.UUID{&a, nil, &b, nil, &c}, list(a.String(), "NULL", b.String(), "NULL", c.String())},
		{"bytea[]", [][]byte(nil), ""},
		{"bytea[]", [][]byte{}, "{}"},
		{"bytea[]", [][]byte{{}, nil, {0, 1, 0xff}}, `{"\\x",NULL,"\\x0001ff"}`},
		{"bytea[]", [][]byte{[]byte("payload")}, `{"\\x7061796c6f6164"}`},
		{"text[]", []string(nil), ""},
		{"text[]", []string{}, "{}"},
		{"text[]", []string{"", "purchase", "会员"}, `{"",purchase,会员}`},
		{"bigint[]", []int64(nil), ""},
		{"bigint[]", []int64{}, "{}"},
		{"bigint[]", []int64{math.MinInt64, -1, 0, 42, math.MaxInt64}, list(fmt.Sprint(int64(math.MinInt64)), "-1", "0", "42", fmt.Sprint(int64(math.MaxInt64)))},
		{"timestamptz[]", []time.Time(nil), ""},
		{"timestamptz[]", []time.Time{}, "{}"},
		{"timestamptz[]", []time.Time{t1, t2, t3}, micros(&t1, &t2, &t3)},
		{"timestamptz[]", []*time.Time(nil), ""},
		{"timestamptz[]", []*time.Time{nil, &t1, nil}, micros(nil, &t1, nil)},
	} {
		oid := map[string]uint32{"uuid[]": pgtype.UUIDArrayOID, "bytea[]": pgtype.ByteaArrayOID, "text[]": pgtype.TextArrayOID,
			"bigint[]": pgtype.Int8ArrayOID, "timestamptz[]": pgtype.TimestamptzArrayOID}[tc.typ]
		got, err := ours.Encode(oid, pgtype.BinaryFormatCode, tc.value, nil)
		if err != nil {
			t.Fatalf("%#v: %v", tc.value, err)
		}
		want, err := theirs.Encode(oid, pgtype.BinaryFormatCode, tc.value, nil)
		if err != nil {
			t.Fatalf("%#v through pgx's codec: %v", tc.value, err)
		}
		if !bytes.Equal(got, want) || (got == nil) != (want == nil) {
			t.Errorf("%#v encodes as %x, pgx's codec as %x", tc.value, got, want)
		}
		if p := fmt.Sprintf("%T", ours.PlanEncode(oid, pgtype.BinaryFormatCode, tc.value)); strings.Contains(p, "Reflect") || strings.Contains(p, "wrap") {
			t.Errorf("%T encodes with %s", tc.value, p)
		}
		read := `coalesce($1::` + tc.typ + `::text, '')`
		if tc.typ == "timestamptz[]" {
			read = `coalesce((SELECT '{' || string_agg(coalesce((extract(epoch FROM x) * 1000000)::bigint::text, 'NULL'), ',' ORDER BY i) || '}'
				FROM unnest($1::timestamptz[]) WITH ORDINALITY AS u(x, i)), CASE WHEN $1::timestamptz[] IS NULL THEN '' ELSE '{}' END)`
		}
		var isNull bool
		var text string
		if err := conn.QueryRow(ctx, `SELECT $1::`+tc.typ+` IS NULL, `+read, tc.value).Scan(&isNull, &text); err != nil {
			t.Fatalf("%#v: %v", tc.value, err)
		}
		if isNull != (tc.text == "") || text != tc.text {
			t.Errorf("%#v reads back as null=%v %q, want %q", tc.value, isNull, text, tc.text)
		}
	}
	// A batch's column grows the buffer of at most 256 bytes pgx hands a
	// statement once, not once per doubling.
	buf := make([]byte, 0, 256)
	for _, tc := range []struct {
		oid   uint32
		value any
	}{
		{pgtype.UUIDArrayOID, make([]uuid.UUID, 1000)},
		{pgtype.ByteaArrayOID, slices.Repeat([][]byte{[]byte("a change's payload"), nil}, 500)},
		{pgtype.TextArrayOID, slices.Repeat([]string{"purchase"}, 1000)},
		{pgtype.TimestamptzArrayOID, slices.Repeat([]*time.Time{&t1, nil}, 500)},
	} {
		plan := ours.PlanEncode(tc.oid, pgtype.BinaryFormatCode, tc.value)
		if n := testing.AllocsPerRun(10, func() {
			if _, err := plan.Encode(tc.value, buf[:0]); err != nil {
				t.Fatal(err)
			}
		}); n > 1 {
			t.Errorf("%T of 1,000 elements: %.0f allocations an encoding, want 1", tc.value, n)
		}
	}
}
