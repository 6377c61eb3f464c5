package postgres_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/membercenter/membercenter/storage/postgres"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"
)

// labelsPB is a LabelsChanged on the wire: each label a bool (value true
// or false), an enum or a number.
func labelsPB(labels ...any) []byte {
	var b []byte
	for i := 0; i < len(labels); i += 2 {
		var v []byte
		v = protowire.AppendTag(v, 1, protowire.BytesType)
		v = protowire.AppendString(v, labels[i].(string))
		switch x := labels[i+1].(type) {
		case bool:
			v = protowire.AppendTag(v, 2, protowire.VarintType)
			v = protowire.AppendVarint(v, protowire.EncodeBool(x))
		case string:
			v = protowire.AppendTag(v, 3, protowire.BytesType)
			v = protowire.AppendString(v, x)
		case float64:
			v = protowire.AppendTag(v, 4, protowire.Fixed64Type)
			v = protowire.AppendFixed64(v, uint64(x))
		}
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, v)
	}
	return b
}

// TestCheckLabelSets: the end-to-end tests' check that each member's label
// set is the true booleans of its stored labels finds a set that misses a
// true label, a set of a member without stored labels, and stored labels
// that do not decode; it passes a member whose set matches and one with
// neither.
func TestCheckLabelSets(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := pgtest.NewPool(t, nil)
	a, b, c, d := newMember(t, pool), newMember(t, pool), newMember(t, pool), newMember(t, pool)
	features := func(m uuid.UUID, pb []byte) {
		t.Helper()
		batch := &pgx.Batch{}
		postgres.QueueFeaturesBatch(batch, []postgres.FeaturesWrite{{Member: m, State: []byte{1}, LabelsPB: pb, At: memberCreatedAt}}, nil)
		if err := pool.SendBatch(ctx, batch).Close(); err != nil {
			t.Fatal(err)
		}
	}
	sets := func(ls ...postgres.LabelMembership) {
		t.Helper()
		batch := &pgx.Batch{}
		postgres.QueueLabelMembershipBatch(batch, ls, memberCreatedAt)
		if err := pool.SendBatch(ctx, batch).Close(); err != nil {
			t.Fatal(err)
		}
	}
	features(a, labelsPB("vip", true, "lapsed", false, "tier", "gold", "spend", 12.5, "sharer", true))
	sets(postgres.LabelMembership{Member: a, Labels: []string{"sharer", "vip"}})
	features(d, labelsPB("lapsed", false))
	if err := pgtest.CheckLabelSets(ctx, pool); err != nil {
		t.Fatalf("matching sets: %v", err)
	}
	for _, c := range []struct {
		name  string
		setup func()
		want  string
	}{
		{"a true label missing from the set", func() { features(b, labelsPB("vip", true)) }, b.String() + `: set [], true in its labels ["vip"]`},
		{"a set of a member without stored labels", func() {
			sets(postgres.LabelMembership{Member: b, Labels: []string{"vip"}}, postgres.LabelMembership{Member: c, Labels: []string{"vip"}})
		}, c.String() + `: set ["vip"], true in its labels []`},
		{"a label that became false", func() {
			features(c, labelsPB("vip", true))
			features(a, labelsPB("vip", true, "sharer", "gone"))
		}, a.String() + `: set ["sharer" "vip"], true in its labels ["vip"]`},
		{"labels that do not decode", func() {
			sets(postgres.LabelMembership{Member: a, Labels: []string{"vip"}})
			features(d, []byte{0x0a, 0x05, 0xff})
		}, d.String() + "'s stored labels"},
	} {
		c.setup()
		if err := pgtest.CheckLabelSets(ctx, pool); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want an error naming %s", c.name, err, c.want)
		}
	}
	features(d, labelsPB("lapsed", false))
	if err := pgtest.CheckLabelSets(ctx, pool); err != nil {
		t.Fatalf("after the last was mended: %v", err)
	}
}
