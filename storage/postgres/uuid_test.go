package postgres_test

import (
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
	for _, v := range []any{uuid.UUID{}, []uuid.UUID{{}}} {
		plan := conn.Conn().TypeMap().PlanEncode(pgtype.UUIDArrayOID, pgtype.BinaryFormatCode, v)
		if _, ok := v.(uuid.UUID); ok {
			plan = conn.Conn().TypeMap().PlanEncode(pgtype.UUIDOID, pgtype.BinaryFormatCode, v)
		}
		if p := fmt.Sprintf("%T", plan); strings.Contains(p, "DriverValuer") {
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
