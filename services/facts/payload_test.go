package facts

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// labelsChange is a LabelsChanged change as the tag stage writes one.
func labelsChange(labels ...*mcv1.LabelValue) *mcv1.MemberChange {
	at := timestamppb.New(time.Date(2026, 12, 6, 13, 30, 45, 634518410, time.UTC))
	return &mcv1.MemberChange{
		MemberId: "01a24a6b-4d83-72c3-b475-8a20c93cb4e1", Sequence: 307, ChangeId: "01a24b8c-c202-77e7-888b-78c29f6ace87",
		OccurredAt: at, CauseId: "bpbbad85-1328", Channel: mcv1.Channel_CHANNEL_POS, StoreId: "SH-002",
		Change: &mcv1.MemberChange_LabelsChanged{LabelsChanged: &mcv1.LabelsChanged{Labels: labels, CatalogVersion: "v7"}},
	}
}

func number(id string, v float64, at *timestamppb.Timestamp) *mcv1.LabelValue {
	return &mcv1.LabelValue{LabelId: id, Value: &mcv1.LabelValue_NumberValue{NumberValue: v}, ComputedAt: at}
}

// sameJSON fails unless a and b are the same JSON value (numbers compared as
// written).
func sameJSON(t *testing.T, got, want string) {
	t.Helper()
	var g, w any
	for _, x := range []struct {
		s   string
		dst *any
	}{{got, &g}, {want, &w}} {
		d := json.NewDecoder(stringsReader(x.s))
		d.UseNumber()
		if err := d.Decode(x.dst); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, x.s)
		}
	}
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("payload differs from protojson's\n got: %s\nwant: %s", got, want)
	}
}

// TestChangePayloadIsProtojson: the payload written by hand for a
// LabelsChanged change is what protojson writes, value for value, for
// every kind of label value and the edges of numbers, strings and times.
func TestChangePayloadIsProtojson(t *testing.T) {
	at := timestamppb.New(time.Date(2026, 12, 6, 13, 30, 45, 0, time.UTC))
	ms := timestamppb.New(time.Date(2026, 12, 6, 13, 30, 45, 120_000_000, time.UTC))
	us := timestamppb.New(time.Date(2026, 12, 6, 13, 30, 45, 120_300_000, time.UTC))
	early := timestamppb.New(time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC))
	cases := map[string]*mcv1.MemberChange{
		"no labels": labelsChange(),
		"every kind of value": labelsChange(
			&mcv1.LabelValue{LabelId: "vip", Value: &mcv1.LabelValue_BoolValue{BoolValue: true}, ComputedAt: at},
			&mcv1.LabelValue{LabelId: "lapsed", Value: &mcv1.LabelValue_BoolValue{BoolValue: false}, ComputedAt: ms},
			&mcv1.LabelValue{LabelId: "tier", Value: &mcv1.LabelValue_EnumValue{EnumValue: "gold"}, ComputedAt: us},
			&mcv1.LabelValue{LabelId: "segment", Value: &mcv1.LabelValue_EnumValue{EnumValue: ""}},
			&mcv1.LabelValue{LabelId: "gone", Cleared: true, ComputedAt: early},
			&mcv1.LabelValue{},
		),
		"numbers": labelsChange(
			number("zero", 0, at), number("negative zero", math.Copysign(0, -1), at), number("int", 12, at),
			number("fraction", 2378.8477047014408, at), number("tiny", 1e-7, at), number("small", 1e-6, at),
			number("huge", 1e21, at), number("large", 1e20, at), number("negative tiny", -3.5e-9, at),
			number("max", math.MaxFloat64, at), number("smallest", math.SmallestNonzeroFloat64, at),
			number("nan", math.NaN(), at), number("inf", math.Inf(1), at), number("-inf", math.Inf(-1), at),
		),
		// The text of the last time is reused while labels share it.
		"times shared and changing": labelsChange(
			number("a", 1, at), number("b", 2, at), number("c", 3, ms), &mcv1.LabelValue{LabelId: "d"},
			number("e", 4, ms), number("f", 5, at), number("g", 6, us), number("h", 7, early), number("i", 8, at),
		),
		"strings": labelsChange(
			&mcv1.LabelValue{LabelId: "quote\"back\\slash", Value: &mcv1.LabelValue_EnumValue{EnumValue: "line\nfeed\ttab\rcr\bbs\fff"}},
			&mcv1.LabelValue{LabelId: "ctl\x00\x01\x1f\x7f", Value: &mcv1.LabelValue_EnumValue{EnumValue: "<html>&amp; 会员 \u2028 😀"}},
		),
	}
	// And a change whose envelope is empty but for the labels.
	cases["bare envelope"] = &mcv1.MemberChange{Change: &mcv1.MemberChange_LabelsChanged{LabelsChanged: &mcv1.LabelsChanged{
		Labels: []*mcv1.LabelValue{number("n", 1.5, at)}}}}
	cases["bare labels"] = &mcv1.MemberChange{Change: &mcv1.MemberChange_LabelsChanged{LabelsChanged: &mcv1.LabelsChanged{}}}
	// Random label sets like the catalogue's.
	rng := rand.New(rand.NewPCG(14, 2026))
	for i := range 50 {
		var ls []*mcv1.LabelValue
		for j := range rng.IntN(40) {
			l := &mcv1.LabelValue{LabelId: "label_" + string(rune('a'+j%26)), Cleared: rng.IntN(5) == 0,
				ComputedAt: timestamppb.New(time.Unix(rng.Int64N(4e9), rng.Int64N(1e9)).UTC())}
			switch rng.IntN(3) {
			case 0:
				l.Value = &mcv1.LabelValue_BoolValue{BoolValue: rng.IntN(2) == 0}
			case 1:
				l.Value = &mcv1.LabelValue_EnumValue{EnumValue: []string{"gold", "silver", ""}[rng.IntN(3)]}
			case 2:
				l.Value = &mcv1.LabelValue_NumberValue{NumberValue: (rng.Float64() - 0.5) * math.Pow(10, float64(rng.IntN(50)-25))}
			}
			ls = append(ls, l)
		}
		cases["random "+string(rune('A'+i%26))+string(rune('a'+i/26))] = labelsChange(ls...)
	}
	for name, m := range cases {
		t.Run(name, func(t *testing.T) {
			want, err := protojson.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			got := changePayload(m)
			sameJSON(t, got, string(want))
			// The change is as it was (its payload was unset meanwhile).
			if again, _ := protojson.Marshal(m); string(again) != string(want) && !hasNaN(m) {
				sameJSON(t, string(again), string(want))
			}
			back := &mcv1.MemberChange{}
			if err := protojson.Unmarshal([]byte(got), back); err != nil {
				t.Fatalf("protojson does not read the payload back: %v\n%s", err, got)
			}
		})
	}
}

