package tags

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"
	"time"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/interpreter"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/services/facts"
)

// engineVersion numbers how aggregates and features are computed from a
// state. A snapshot stored by another version still gives the labels to
// compare with, but its features are not trusted to skip work: every
// label is evaluated once.
const engineVersion = 1

// maxAdded is the most events folded since a snapshot that are added to
// its aggregates one by one (each looks at the later ones); past it every
// record is summed again.
const maxAdded = 16

// snapshot is what a state's labels were last computed from: the window
// aggregates at a moment, the lifetime totals, the member's attributes and
// device count then, and the labels, positional in the catalogue it names.
// The features of that moment are derived from it again (derive is a
// function of these alone), so it need not hold them.
type snapshot struct {
	catalogue uint64 // Catalog.fingerprint
	engine    uint32
	at        int64 // unix seconds
	withheld  bool  // behavioural labels were withheld
	agg       aggregates
	life      lifeSum
	demo      Demographics
	device    int64
	labels    []lval // in Catalog.Labels' order
}

// lval is one label's value: absent unless ok; by the label's type in b,
// e (the position of an enum value) or f.
type lval struct {
	ok bool
	b  bool
	e  uint16
	f  float64
}

func (v lval) same(w lval) bool {
	return v.ok == w.ok && v.b == w.b && v.e == w.e && math.Float64bits(v.f) == math.Float64bits(w.f)
}

// compiled is what a catalogue computes once for evaluating labels by
// position: the feature layout, where each name is, what each label reads.
type compiled struct {
	lay *layout
	// names: feature i as i, label j as -(j+1).
	names map[string]int32
	// inF and inL: the features and labels each label (in Labels' order)
	// reads.
	inF, inL [][]int32
	// byID: label positions in id order.
	byID []int32
	// pbPrefix: each label's LabelValue id field (tag, length, id); pbFixed
	// and jsonFixed: the whole LabelValue field (labels_pb) and JSON member
	// (the labels column) for each value of a bool (false, true) or enum
	// label (its values), nil for numbers; jsonKey: "id": for numbers.
	pbPrefix, jsonKey  [][]byte
	pbFixed, jsonFixed [][][]byte
	// fingerprint identifies the catalogue's source.
	fingerprint uint64
	scratch     sync.Pool // *scratch
}

type scratch struct {
	prevF, newF []fval
	changedF    []bool
	changedL    []bool
}

func (c *Catalog) compile(src []byte) {
	e := &c.eng
	e.lay = newLayout(c.Filters)
	e.names = make(map[string]int32, len(e.lay.ids)+len(c.Labels))
	for i, id := range e.lay.ids {
		e.names[id] = int32(i)
	}
	pos := make(map[string]int32, len(c.Labels))
	for j, l := range c.Labels {
		pos[l.ID] = int32(j)
		e.names[l.ID] = -int32(j) - 1
	}
	e.inF, e.inL = make([][]int32, len(c.Labels)), make([][]int32, len(c.Labels))
	for j, l := range c.Labels {
		for _, in := range l.Inputs {
			if p, ok := pos[in]; ok {
				e.inL[j] = append(e.inL[j], p)
			} else if i, ok := e.names[in]; ok {
				e.inF[j] = append(e.inF[j], i)
			}
		}
	}
	e.byID = make([]int32, len(c.Labels))
	for j := range e.byID {
		e.byID[j] = int32(j)
	}
	slices.SortFunc(e.byID, func(a, b int32) int {
		if c.Labels[a].ID < c.Labels[b].ID {
			return -1
		}
		return 1
	})
	for _, l := range c.Labels {
		l.compiled, _ = c.compileExpr(l.ast)
	}
	for _, f := range c.Filters {
		f.compiled, _ = c.compileExpr(f.ast)
	}
	e.pbPrefix, e.jsonKey = make([][]byte, len(c.Labels)), make([][]byte, len(c.Labels))
	e.pbFixed, e.jsonFixed = make([][][]byte, len(c.Labels)), make([][][]byte, len(c.Labels))
	for j, l := range c.Labels {
		e.pbPrefix[j] = appendString(nil, 1, l.ID)
		e.jsonKey[j] = append(appendJSONString(nil, l.ID), ':')
		var vals []lval
		switch l.Type {
		case TypeBool:
			vals = []lval{{ok: true}, {ok: true, b: true}}
		case TypeEnum:
			for k := range l.Values {
				vals = append(vals, lval{ok: true, e: uint16(k)})
			}
		}
		for _, v := range vals {
			e.pbFixed[j] = append(e.pbFixed[j], appendLabelPB(nil, e.pbPrefix[j], l, v))
			e.jsonFixed[j] = append(e.jsonFixed[j], appendLabelJSON(nil, e.jsonKey[j], l, v))
		}
	}
	h := sha256.Sum256(src)
	e.fingerprint = binary.BigEndian.Uint64(h[:8])
	nf, nl := len(e.lay.ids), len(c.Labels)
	e.scratch.New = func() any {
		return &scratch{prevF: make([]fval, nf), newF: make([]fval, nf), changedF: make([]bool, nf), changedL: make([]bool, nl)}
	}
}

