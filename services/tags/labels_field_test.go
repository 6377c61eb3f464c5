package tags

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// GetProfile sends a member's stored labels as the Profile's labels field
// without decoding them: the bytes LabelsAsField makes are what marshalling
// the decoded labels writes, in place for a one-byte tag (no copy of the
// labels), copied for a longer one, and malformed labels are refused and
// left as they were.
func TestLabelsAsFieldIsTheMarshalledField(t *testing.T) {
	profileLabels := (&mcv1.Profile{}).ProtoReflect().Descriptor().Fields().ByName("labels").Number()
	for i, st := range codecStates(t) {
		c := propertyCatalogs(t)[i%3]
		r, err := c.Refresh(Inputs{State: st, Demo: Demographics{BirthDate: "2001-02-03"}}, time.Date(2026, 6, 2, 0, 0, 0, 0, time.UTC), i%4 == 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		stored := r.EncodeLabels()
		decoded, err := DecodeLabels(stored)
		if err != nil {
			t.Fatal(err)
		}
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(&mcv1.Profile{Labels: decoded})
		if err != nil {
			t.Fatal(err)
		}
		got, ok := LabelsAsField(slices.Clone(stored), profileLabels)
		if !ok || !bytes.Equal(got, want) {
			t.Fatalf("state %d: field %d: ok %v, %d bytes, marshalled %d", i, profileLabels, ok, len(got), len(want))
		}
		// Field 20's tag takes two bytes.
		var want20 []byte
		for _, l := range decoded {
			v, err := proto.MarshalOptions{Deterministic: true}.Marshal(l)
			if err != nil {
				t.Fatal(err)
			}
			want20 = protowire.AppendBytes(protowire.AppendTag(want20, 20, protowire.BytesType), v)
		}
		if got, ok := LabelsAsField(slices.Clone(stored), 20); !ok || !bytes.Equal(got, want20) {
			t.Fatalf("state %d: field 20: ok %v, %d bytes, want %d", i, ok, len(got), len(want20))
		}
	}

	st := codecStates(t)[0]
	r, err := propertyCatalogs(t)[0].Refresh(Inputs{State: st}, time.Date(2026, 6, 2, 0, 0, 0, 0, time.UTC), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	stored := r.EncodeLabels()
	copies := make([][]byte, 101)
	for k := range copies {
		copies[k] = slices.Clone(stored)
	}
	k := 0
	if n := testing.AllocsPerRun(100, func() {
		if _, ok := LabelsAsField(copies[k], profileLabels); !ok {
			t.Fatal("refused")
		}
		k++
	}); n != 0 {
		t.Errorf("LabelsAsField allocated %v times a call; the labels are re-tagged in place", n)
	}

	for name, bad := range map[string][]byte{
		"a last entry cut short":   append(slices.Clone(stored), 0x0a, 0x05, 0x0a),
		"another field at the end": append(slices.Clone(stored), 0x12, 0x00),
	} {
		before := slices.Clone(bad)
		if _, ok := LabelsAsField(bad, profileLabels); ok {
			t.Errorf("%s: accepted", name)
		}
		if !bytes.Equal(bad, before) {
			t.Errorf("%s: refused, but the labels were changed", name)
		}
	}
	// A tag written in two bytes (valid, though EncodeLabels never writes
	// one) cannot be rewritten in place: the labels are copied.
	overlong := append([]byte{0x8a, 0x00, 0x00}, stored...)
	want, _ := LabelsAsField(slices.Clone(stored), profileLabels)
	want = append(protowire.AppendBytes(protowire.AppendTag(nil, profileLabels, protowire.BytesType), nil), want...)
	if got, ok := LabelsAsField(overlong, profileLabels); !ok || !bytes.Equal(got, want) {
		t.Errorf("an overlong tag: ok %v, %d bytes, want %d", ok, len(got), len(want))
	}
}
