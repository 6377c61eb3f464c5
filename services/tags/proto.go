package tags

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/clickhouse/segment"
)

// ProtoExample renders a worked example with JSON values.
func ProtoExample(ex Example) *mcv1.LabelExample {
	out := &mcv1.LabelExample{Given: map[string]string{}}
	for _, k := range slices.Sorted(maps.Keys(ex.Given)) {
		out.Given[k] = jsonText(ex.Given[k])
	}
	out.Expect = jsonText(ex.Expect)
	return out
}

func jsonText(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// Segments returns the catalogue's segment compiler, built once.
func (c *Catalog) Segments() (*segment.Compiler, error) {
	c.segOnce.Do(func() { c.segments, c.segErr = segment.NewCompiler(c.SegmentLabels()) })
	return c.segments, c.segErr
}

// SegmentLabels declares the catalogue's labels to the segment language.
func (c *Catalog) SegmentLabels() []segment.Label {
	out := make([]segment.Label, len(c.Labels))
	for i, l := range c.Labels {
		out[i] = segment.Label{ID: l.ID, Type: l.Type, Values: l.Values}
	}
	return out
}