// Refreshed is the outcome of Refresh: the member's labels now and what
// changed.
type Refreshed struct {
	// Changes lists the labels whose value changed, in id order, as a
	// LabelsChanged holds them (a label no longer present is cleared); empty
	// when none did.
	Changes []*mcv1.LabelValue
	// Set and Cleared are the labels that became true and those that
	// stopped being true (when either has one, member_label_sets gets the
	// member's new set, TrueLabels).
	Set, Cleared []string
	// Next is when the labels may next change with the clock alone (zero:
	// never).
	Next time.Time
	// Evaluated counts the label expressions evaluated.
	Evaluated int

	c      *Catalog
	labels []lval
	// added: the window aggregates were brought forward, not summed again.
	added bool
}

// Refresh brings a member's labels up to date at now after events were
// folded into its feature state (or the clock moved, or its attributes,
// device count or consent changed), and returns them with what changed.
// The state remembers what the labels were computed from (kept by
// EncodeState), so the next call evaluates only the labels that read a
// feature that changed — and the labels that read those — and brings the
// window aggregates forward by the events folded since instead of
// summing every record again, while no record entered or left a window.
// Anything else (a state without that memory, from JSON or another
// catalogue, records merged, split or trimmed, more than maxAdded events
// folded, the clock past an edge or back) sums every record again, and a state from
// another catalogue or none has every label evaluated and compared with
// stored, the labels stored with it (called only then; nil: none). With
// withhold, behavioural labels are absent (profiling consent withdrawn).
// It trims the state (Trim).
func (c *Catalog) Refresh(in Inputs, now time.Time, withhold bool, stored func() (map[string]any, error)) (*Refreshed, error) {
	st := in.State
	st.Trim(now)
	e := &c.eng
	nowU := now.Unix()
	sf := sumFilters{filters: c.Filters, key: c.filterKey, loc: c.Location}
	sc := e.scratch.Get().(*scratch)
	defer e.scratch.Put(sc)

	snap := st.snap
	// known: the stored labels are positional in this catalogue; same: the
	// snapshot's features can be derived as this code derives them.
	known := snap != nil && snap.catalogue == e.fingerprint && len(snap.labels) == len(c.Labels)
	same := known && snap.engine == engineVersion && len(snap.agg.filters) == len(c.Filters)
	byDeps := same && snap.withheld == withhold
	if byDeps {
		derive(sc.prevF, &snap.agg, snap.life, snap.demo, int(snap.device), snap.at, c.Location)
	}
	var agg *aggregates
	added := false
	switch {
	case same && !st.stale && len(st.pending) <= maxAdded && snap.at <= nowU && nowU < snap.agg.next:
		// No record entered or left a window since the snapshot: add the
		// ones folded since, in order.
		agg = &snap.agg
		for i, r := range st.pending {
			agg.add(st, r, st.pending[i+1:], nowU, sf)
		}
		added = true
	default:
		agg = &aggregates{}
		agg.build(st, nowU, sf)
	}
	life := sumLife(st.Life)
	next := min(derive(sc.newF, agg, life, in.Demo, in.Device, nowU, c.Location), agg.next)

	labels := make([]lval, len(c.Labels))
	if known {
		copy(labels, snap.labels)
	}
	if byDeps {
		for i := range sc.newF {
			sc.changedF[i] = !sc.newF[i].same(sc.prevF[i])
		}
	}
	clear(sc.changedL)
	act := &vecActivation{c: c, f: sc.newF, l: labels}
	r := &Refreshed{c: c, labels: labels, added: added}
	for j, l := range c.Labels {
		if byDeps && !e.reads(j, sc.changedF, sc.changedL) {
			continue
		}
		var v lval
		if !withhold || !l.IsBehavioural() {
			v = l.evalVal(act)
			r.Evaluated++
		}
		if !v.same(labels[j]) {
			sc.changedL[j] = true
			labels[j] = v
		}
	}
	if next != math.MaxInt64 {
		r.Next = time.Unix(next, 0).UTC()
	}
	if known {
		for _, j := range e.byID {
			if !sc.changedL[j] {
				continue
			}
			l := c.Labels[j]
			lv := &mcv1.LabelValue{LabelId: l.ID, ComputedAt: timestamppb.New(now)}
			if v := labels[j]; v.ok {
				setProtoVal(lv, l, v)
			} else {
				lv.Cleared = true
			}
			r.Changes = append(r.Changes, lv)
			if l.Type == TypeBool {
				switch {
				case labels[j].ok && labels[j].b:
					r.Set = append(r.Set, l.ID)
				case snap.labels[j].ok && snap.labels[j].b:
					r.Cleared = append(r.Cleared, l.ID)
				}
			}
		}
	} else {
		var prev map[string]any
		if stored != nil {
			var err error
			if prev, err = stored(); err != nil {
				return nil, err
			}
		}
		if len(prev) == 0 {
			// Nothing stored (a member's first labels): each label with a
			// value is a change, in id order, as Diff from nothing gives.
			for _, j := range e.byID {
				v := labels[j]
				if !v.ok {
					continue
				}
				l := c.Labels[j]
				lv := &mcv1.LabelValue{LabelId: l.ID, ComputedAt: timestamppb.New(now)}
				setProtoVal(lv, l, v)
				r.Changes = append(r.Changes, lv)
				if l.Type == TypeBool && v.b {
					r.Set = append(r.Set, l.ID)
				}
			}
		} else {
			cur := r.Labels()
			r.Changes = Diff(prev, cur, now)
			for _, d := range r.Changes {
				switch id := d.GetLabelId(); {
				case cur[id] == true:
					r.Set = append(r.Set, id)
				case prev[id] == true:
					r.Cleared = append(r.Cleared, id)
				}
			}
		}
	}
	st.snap = &snapshot{catalogue: e.fingerprint, engine: engineVersion, at: nowU, withheld: withhold, agg: *agg,
		life: life, demo: in.Demo, device: int64(in.Device), labels: labels}
	st.pending, st.stale = nil, false
	return r, nil
}

