package facts_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/membercenter/membercenter/pipeline/contract"
	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/services/facts"
	"github.com/membercenter/membercenter/storage/clickhouse"
)

// counted stands for ClickHouse: it counts the rows it is handed.
type counted struct{ changes, labels int }

func (c *counted) InsertEvents(context.Context, []clickhouse.EventRow) error { return nil }
func (c *counted) InsertChanges(_ context.Context, rows []clickhouse.ChangeRow) error {
	c.changes += len(rows)
	return nil
}
func (c *counted) InsertAudit(context.Context, []clickhouse.AuditRow) error { return nil }
func (c *counted) InsertLabelChanges(_ context.Context, rows []clickhouse.LabelChangeRow) error {
	c.labels += len(rows)
	return nil
}

// BenchmarkWriteChangesFirstLabels: a sink batch of 200 changes, each a
// member's first LabelsChanged with 230 labels (what a purchase of a member
// without labels yields), turned into ClickHouse rows.
func BenchmarkWriteChangesFirstLabels(b *testing.B) {
	at := timestamppb.New(time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC))
	changes := make([]contract.FactChange, 200)
	for i := range changes {
		lc := &mcv1.LabelsChanged{CatalogVersion: "v1"}
		for j := range 230 {
			lv := &mcv1.LabelValue{LabelId: fmt.Sprintf("label_%03d", j), ComputedAt: at}
			switch j % 3 {
			case 0:
				lv.Value = &mcv1.LabelValue_BoolValue{BoolValue: true}
			case 1:
				lv.Value = &mcv1.LabelValue_NumberValue{NumberValue: float64(j) * 1.5}
			default:
				lv.Value = &mcv1.LabelValue_EnumValue{EnumValue: "mid"}
			}
			lc.Labels = append(lc.Labels, lv)
		}
		changes[i] = contract.FactChange{Msg: &mcv1.MemberChange{MemberId: fmt.Sprintf("m%d", i), Sequence: 2, ChangeId: fmt.Sprintf("c%d", i),
			OccurredAt: at, CauseId: "e", Change: &mcv1.MemberChange_LabelsChanged{LabelsChanged: lc}}}
	}
	ins := &counted{}
	w := facts.Writer{W: ins, Now: func() time.Time { return at.AsTime() }}
	b.ReportAllocs()
	for b.Loop() {
		if err := w.WriteChanges(context.Background(), changes); err != nil {
			b.Fatal(err)
		}
	}
	if ins.labels != ins.changes*230 {
		b.Fatalf("%d label rows for %d changes", ins.labels, ins.changes)
	}
}
