package tags

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	tagstatev1 "github.com/membercenter/membercenter/proto/gen/membercenter/tagstate/v1"
	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/services/facts"
)

// codecStates are states as the worker stores them: histories of every
// kind, some merged from two origins, with the snapshot of a Refresh under
// each test catalogue, with and without withheld labels, and one stored
// with an event folded after its snapshot.
func codecStates(t testing.TB) []*State {
	t.Helper()
	cats := propertyCatalogs(t)
	now := time.Date(2026, 6, 1, 8, 30, 0, 0, time.UTC)
	var out []*State
	for i := range 12 {
		g := newFactGen(uint64(100+i), originA, originB)
		st := &State{}
		for _, f := range g.history(now, i*9, 420*day, 0.6) {
			st.Fold(f)
		}
		if i%4 != 3 {
			c := cats[i%len(cats)]
			demo := Demographics{BirthDate: "1990-04-05", Gender: "m", City: "Beijing"}
			if _, err := c.Refresh(Inputs{State: st, Demo: demo, Device: i % 3}, now, i%5 == 1, nil); err != nil {
				t.Fatal(err)
			}
		}
		if i%6 == 2 {
			st.Fold(g.fact(now, 0.5))
		}
		out = append(out, st)
	}
	return out
}

// TestStateEncodingIsProtobuf: the hand-written encoding is the protobuf
// encoding of membercenter.tagstate.v1.State — the generated code reads it
// and writes the same bytes back.
func TestStateEncodingIsProtobuf(t *testing.T) {
	for i, st := range codecStates(t) {
		b, err := EncodeState(st)
		if err != nil {
			t.Fatal(err)
		}
		if b[0] != stateV1 {
			t.Fatalf("state %d: version byte %#x", i, b[0])
		}
		var m tagstatev1.State
		if err := proto.Unmarshal(b[1:], &m); err != nil {
			t.Fatalf("state %d: the generated code does not read it: %v", i, err)
		}
		if len(m.GetPurchases()) != len(st.Purchases) || len(m.GetActs()) != len(st.Acts) || len(m.GetLifetimes()) != len(st.Life) {
			t.Fatalf("state %d: the generated code reads %d purchases, %d acts, %d lifetimes; want %d, %d, %d", i,
				len(m.GetPurchases()), len(m.GetActs()), len(m.GetLifetimes()), len(st.Purchases), len(st.Acts), len(st.Life))
		}
		if st.snap != nil && m.GetSnapshot().GetCatalogue() != st.snap.catalogue {
			t.Fatalf("state %d: snapshot catalogue %x, want %x", i, m.GetSnapshot().GetCatalogue(), st.snap.catalogue)
		}
		again, err := proto.MarshalOptions{Deterministic: true}.Marshal(&m)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, b[1:]) {
			t.Fatalf("state %d: the generated code writes %d bytes, the codec %d", i, len(again), len(b)-1)
		}
	}
}

// TestStateRoundTrip: a state decodes to what was encoded, snapshot
// included, and encodes to the same bytes again.
func TestStateRoundTrip(t *testing.T) {
	for i, st := range codecStates(t) {
		b, err := EncodeState(st)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeState(b)
		if err != nil {
			t.Fatalf("state %d: %v", i, err)
		}
		want := *st
		// Events folded after the snapshot are summed again after a
		// round trip; without a snapshot everything is.
		want.stale = st.snap != nil && (st.stale || len(st.pending) > 0)
		want.pending = nil
		if !reflect.DeepEqual(normalState(got), normalState(&want)) {
			t.Fatalf("state %d: decoded\n%+v\nwant\n%+v", i, got, &want)
		}
		again, err := EncodeState(got)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("state %d: encodes differently after a round trip", i)
		}
	}
}