// Clear returns the change that clears every label of a member whose
// state and labels go away (a member merged into another): prev are the
// labels it had, st's snapshot or, without one for this catalogue, stored.
func (c *Catalog) Clear(st *State, now time.Time, stored func() (map[string]any, error)) (*Refreshed, error) {
	r := &Refreshed{c: c, labels: make([]lval, len(c.Labels))}
	var prev map[string]any
	if st.snap != nil && st.snap.catalogue == c.eng.fingerprint && len(st.snap.labels) == len(c.Labels) {
		prev = (&Refreshed{c: c, labels: st.snap.labels}).Labels()
	} else if stored != nil {
		var err error
		if prev, err = stored(); err != nil {
			return nil, err
		}
	}
	r.Changes = Diff(prev, nil, now)
	for _, d := range r.Changes {
		if prev[d.GetLabelId()] == true {
			r.Cleared = append(r.Cleared, d.GetLabelId())
		}
	}
	return r, nil
}

// reads reports whether label j reads a changed feature or label.
func (e *compiled) reads(j int, changedF, changedL []bool) bool {
	for _, i := range e.inF[j] {
		if changedF[i] {
			return true
		}
	}
	for _, i := range e.inL[j] {
		if changedL[i] {
			return true
		}
	}
	return false
}

// Labels returns every present label by id, as Evaluate gives them.
func (r *Refreshed) Labels() map[string]any {
	out := make(map[string]any, len(r.labels))
	for j, v := range r.labels {
		if v.ok {
			out[r.c.Labels[j].ID] = r.c.Labels[j].value(v)
		}
	}
	return out
}

