package tags

import (
	"testing"
	"time"
)

// BenchmarkExportLabels is the profile exporter's work per member outside
// the database and the driver: a member's stored labels (labels_pb, the
// shipped catalogue, members of 45 events) made into the values of
// member_profiles' label columns. "map" decodes them into labels by id
// and then reads each column's from that map, as the exporter did;
// "columns" decodes them straight into the columns' order.
func BenchmarkExportLabels(b *testing.B) {
	c := shipped(b)
	now := time.Date(2026, 3, 2, 2, 0, 0, 0, time.UTC) // any instant: the labels are only decoded
	members := benchMembers(b, c, now, 45)
	cols := c.Columns()
	index := newColumnIndex(cols)
	out := make([]any, len(cols))
	run := func(b *testing.B, labels func(pb []byte) (int, error)) {
		i, values := 0, 0
		cpu := processCPU(b)
		for b.Loop() {
			n, err := labels(members[i%len(members)].labelsPB)
			if err != nil {
				b.Fatal(err)
			}
			values += n
			i++
		}
		b.ReportMetric(float64(processCPU(b)-cpu)/float64(i), "cpu-ns/op")
		b.ReportMetric(float64(values)/float64(i), "values/op")
	}
	b.Run("map", func(b *testing.B) {
		run(b, func(pb []byte) (int, error) {
			m, err := LabelsFromPB(pb)
			n := 0
			for j, col := range cols {
				if out[j] = m[col.Name]; out[j] != nil {
					n++
				}
			}
			return n, err
		})
	})
	b.Run("columns", func(b *testing.B) {
		run(b, func(pb []byte) (int, error) {
			clear(out)
			err := index.labelColumns(pb, nil, out)
			n := 0
			for _, v := range out {
				if v != nil {
					n++
				}
			}
			return n, err
		})
	})
}
