package postgres_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

// TestUUIDRoundTrips: uuid.UUID values, arrays of them, pointers (nil too)
// and NULLs go through the pool's connections (which encode and scan
// uuid.UUID as 16 bytes) as through a plain pgx connection (its
// driver.Valuer and sql.Scanner paths), in both protocols.
func TestUUIDRoundTrips(t *testing.T) {
	pool := pgtest.NewPoolUnchecked(t, nil)
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
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

// TestArraysEncodeAsPgxDoes: the pool's connections write arrays of
// uuid.UUID, of *uuid.UUID and of []byte (nil elements, empty and nil
// slices too) byte for byte as pgx's own array codec does, and PostgreSQL
// reads them back as sent.
func TestArraysEncodeAsPgxDoes(t *testing.T) {
	pool := pgtest.NewPoolUnchecked(t, nil)
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	ours, theirs := conn.Conn().TypeMap(), pgtype.NewMap()
	a, b, c := uuid.Must(uuid.NewV7()), uuid.Must(uuid.NewV7()), uuid.Must(uuid.NewV7())
	list := func(parts ...string) string { return "{" + strings.Join(parts, ",") + "}" }
	for _, tc := range []struct {
		oid   uint32
		value any
		text  string // PostgreSQL's text of the array; "" for NULL
	}{
		{pgtype.UUIDArrayOID, []uuid.UUID(nil), ""},
		{pgtype.UUIDArrayOID, []uuid.UUID{}, "{}"},
		{pgtype.UUIDArrayOID, []uuid.UUID{a}, list(a.String())},
		{pgtype.UUIDArrayOID, []uuid.UUID{a, b, c, a}, list(a.String(), b.String(), c.String(), a.String())},
		{pgtype.UUIDArrayOID, []*uuid.UUID(nil), ""},
		{pgtype.UUIDArrayOID, []*uuid.UUID{}, "{}"},
		{pgtype.UUIDArrayOID, []*uuid.UUID{&a}, list(a.String())},
		{pgtype.UUIDArrayOID, []*uuid.UUID{nil}, "{NULL}"},
		{pgtype.UUIDArrayOID, []*uuid.UUID{&a, nil, &b, nil, &c}, list(a.String(), "NULL", b.String(), "NULL", c.String())},
		{pgtype.ByteaArrayOID, [][]byte(nil), ""},
		{pgtype.ByteaArrayOID, [][]byte{}, "{}"},
		{pgtype.ByteaArrayOID, [][]byte{{}, nil, {0, 1, 0xff}}, `{"\\x",NULL,"\\x0001ff"}`},
		{pgtype.ByteaArrayOID, [][]byte{[]byte("payload")}, `{"\\x7061796c6f6164"}`},
	} {
		got, err := ours.Encode(tc.oid, pgtype.BinaryFormatCode, tc.value, nil)
		if err != nil {
			t.Fatalf("%#v: %v", tc.value, err)
		}
		want, err := theirs.Encode(tc.oid, pgtype.BinaryFormatCode, tc.value, nil)
		if err != nil {
			t.Fatalf("%#v through pgx's codec: %v", tc.value, err)
		}
		if !bytes.Equal(got, want) || (got == nil) != (want == nil) {
			t.Errorf("%#v encodes as %x, pgx's codec as %x", tc.value, got, want)
		}
		if p := fmt.Sprintf("%T", ours.PlanEncode(tc.oid, pgtype.BinaryFormatCode, tc.value)); strings.Contains(p, "Reflect") || strings.Contains(p, "wrap") {
			t.Errorf("%T encodes with %s", tc.value, p)
		}
		var isNull bool
		var text string
		typ := map[uint32]string{pgtype.UUIDArrayOID: "uuid[]", pgtype.ByteaArrayOID: "bytea[]"}[tc.oid]
		if err := conn.QueryRow(ctx, `SELECT $1::`+typ+` IS NULL, coalesce($1::`+typ+`::text, '')`, tc.value).Scan(&isNull, &text); err != nil {
			t.Fatalf("%#v: %v", tc.value, err)
		}
		if isNull != (tc.text == "") || text != tc.text {
			t.Errorf("%#v reads back as null=%v %q, want %q", tc.value, isNull, text, tc.text)
		}
	}
}