// Changed reports whether any label changed.
func (r *Refreshed) Changed() bool { return len(r.Changes) > 0 }

// TrueLabels lists the labels that are true, in id order: the member's
// whole set as member_label_sets holds it.
func (r *Refreshed) TrueLabels() []string {
	var out []string
	for _, j := range r.c.eng.byID {
		if l := r.c.Labels[j]; l.Type == TypeBool && r.labels[j].ok && r.labels[j].b {
			out = append(out, l.ID)
		}
	}
	return out
}

// value is a label value as a map of labels holds it.
func (l *Label) value(v lval) any {
	switch l.Type {
	case TypeBool:
		return v.b
	case TypeNumber:
		return v.f
	}
	return l.Values[v.e]
}

func setProtoVal(lv *mcv1.LabelValue, l *Label, v lval) {
	switch l.Type {
	case TypeBool:
		lv.Value = &mcv1.LabelValue_BoolValue{BoolValue: v.b}
	case TypeNumber:
		lv.Value = &mcv1.LabelValue_NumberValue{NumberValue: v.f}
	default:
		lv.Value = &mcv1.LabelValue_EnumValue{EnumValue: l.Values[v.e]}
	}
}

// evalVal computes one label as eval does: compiled when it could be.
func (l *Label) evalVal(act *vecActivation) lval {
	if l.compiled != nil {
		return l.evalCompiled(act)
	}
	return l.evalProgram(act)
}

// evalProgram computes one label with its CEL program.
func (l *Label) evalProgram(act interpreter.Activation) lval {
	out, _, err := l.program.Eval(act)
	if err != nil || types.IsUnknownOrError(out) {
		return lval{}
	}
	v, ok := l.convert(out)
	if !ok {
		return lval{}
	}
	switch x := v.(type) {
	case bool:
		return lval{ok: true, b: x}
	case float64:
		return lval{ok: true, f: x}
	case string:
		return lval{ok: true, e: uint16(slices.Index(l.Values, x))}
	}
	return lval{}
}

// vecActivation resolves names to the features and labels by position.
type vecActivation struct {
	c *Catalog
	f []fval
	l []lval
	p *purchaseVars // for purchase filters
}

func (a *vecActivation) ResolveName(name string) (any, bool) {
	i, ok := a.c.eng.names[name]
	if !ok {
		return nil, false
	}
	if i >= 0 {
		v := a.f[i]
		if !v.ok {
			return nil, false
		}
		switch a.c.eng.lay.types[i] {
		case typeInt:
			return types.Int(v.i), true
		case typeDouble:
			return types.Double(v.f), true
		case typeBool:
			return types.Bool(v.i != 0), true
		}
		return types.String(v.s), true
	}
	j := -i - 1
	v := a.l[j]
	if !v.ok {
		return nil, false
	}
	l := a.c.Labels[j]
	switch l.Type {
	case TypeBool:
		return types.Bool(v.b), true
	case TypeNumber:
		return types.Double(v.f), true
	}
	return types.String(l.Values[v.e]), true
}

func (a *vecActivation) Parent() interpreter.Activation { return nil }

// EncodeLabels encodes the labels as EncodeLabels(r.Labels()) does (the
// same bytes), without building the map.
func (r *Refreshed) EncodeLabels() []byte {
	e := &r.c.eng
	n := 0
	for _, j := range e.byID {
		if r.labels[j].ok {
			n += len(e.pbPrefix[j]) + 16
		}
	}
	b := make([]byte, 0, n)
	for _, j := range e.byID {
		v := r.labels[j]
		switch {
		case !v.ok:
		case e.pbFixed[j] != nil:
			b = append(b, e.pbFixed[j][fixedIndex(v)]...)
		default:
			b = appendLabelPB(b, e.pbPrefix[j], r.c.Labels[j], v)
		}
	}
	return b
}