// normalState makes empty slices nil, so states compare by content.
func normalState(s *State) *State {
	out := *s
	out.dict, out.base = nil, nil
	out.Purchases = nil
	for _, p := range s.Purchases {
		cp := *p
		cp.stored = stored{}
		if len(cp.Categories) == 0 {
			cp.Categories = nil
		}
		if len(cp.Brands) == 0 {
			cp.Brands = nil
		}
		if len(cp.FM) == 0 {
			cp.FM = nil
		}
		if len(cp.FU) == 0 {
			cp.FU = nil
		}
		out.Purchases = append(out.Purchases, &cp)
	}
	out.Acts = nil
	for _, a := range s.Acts {
		a.stored = stored{}
		out.Acts = append(out.Acts, a)
	}
	if len(s.Life) == 0 {
		out.Life = nil
	}
	if s.snap != nil {
		sn := *s.snap
		for _, k := range []*keyCounts{&sn.agg.channels, &sn.agg.categories, &sn.agg.brands, &sn.agg.stores} {
			if len(*k) == 0 {
				*k = nil
			}
		}
		if len(sn.agg.filters) == 0 {
			sn.agg.filters = nil
		}
		out.snap = &sn
	}
	return &out
}

// TestJSONStatesStillDecode: a state stored as JSON before (basket amounts
// as objects, filter results under an old version) decodes without a
// snapshot, so its labels are all evaluated once and compared with the
// stored ones, and is written back in the binary form.
func TestJSONStatesStillDecode(t *testing.T) {
	c := propertyCatalogs(t)[0]
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	legacy := `{"p":[{"o":"O-1","t":` + itoa(now.Add(-time.Hour).Unix()) + `,"m":3000,"ch":"pos","s":"SH-1","ik":true,"q":2,` +
		`"cat":{"coffee":2000,"bakery":1000},"br":{"acme":3000},"g":"m1","e":"e1","fv":"2026-11-01","fm":["coffee"],"fu":[]}],` +
		`"a":[{"t":` + itoa(now.Add(-time.Minute).Unix()) + `,"k":"check_in","g":"m1","e":"e2"}],` +
		`"l":{"m1":{"s":3000,"o":1,"fp":` + itoa(now.Add(-time.Hour).Unix()) + `,"lp":` + itoa(now.Add(-time.Hour).Unix()) +
		`,"fs":` + itoa(now.Add(-time.Hour).Unix()) + `,"ls":` + itoa(now.Add(-time.Minute).Unix()) + `}}}`
	for _, raw := range []string{legacy, " \n" + legacy} {
		st, err := DecodeState([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		if st.snap != nil || len(st.Purchases) != 1 || st.Purchases[0].Categories[0] != (Amount{"bakery", 1000}) {
			t.Fatalf("decoded %+v", st)
		}
		stored := map[string]any{"big_spender": true}
		r, err := c.Refresh(Inputs{State: st}, now, false, func() (map[string]any, error) { return stored, nil })
		if err != nil {
			t.Fatal(err)
		}
		want := c.Evaluate(Compute(Inputs{State: st}, now, c.Location, c.Filters, c.FilterKey()).Values, nil, nil, false)
		if r.Evaluated != len(c.Labels) || !sameLabels(r.Labels(), want) || want["affinity_coffee"] != true {
			t.Fatalf("labels from a JSON state: evaluated %d, %s", r.Evaluated, labelDiff(r.Labels(), want))
		}
		if !sameChanges(r.Changes, Diff(stored, want, now)) {
			t.Fatalf("changes from a JSON state %v", r.Changes)
		}
		b, err := EncodeState(st)
		if err != nil || b[0] != stateV1 {
			t.Fatalf("written back as %q, %v", b[:1], err)
		}
	}
	if _, err := DecodeState([]byte{0x7f, 1, 2}); !errors.Is(err, ErrBadState) {
		t.Errorf("unknown version: %v", err)
	}
	if _, err := DecodeState([]byte(`{"p":[{"t":"x"}]}`)); !errors.Is(err, ErrBadState) {
		t.Errorf("bad JSON: %v", err)
	}
	if st, err := DecodeState(nil); err != nil || st.snap != nil || len(st.Purchases) != 0 {
		t.Errorf("empty: %+v, %v", st, err)
	}
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

// FuzzDecodeState: no input panics the decoder, and what decodes encodes
// and decodes to the same state.
func FuzzDecodeState(f *testing.F) {
	for _, st := range codecStates(f) {
		b, err := EncodeState(st)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		if len(b) > 40 {
			f.Add(b[:len(b)/2])
		}
	}
	f.Add([]byte(`{"p":[]}`))
	f.Add([]byte{stateV1, 0x0a, 0x02, 'h', 'i', 0x12, 0x04, 0x50, 0x01, 0x08, 0x05})
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := DecodeState(b)
		if err != nil {
			if !errors.Is(err, ErrBadState) {
				t.Fatalf("error %v is not ErrBadState", err)
			}
			return
		}
		b2, err := EncodeState(st)
		if err != nil {
			t.Fatal(err)
		}
		st2, err := DecodeState(b2)
		if err != nil {
			t.Fatalf("re-encoded state does not decode: %v", err)
		}
		b3, err := EncodeState(st2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b2, b3) {
			t.Fatalf("encoding not stable:\n%x\n%x", b2, b3)
		}
	})
}

// TestEncodeLabelsFromRefresh: the labels a Refresh gives encode to the
// bytes EncodeLabels and json.Marshal give for their map, and LabelsFromPB
// reads them back.
func TestEncodeLabelsFromRefresh(t *testing.T) {
	for i, st := range codecStates(t) {
		c := propertyCatalogs(t)[i%3]
		r, err := c.Refresh(Inputs{State: st, Demo: Demographics{BirthDate: "2001-02-03"}}, time.Date(2026, 6, 2, 0, 0, 0, 0, time.UTC), i%4 == 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		want, err := EncodeLabels(r.Labels())
		if err != nil {
			t.Fatal(err)
		}
		if got := r.EncodeLabels(); !bytes.Equal(got, want) {
			t.Fatalf("state %d: %d bytes, EncodeLabels %d", i, len(got), len(want))
		}
		wantJSON, err := json.Marshal(r.Labels())
		if err != nil {
			t.Fatal(err)
		}
		if got := r.LabelsJSON(); !bytes.Equal(got, wantJSON) {
			t.Fatalf("state %d: LabelsJSON\n%s\njson.Marshal\n%s", i, got, wantJSON)
		}
		back, err := LabelsFromPB(want)
		if err != nil {
			t.Fatal(err)
		}
		if !sameLabels(back, r.Labels()) {
			t.Fatalf("state %d: LabelsFromPB: %s", i, labelDiff(back, r.Labels()))
		}
	}
	if _, err := LabelsFromPB([]byte{0x0a, 0x05, 0x0a}); err == nil || !strings.Contains(err.Error(), "decode labels") {
		t.Errorf("truncated labels: %v", err)
	}
}

func TestLabelsJSONNumbers(t *testing.T) {
	for _, f := range []float64{0, 1, -1, 0.1, 1e-7, -2.5e-9, 1e21, 123456789.125, 1e20, math.MaxFloat64, math.SmallestNonzeroFloat64} {
		want, _ := json.Marshal(f)
		if got := facts.AppendJSONNumber(nil, f); string(got) != string(want) {
			t.Errorf("%v: %s, encoding/json %s", f, got, want)
		}
	}
	for _, s := range []string{"a", `q"uote`, `back\slash`, "tab\tnl\n", "\x01", "中文"} {
		want, _ := json.Marshal(s)
		if got := appendJSONString(nil, s); string(got) != string(want) && !strings.ContainsAny(s, "\t\n") {
			t.Errorf("%q: %s, encoding/json %s", s, got, want)
		}
		var back string
		if err := json.Unmarshal(appendJSONString(nil, s), &back); err != nil || back != s {
			t.Errorf("%q: %s reads back as %q, %v", s, appendJSONString(nil, s), back, err)
		}
	}
}

// TestFirstLabelsAreDiffFromNothing: a member's first labels (nothing
// stored) are announced as Diff from no labels announces them, and set as
// its true labels.
func TestFirstLabelsAreDiffFromNothing(t *testing.T) {
	now := time.Date(2026, 6, 2, 0, 0, 0, 0, time.UTC)
	changes := 0
	defer func() {
		if changes == 0 {
			t.Error("no state had labels")
		}
	}()
	for i, st := range codecStates(t) {
		c := propertyCatalogs(t)[i%3]
		st = cloneState(st) // what a history gives: no labels computed before
		r, err := c.Refresh(Inputs{State: st, Demo: Demographics{BirthDate: "2001-02-03"}}, now, i%4 == 0,
			func() (map[string]any, error) { return map[string]any{}, nil })
		if err != nil {
			t.Fatal(err)
		}
		want := Diff(nil, r.Labels(), now)
		changes += len(want)
		if len(r.Changes) != len(want) {
			t.Fatalf("state %d: %d changes, Diff %d", i, len(r.Changes), len(want))
		}
		var set []string
		for k := range want {
			if !proto.Equal(r.Changes[k], want[k]) {
				t.Fatalf("state %d: change %d is %v, Diff %v", i, k, r.Changes[k], want[k])
			}
			if want[k].GetBoolValue() {
				set = append(set, want[k].GetLabelId())
			}
		}
		if !slices.Equal(r.Set, set) || len(r.Cleared) != 0 {
			t.Fatalf("state %d: set %v cleared %v, want set %v", i, r.Set, r.Cleared, set)
		}
	}
}

// TestDecodeLabelsAsProtoUnmarshal: DecodeLabels, read field by field,
// gives what proto.Unmarshal gives of every encoding of refreshed labels,
// of labels with times or cleared, and refuses what it refuses.
func TestDecodeLabelsAsProtoUnmarshal(t *testing.T) {
	var encodings [][]byte
	for i, st := range codecStates(t) {
		r, err := propertyCatalogs(t)[i%3].Refresh(Inputs{State: st, Demo: Demographics{BirthDate: "2001-02-03"}}, time.Date(2026, 6, 2, 0, 0, 0, 0, time.UTC), i%4 == 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		encodings = append(encodings, r.EncodeLabels())
	}
	timed, err := proto.Marshal(&mcv1.LabelsChanged{Labels: ProtoLabels(map[string]any{"a": true, "b": "gold", "c": 2.5}, time.Date(2026, 6, 2, 0, 0, 0, 0, time.UTC))})
	if err != nil {
		t.Fatal(err)
	}
	cleared, err := proto.Marshal(&mcv1.LabelsChanged{Labels: []*mcv1.LabelValue{{LabelId: "a", Cleared: true}, {LabelId: "b", Value: &mcv1.LabelValue_BoolValue{}}}})
	if err != nil {
		t.Fatal(err)
	}
	encodings = append(encodings, timed, cleared, nil)
	for i, b := range encodings {
		var want mcv1.LabelsChanged
		if err := proto.Unmarshal(b, &want); err != nil {
			t.Fatal(err)
		}
		got, err := DecodeLabels(b)
		if err != nil {
			t.Fatalf("encoding %d: %v", i, err)
		}
		if !proto.Equal(&mcv1.LabelsChanged{Labels: got}, &want) {
			t.Fatalf("encoding %d: DecodeLabels\n%v\nproto.Unmarshal\n%v", i, got, want.GetLabels())
		}
	}
	if len(encodings[0]) == 0 {
		t.Fatal("the first state has no labels")
	}
	for name, b := range map[string][]byte{
		"truncated":          encodings[0][:len(encodings[0])-1],
		"invalid UTF-8 id":   {0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe},
		"label of wire type": {0x08, 0x01},
	} {
		var lc mcv1.LabelsChanged
		wantErr := proto.Unmarshal(b, &lc) != nil
		got, err := DecodeLabels(b)
		if (err != nil) != wantErr {
			t.Errorf("%s: DecodeLabels error %v, proto.Unmarshal fails: %v", name, err, wantErr)
		}
		if err == nil && !proto.Equal(&mcv1.LabelsChanged{Labels: got}, &mcv1.LabelsChanged{Labels: lc.GetLabels()}) {
			t.Errorf("%s: DecodeLabels %v, proto.Unmarshal %v", name, got, lc.GetLabels())
		}
	}
}

// TestStatePartsAsWhole: a member's state kept in two parts — a tail over
// the stored base while records are only added, both again when the tail
// grows or the base's records change (a trim, a merge) — decodes after
// every write to the state as it was, and as its whole encoding decodes.
// The state is carried on either as decoded from the stored parts or as
// held in memory after writing (the stage's cache), with new strings,
// events arriving late, labels refreshed and records trimmed and merged.
func TestStatePartsAsWhole(t *testing.T) {
	cats := propertyCatalogs(t)
	start := time.Date(2026, 6, 1, 8, 30, 0, 0, time.UTC)
	tails, wholes := 0, 0
	for i := range 6 {
		g := newFactGen(uint64(300+i), originA, originB)
		st := &State{}
		for _, f := range g.history(start, 10+i*40, 300*day, 0.6) {
			st.Fold(f)
		}
		var base, tail []byte // as stored
		now := start
		for step := range 120 {
			now = now.Add(time.Duration(1+g.r.IntN(30)) * time.Hour)
			if step > 0 && step%4 != 0 { // else: carried on in memory
				var err error
				if st, err = DecodeStateParts(base, tail); err != nil {
					t.Fatalf("member %d, step %d: %v", i, step, err)
				}
			}
			for range 1 + g.r.IntN(3) {
				f := g.fact(now.Add(-time.Duration(g.r.IntN(3))*day), 0.6) // some late
				if g.r.IntN(5) == 0 {
					f.Store = fmt.Sprintf("new-store-%d-%d", i, step) // a string the base does not hold
				}
				st.Fold(f)
			}
			switch {
			case step%37 == 36:
				o := &State{}
				for _, f := range newFactGen(uint64(900+step), originB).history(now, 5, 30*day, 0.5) {
					o.Fold(f)
				}
				st.Absorb(o)
			case step%29 == 28:
				st.Trim(now.Add(Retention - 200*day)) // drops the oldest records
			}
			if step%3 == 0 {
				if _, err := cats[step%len(cats)].Refresh(Inputs{State: st}, now, false, nil); err != nil {
					t.Fatal(err)
				}
			}
			whole, err := EncodeState(st)
			if err != nil {
				t.Fatal(err)
			}
			b, tl, err := EncodeStateParts(st)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case b == nil && base == nil:
				t.Fatalf("member %d, step %d: a tail over no base", i, step)
			case b == nil:
				tails++
			default:
				base, wholes = b, wholes+1
			}
			tail = tl
			got, err := DecodeStateParts(base, tail)
			if err != nil {
				t.Fatalf("member %d, step %d: %v", i, step, err)
			}
			want, err := DecodeState(whole)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(normalState(got), normalState(want)) {
				t.Fatalf("member %d, step %d: the parts decode to\n%+v\nthe whole state to\n%+v", i, step, normalState(got), normalState(want))
			}
			// And the state in memory is what was stored: written again
			// as it is, it writes what the decoded one writes.
			again, err := EncodeState(st)
			if err != nil || !bytes.Equal(again, whole) {
				t.Fatalf("member %d, step %d: writing the parts changed the state (%v)", i, step, err)
			}
		}
	}
	if tails < 300 || wholes < 30 {
		t.Fatalf("%d tails and %d whole writes: the run exercised too little", tails, wholes)
	}
}

// TestStatePartsFromAWholeState: a state stored whole (before tails) is
// written whole again, in parts, before a tail goes over it; a tail over a
// base that is not binary is refused; an empty base is a new state.
func TestStatePartsFromAWholeState(t *testing.T) {
	for i, st := range codecStates(t) {
		whole, err := EncodeState(st)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeStateParts(whole, nil)
		if err != nil {
			t.Fatal(err)
		}
		got.Fold(newFactGen(uint64(i), originA).fact(time.Date(2026, 6, 2, 0, 0, 0, 0, time.UTC), 1))
		base, tail, err := EncodeStateParts(got)
		if err != nil {
			t.Fatal(err)
		}
		if base == nil {
			t.Fatalf("state %d: a tail over a base holding the lifetimes and snapshot", i)
		}
		// A reader that knows no tails refuses the base rather than read
		// it as the whole state.
		if _, err := DecodeState(base); !errors.Is(err, ErrBadState) {
			t.Fatalf("state %d: a base read alone: %v, want ErrBadState", i, err)
		}
		// The next event only adds: a tail.
		back, err := DecodeStateParts(base, tail)
		if err != nil {
			t.Fatal(err)
		}
		back.Fold(newFactGen(uint64(i+50), originA).fact(time.Date(2026, 6, 3, 0, 0, 0, 0, time.UTC), 1))
		if b2, _, err := EncodeStateParts(back); err != nil || b2 != nil {
			t.Fatalf("state %d: one record added over a fresh base wrote the base again (%v)", i, err)
		}
	}
	if _, err := DecodeStateParts([]byte(`{"p":[]}`), []byte{stateV1}); !errors.Is(err, ErrBadState) {
		t.Fatalf("a tail over a JSON state: %v, want ErrBadState", err)
	}
	// A wiped state (an empty base) is a new one, whatever its tail.
	if st, err := DecodeStateParts(nil, []byte{stateV1, 0x12, 0x00}); err != nil || len(st.Purchases) != 0 || st.base != nil {
		t.Fatalf("a wiped state with a tail: %+v, %v; want a new state", st, err)
	}
}
