package tags

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/membercenter/membercenter/storage/clickhouse"
)

// TestLabelColumnsAsLabelsByID: a member's stored labels placed in the
// columns' order hold, column by column, what the labels by id hold —
// columns in an order unlike the ids', a label the catalogue dropped, labels
// absent, labels_pb and the JSON of a row written before it alike.
func TestLabelColumnsAsLabelsByID(t *testing.T) {
	cols := []clickhouse.ProfileColumn{
		{Name: "zeta", Type: clickhouse.LabelBool}, {Name: "alpha", Type: clickhouse.LabelNumber},
		{Name: "mid", Type: clickhouse.LabelEnum}, {Name: "beta", Type: clickhouse.LabelBool}, {Name: "omega", Type: clickhouse.LabelNumber},
	}
	x := newColumnIndex(cols)
	for _, labels := range []map[string]any{
		{"zeta": true, "alpha": 12.5, "mid": "gold", "beta": false, "omega": 3.0},
		{"alpha": 1.0, "retired": true, "omega": 2.0},               // some absent, one dropped
		{"aaa": "before every column", "zzz": "after every column"}, // none of the columns
		{},
	} {
		pb, err := EncodeLabels(labels)
		if err != nil {
			t.Fatal(err)
		}
		js, err := json.Marshal(labels)
		if err != nil {
			t.Fatal(err)
		}
		want := make([]any, len(cols))
		for j, c := range cols {
			want[j] = labels[c.Name]
		}
		for _, stored := range []struct {
			name       string
			pb, legacy []byte
		}{{"labels_pb", pb, nil}, {"JSON", nil, js}} {
			out := make([]any, len(cols))
			if err := x.labelColumns(stored.pb, stored.legacy, out); err != nil {
				t.Fatalf("%v as %s: %v", labels, stored.name, err)
			}
			if !reflect.DeepEqual(out, want) {
				t.Errorf("%v as %s: columns %v; want %v", labels, stored.name, out, want)
			}
		}
	}
	if err := x.labelColumns([]byte{0x0a, 0x05, 0x0a}, nil, make([]any, len(cols))); err == nil {
		t.Error("truncated labels_pb decoded without an error")
	}
}