// fixedIndex is a bool or enum value's position in pbFixed and jsonFixed.
func fixedIndex(v lval) int {
	if v.b {
		return 1
	}
	return int(v.e)
}

// appendLabelPB appends a LabelsChanged's labels field holding one value.
func appendLabelPB(b, prefix []byte, l *Label, v lval) []byte {
	var size int
	switch l.Type {
	case TypeBool:
		size = len(prefix) + 2
	case TypeNumber:
		size = len(prefix) + 9
	default:
		size = len(prefix) + 1 + protowire.SizeBytes(len(l.Values[v.e]))
	}
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(size))
	b = append(b, prefix...)
	switch l.Type {
	case TypeBool:
		return append(b, 2<<3|byte(protowire.VarintType), byte(protowire.EncodeBool(v.b)))
	case TypeNumber:
		b = append(b, 4<<3|byte(protowire.Fixed64Type))
		return protowire.AppendFixed64(b, math.Float64bits(v.f))
	}
	b = append(b, 3<<3|byte(protowire.BytesType))
	return protowire.AppendString(b, l.Values[v.e])
}

// LabelsJSON encodes the labels as json.Marshal(r.Labels()) does: an
// object, keys in order (the labels column).
func (r *Refreshed) LabelsJSON() []byte {
	e := &r.c.eng
	b := make([]byte, 0, 32*len(r.labels))
	b = append(b, '{')
	for _, j := range e.byID {
		v := r.labels[j]
		if !v.ok {
			continue
		}
		if len(b) > 1 {
			b = append(b, ',')
		}
		if e.jsonFixed[j] != nil {
			b = append(b, e.jsonFixed[j][fixedIndex(v)]...)
			continue
		}
		b = appendLabelJSON(b, e.jsonKey[j], r.c.Labels[j], v)
	}
	return append(b, '}')
}

// appendLabelJSON appends "id":value.
func appendLabelJSON(b, key []byte, l *Label, v lval) []byte {
	b = append(b, key...)
	switch l.Type {
	case TypeBool:
		return strconv.AppendBool(b, v.b)
	case TypeNumber:
		return facts.AppendJSONNumber(b, v.f)
	}
	return appendJSONString(b, l.Values[v.e])
}

// appendJSONString writes s as a JSON string (labels and enum values are
// UTF-8 from the catalogue's YAML).
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hexDigit(c>>4), hexDigit(c&0xf))
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

func hexDigit(c byte) byte { return "0123456789abcdef"[c] }

// LabelsFromPB decodes labels encoded by EncodeLabels (the labels_pb
// column) into labels by id, as Evaluate gives them.
func LabelsFromPB(b []byte) (map[string]any, error) {
	out := make(map[string]any, len(b)/15) // about 15 bytes a label with the shipped catalogue's ids
	err := eachLabelPB(b, func(id string, v any) { out[id] = v })
	if err != nil {
		return nil, err
	}
	return out, nil
}

// eachLabelPB calls fn with each label encoded by EncodeLabels that has a
// value, in the order encoded.
func eachLabelPB(b []byte, fn func(id string, v any)) error {
	d := decoder{buf: b, shared: &shared{whole: string(b)}}
	var f field
	for d.next(&f) {
		if f.num != 1 {
			continue
		}
		var id string
		var v any
		var g field
		sub := d.msg(&f)
		for sub.next(&g) {
			switch g.num {
			case 1:
				id = sub.str(&g)
			case 2:
				v = sub.u(&g) != 0
			case 3:
				v = sub.str(&g)
			case 4:
				if g.typ != protowire.Fixed64Type {
					sub.fail(fmt.Errorf("number_value: wire type %d", g.typ))
				}
				v = math.Float64frombits(g.v)
			}
		}
		if sub.err != nil {
			return fmt.Errorf("decode labels: %w", sub.err)
		}
		if v != nil {
			fn(id, v)
		}
	}
	if d.err != nil {
		return fmt.Errorf("decode labels: %w", d.err)
	}
	return nil
}
