package segment_test

import (
	"fmt"
	"testing"

	"github.com/membercenter/membercenter/storage/clickhouse/segment"
)

func benchLabels() []segment.Label {
	labels := append([]segment.Label(nil), catalogue...)
	for i := range 240 {
		labels = append(labels, segment.Label{ID: fmt.Sprintf("label_%03d", i), Type: []string{"bool", "enum", "number"}[i%3],
			Values: map[bool][]string{true: {"a", "b", "c"}}[i%3 == 1]})
	}
	return labels
}

const benchExpr = `lifecycle_stage == "loyal" && rfm_segment in ["champions", "loyal"] && !(spend_30d < 100)`

// BenchmarkCompile builds the CEL environment for ~250 labels on every
// call, as segment.Compile does.
func BenchmarkCompile(b *testing.B) {
	labels := benchLabels()
	for b.Loop() {
		if _, err := segment.Compile(benchExpr, labels); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCompilerCompile reuses one Compiler per catalogue.
func BenchmarkCompilerCompile(b *testing.B) {
	c, err := segment.NewCompiler(benchLabels())
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := c.Compile(benchExpr); err != nil {
			b.Fatal(err)
		}
	}
}