func hasNaN(m *mcv1.MemberChange) bool {
	for _, l := range m.GetLabelsChanged().GetLabels() {
		if math.IsNaN(l.GetNumberValue()) {
			return true
		}
	}
	return false
}

// TestChangePayloadFallsBackToProtojson: what the hand-written part cannot
// write as protojson does goes through protojson whole, and every other
// kind of change is protojson's.
func TestChangePayloadFallsBackToProtojson(t *testing.T) {
	for name, m := range map[string]*mcv1.MemberChange{
		"time before year 1":     labelsChange(&mcv1.LabelValue{LabelId: "x", ComputedAt: &timestamppb.Timestamp{Seconds: minTimestampSeconds - 1}}),
		"nanos out of range":     labelsChange(&mcv1.LabelValue{LabelId: "x", ComputedAt: &timestamppb.Timestamp{Nanos: 1e9}}),
		"label id not UTF-8":     labelsChange(&mcv1.LabelValue{LabelId: "bad\xff"}),
		"enum not UTF-8":         labelsChange(&mcv1.LabelValue{LabelId: "x", Value: &mcv1.LabelValue_EnumValue{EnumValue: "\xc3"}}),
		"points":                 {MemberId: "m", Sequence: 1, Change: &mcv1.MemberChange_PointsChanged{PointsChanged: &mcv1.PointsChanged{Delta: 10, Balance: 30}}},
		"no payload":             {MemberId: "m", Sequence: 2},
		"labels changed, nil":    {MemberId: "m", Change: &mcv1.MemberChange_LabelsChanged{}},
		"catalog not UTF-8 only": {Change: &mcv1.MemberChange_LabelsChanged{LabelsChanged: &mcv1.LabelsChanged{CatalogVersion: "\xff"}}},
	} {
		t.Run(name, func(t *testing.T) {
			want, err := protojson.Marshal(m)
			got := changePayload(m)
			if err != nil {
				if got != "" {
					t.Fatalf("protojson refuses the change (%v); the payload is %q", err, got)
				}
				return
			}
			sameJSON(t, got, string(want))
		})
	}
}

func BenchmarkChangePayload(b *testing.B) {
	at := timestamppb.Now()
	var ls []*mcv1.LabelValue
	for i := range 16 { // a purchase's LabelsChanged, on average
		ls = append(ls, number("customer_value_total_"+string(rune('a'+i)), 2378.8477047014408*float64(i+1), at))
	}
	m := labelsChange(ls...)
	b.Run("protojson", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = protojsonString(m)
		}
	})
	b.Run("by hand", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = changePayload(m)
		}
	})
}

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }
