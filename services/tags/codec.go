package tags

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"

	"google.golang.org/protobuf/encoding/protowire"
)

// A stored feature state (member_features.state) is one version byte and
// the state in that version's encoding:
//
//	0x01  the protobuf message membercenter.tagstate.v1.State
//	      (proto/membercenter/tagstate/v1/state.proto), written and read
//	      here without reflection, field by field
//	0x02  the same, the base of a state stored in two parts
//	      (member_features.state_tail: EncodeStateParts), never read alone
//	'{'   JSON, as states were stored before (read only; written again
//	      as 0x01)
//
// The protobuf form references the strings records share (origins,
// channels, stores, kinds, categories, brands) by position in one list,
// and keeps the snapshot Refresh needs to evaluate only what an event
// changed.
const stateV1 = 0x01

// stateBaseV1 is the version byte of the base of a state stored in two
// parts (EncodeStateParts), the protobuf form as stateV1. A reader that
// knows no tails (a process of an earlier version, during an upgrade)
// refuses it instead of reading the base as the whole state.
const stateBaseV1 = 0x02

// Fields of membercenter.tagstate.v1.State and its messages.
const (
	stStrings   = 1
	stPurchases = 2
	stActs      = 3
	stLifetimes = 4
	stSnapshot  = 5

	puEvent           = 1
	puOrder           = 2
	puAt              = 3
	puAmount          = 4
	puDiscount        = 5
	puPoints          = 6
	puCoupons         = 7
	puChannel         = 8
	puStore           = 9
	puOrigin          = 10
	puItemsKnown      = 11
	puQuantity        = 12
	puCategoryKeys    = 13
	puCategoryAmounts = 14
	puBrandKeys       = 15
	puBrandAmounts    = 16
	puFilterVersion   = 17
	puFilterMatched   = 18
	puFilterUndecided = 19

	acEvent  = 1
	acAt     = 2
	acKind   = 3
	acOrder  = 4
	acAmount = 5
	acRating = 6
	acOrigin = 7

	lfOrigin        = 1
	lfSpend         = 2
	lfOrders        = 3
	lfRefunded      = 4
	lfFirstPurchase = 5
	lfLastPurchase  = 6
	lfFirstSeen     = 7
	lfLastSeen      = 8
	lfSignedUp      = 9

	snCatalogue       = 1
	snEngine          = 2
	snAt              = 3
	snWithheld        = 4
	snLifetime        = 5
	snBirthDate       = 6
	snGender          = 7
	snCity            = 8
	snDevice          = 9
	snWindows         = 10
	snTotals          = 11
	snChannelKeys     = 12
	snChannelCounts   = 13
	snCategoryKeys    = 14
	snCategoryAmounts = 15
	snBrandKeys       = 16
	snBrandAmounts    = 17
	snStoreKeys       = 18
	snStoreAmounts    = 19
	snFilters         = 20
	snLabelValues     = 21
	snLabelNumbers    = 22
	snStale           = 23
)

// Snapshot.totals, in order.
const (
	tPrevNet = iota
	tPrevOrders
	tReviews
	tRatings
	tDays
	tFirstDay
	tLastDay
	tFirstDayGross
	tCatKnown
	tBrandKnown
	tStoreKnown
	tNext
	nTotals
)

// Snapshot.label_values: 0 absent, 1 present and zero (false, 0.0 or the
// first enum value: the catalogue says which), 2 true, 3 the next of
// label_numbers, 4+k the enum label's k-th value.
const (
	lvAbsent = iota
	lvZero
	lvTrue
	lvNumber
	lvEnum
)

// ErrBadState says a stored feature state does not decode.
var ErrBadState = errors.New("feature state does not decode")

type stateEncoder struct {
	dict map[string]uint32
	strs []string
	body []byte
	// The last string referenced by each kind of field: most references
	// repeat it (one origin, a few channels), and comparing a string with
	// itself is cheaper than a map lookup.
	last [nRefKinds]struct {
		s string
		i uint64
	}
}

// Kinds of string reference, for stateEncoder.last.
const (
	refOrigin = iota
	refChannel
	refStore
	refKind
	refKey
	refFilters
	nRefKinds
)

// refAs is ref through the last string of a kind.
func (e *stateEncoder) refAs(kind int, s string) uint64 {
	l := &e.last[kind]
	if s == l.s && s != "" {
		return l.i
	}
	l.s, l.i = s, e.ref(s)
	return l.i
}

var encoders = sync.Pool{New: func() any { return &stateEncoder{dict: map[string]uint32{}} }}

// ref is the position + 1 of s in the string list (0: empty).
func (e *stateEncoder) ref(s string) uint64 {
	if s == "" {
		return 0
	}
	if i, ok := e.dict[s]; ok {
		return uint64(i)
	}
	e.strs = append(e.strs, s)
	i := uint32(len(e.strs))
	e.dict[s] = i
	return uint64(i)
}

// EncodeState encodes a feature state for storage: the version byte and
// the protobuf form (see stateV1), with what its labels were computed from.
func EncodeState(s *State) ([]byte, error) {
	e := getEncoder()
	defer e.release()
	dict := e.preload(s)
	b := e.records(e.body, s, dict, nil, nil)
	b = e.meta(b, s)
	e.body = b
	return e.header(stateV1, 0, b), nil
}

// A stored state may be kept in two parts (member_features.state and
// state_tail), each a version byte and a protobuf State: the base, the
// string list and the records as of its writing; and the tail, the strings
// and records added since, the lifetimes and the snapshot. Concatenated
// (without the tail's version byte) they are one State message, as
// protobuf concatenation merges. A member's new records are written in the
// tail while the base stays as it was, so a heavy member's state is not
// rewritten (and logged by PostgreSQL) whole for every event; when the
// tail grows past tailLimit, or the base's records changed (a merge, a
// trim, filters evaluated again), both are written again.

// EncodeStateParts encodes s for storage in two parts: base is nil when
// the stored base stays as it is (the caller keeps it), tail is never
// empty. s then describes what was stored, so that its next encoding
// writes only what changed since.
func EncodeStateParts(s *State) (base, tail []byte, err error) {
	e := getEncoder()
	defer e.release()
	dict := e.preload(s)
	var spans []recordSpan
	if s.tailFits(dict) {
		// The records the base does not hold, the strings they add.
		b := e.records(e.body, s, dict, func(st *stored) bool { return !st.inBase }, &spans)
		b = e.meta(b, s)
		e.body = b
		tail = e.header(stateV1, s.base.strings, b)
		// The string list is the base's and the tail's, at the same
		// positions: the records written as they were keep theirs.
		dict.strs = append(dict.strs[:0:0], e.strs...)
		s.install(spans, tail, len(tail)-len(b), dict, false)
		return nil, tail, nil
	}
	b := e.records(e.body, s, dict, nil, &spans)
	n := len(b)
	b = e.meta(b, s)
	e.body = b
	base = e.header(stateBaseV1, 0, b[:n])
	tail = append([]byte{stateV1}, b[n:]...)
	all := &dictionary{strs: slices.Clone(e.strs)}
	s.install(spans, base, len(base)-n, all, true)
	s.base = &stateBase{records: len(s.Purchases) + len(s.Acts), strings: len(e.strs), bytes: len(base)}
	return base, tail, nil
}

// tailLimit is how large the records of a tail may grow over a base of
// baseBytes: writing the tail with every event and the base again at the
// limit costs about baseBytes/N + N·r/2 an event for a limit of N records
// of r bytes, least at N = √(2·baseBytes/r), a tail of about √(2·r·baseBytes)
// bytes (r = recordBytes: 20·√baseBytes).
func tailLimit(baseBytes int) int {
	return max(512, int(math.Sqrt(2*recordBytes*float64(baseBytes))))
}

// recordBytes is about a record's encoded size.
const recordBytes = 200

// tailFits says whether s can be stored as a tail over the base it was
// decoded with or last written as: every record of that base is still
// there unchanged, with its string list (dict), and the others fit in a
// tail.
func (s *State) tailFits(dict *dictionary) bool {
	b := s.base
	if b == nil || dict == nil || dict != s.dict || b.strings > len(dict.strs) {
		return false
	}
	n, size := 0, 0
	count := func(st *stored) bool {
		switch {
		case st.inBase && st.dict == dict:
			n++
		case st.inBase:
			return false
		case st.dict == dict:
			size += len(st.raw)
		default:
			size += recordBytes // to be encoded
		}
		return true
	}
	for _, p := range s.Purchases {
		if !count(&p.stored) {
			return false
		}
	}
	for i := range s.Acts {
		if !count(&s.Acts[i].stored) {
			return false
		}
	}
	return n == b.records && size <= tailLimit(b.bytes)
}

// recordSpan is where a record's content lies in an encoding's body.
type recordSpan struct {
	st         *stored
	start, end int
}

// install makes the records just written read as stored: each written
// record's encoding (at its span, shifted by at in out) under dict, in
// the base or not. The records not written are the base's, written as
// they were under s's list, which dict is (a tail) or all records were
// written (a base).
func (s *State) install(spans []recordSpan, out []byte, at int, dict *dictionary, inBase bool) {
	for _, sp := range spans {
		*sp.st = stored{raw: string(out[at+sp.start : at+sp.end]), dict: dict, inBase: inBase}
	}
	s.dict = dict
}

func getEncoder() *stateEncoder { return encoders.Get().(*stateEncoder) }

func (e *stateEncoder) release() {
	clear(e.dict)
	clear(e.strs)
	e.strs, e.body, e.last = e.strs[:0], e.body[:0], [nRefKinds]struct {
		s string
		i uint64
	}{}
	encoders.Put(e)
}

// preload starts the string list with the one s was decoded with, at the
// same positions, duplicates and all, and returns it: records decoded with
// it are written back as they were. A list grown large with strings no
// longer used is built again (nil).
func (e *stateEncoder) preload(s *State) *dictionary {
	dict := s.dict
	if dict == nil || len(dict.strs) > maxKeptStrings {
		return nil
	}
	e.strs = append(e.strs, dict.strs...)
	for i, x := range dict.strs {
		if _, ok := e.dict[x]; !ok && x != "" {
			e.dict[x] = uint32(i + 1)
		}
	}
	return dict
}

// records appends the records of s that keep selects (nil: all), each as it
// was stored when it was decoded with dict; with spans, it notes where each
// record's content lies in b.
func (e *stateEncoder) records(b []byte, s *State, dict *dictionary, keep func(*stored) bool, spans *[]recordSpan) []byte {
	one := func(b []byte, num protowire.Number, st *stored, body func(b []byte) []byte) []byte {
		if keep != nil && !keep(st) {
			return b
		}
		start := len(b)
		if dict != nil && st.dict == dict {
			b = appendRaw(b, num, st.raw)
		} else {
			b = appendMsg(b, num, body)
		}
		if spans != nil {
			// The content follows the tag (one byte) and its length.
			_, n := protowire.ConsumeVarint(b[start+1:])
			*spans = append(*spans, recordSpan{st: st, start: start + 1 + n, end: len(b)})
		}
		return b
	}
	for _, p := range s.Purchases {
		b = one(b, stPurchases, &p.stored, func(b []byte) []byte { return e.purchase(b, p) })
	}
	for i := range s.Acts {
		a := &s.Acts[i]
		b = one(b, stActs, &a.stored, func(b []byte) []byte {
			b = appendString(b, acEvent, a.Event)
			b = appendInt(b, acAt, a.At)
			b = appendUint(b, acKind, e.refAs(refKind, a.Kind))
			b = appendString(b, acOrder, a.Order)
			b = appendInt(b, acAmount, a.Amount)
			b = appendInt(b, acRating, int64(a.Rating))
			return appendUint(b, acOrigin, e.refAs(refOrigin, a.Origin))
		})
	}
	return b
}

// meta appends the lifetimes and the snapshot of s.
func (e *stateEncoder) meta(b []byte, s *State) []byte {
	for _, o := range sortedKeys(s.Life) {
		l := s.Life[o]
		b = appendMsg(b, stLifetimes, func(b []byte) []byte { return e.lifetime(b, o, l) })
	}
	if sn := s.snap; sn != nil {
		b = appendMsg(b, stSnapshot, func(b []byte) []byte { return e.snapshot(b, sn, s.stale || len(s.pending) > 0) })
	}
	return b
}

// header returns the version byte, the strings of the list from position
// from on, and body.
func (e *stateEncoder) header(version byte, from int, body []byte) []byte {
	n := 1 + len(body)
	for _, x := range e.strs[from:] {
		n += 2 + protowire.SizeBytes(len(x))
	}
	out := make([]byte, 0, n)
	out = append(out, version)
	for _, x := range e.strs[from:] {
		out = protowire.AppendTag(out, stStrings, protowire.BytesType)
		out = protowire.AppendString(out, x)
	}
	return append(out, body...)
}

func (e *stateEncoder) purchase(b []byte, p *Purchase) []byte {
	b = appendString(b, puEvent, p.Event)
	b = appendString(b, puOrder, p.Order)
	ints := purchaseInts(p)
	b = appendInts(b, ints[:])
	b = appendInt(b, puCoupons, int64(p.Coupons))
	b = appendUint(b, puChannel, e.refAs(refChannel, p.Channel))
	b = appendUint(b, puStore, e.refAs(refStore, p.Store))
	b = appendUint(b, puOrigin, e.refAs(refOrigin, p.Origin))
	if p.ItemsKnown {
		b = appendUint(b, puItemsKnown, 1)
	}
	b = appendInt(b, puQuantity, p.Quantity)
	b = e.amounts(b, puCategoryKeys, puCategoryAmounts, p.Categories)
	b = e.amounts(b, puBrandKeys, puBrandAmounts, p.Brands)
	b = appendUint(b, puFilterVersion, e.refAs(refFilters, p.FV))
	b = appendFixed(b, puFilterMatched, p.FM)
	return appendFixed(b, puFilterUndecided, p.FU)
}

func (e *stateEncoder) amounts(b []byte, keys, amounts protowire.Number, a Amounts) []byte {
	if len(a) == 0 {
		return b
	}
	b = appendPacked(b, keys, len(a), func(b []byte, i int) []byte { return protowire.AppendVarint(b, e.refAs(refKey, a[i].Key)) })
	return appendPacked(b, amounts, len(a), func(b []byte, i int) []byte { return protowire.AppendVarint(b, uint64(a[i].Minor)) })
}

func (e *stateEncoder) lifetime(b []byte, origin string, l *Lifetime) []byte {
	b = appendUint(b, lfOrigin, e.ref(origin))
	ints := lifetimeInts(l)
	b = appendInts(b, ints[:])
	if l.SignedUp {
		b = appendUint(b, lfSignedUp, 1)
	}
	return b
}

func (e *stateEncoder) snapshot(b []byte, s *snapshot, stale bool) []byte {
	b = protowire.AppendTag(b, snCatalogue, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, s.catalogue)
	b = appendUint(b, snEngine, uint64(s.engine))
	b = appendInt(b, snAt, s.at)
	if s.withheld {
		b = appendUint(b, snWithheld, 1)
	}
	if s.life.any {
		b = appendMsg(b, snLifetime, func(b []byte) []byte { return e.lifetime(b, "", &s.life.Lifetime) })
	}
	b = appendString(b, snBirthDate, s.demo.BirthDate)
	b = appendString(b, snGender, s.demo.Gender)
	b = appendString(b, snCity, s.demo.City)
	b = appendInt(b, snDevice, s.device)
	a := &s.agg
	b = appendPacked(b, snWindows, nWindows*nCounters, func(b []byte, i int) []byte {
		return protowire.AppendVarint(b, protowire.EncodeZigZag(a.win[i/nCounters][i%nCounters]))
	})
	totals := [nTotals]int64{tPrevNet: a.prevNet, tPrevOrders: a.prevOrders, tReviews: a.reviews, tRatings: a.ratings,
		tDays: a.days, tFirstDay: a.firstDay, tLastDay: a.lastDay, tFirstDayGross: a.firstDayGross,
		tCatKnown: a.catKnown, tBrandKnown: a.brandKnown, tStoreKnown: a.storeKnown, tNext: a.next}
	b = appendPacked(b, snTotals, nTotals, func(b []byte, i int) []byte {
		return protowire.AppendVarint(b, protowire.EncodeZigZag(totals[i]))
	})
	b = e.counts(b, snChannelKeys, snChannelCounts, a.channels)
	b = e.counts(b, snCategoryKeys, snCategoryAmounts, a.categories)
	b = e.counts(b, snBrandKeys, snBrandAmounts, a.brands)
	b = e.counts(b, snStoreKeys, snStoreAmounts, a.stores)
	b = appendPacked(b, snFilters, len(a.filters)*nFilterCounters, func(b []byte, i int) []byte {
		return protowire.AppendVarint(b, protowire.EncodeZigZag(a.filters[i/nFilterCounters][i%nFilterCounters]))
	})
	numbers := 0
	b = appendPacked(b, snLabelValues, len(s.labels), func(b []byte, i int) []byte {
		v := s.labels[i]
		switch {
		case !v.ok:
			return append(b, lvAbsent)
		case v.f != 0 || math.Signbit(v.f):
			numbers++
			return append(b, lvNumber)
		case v.b:
			return append(b, lvTrue)
		case v.e > 0:
			return protowire.AppendVarint(b, lvEnum+uint64(v.e))
		}
		return append(b, lvZero)
	})
	if numbers > 0 {
		b = protowire.AppendTag(b, snLabelNumbers, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(8*numbers))
		for _, v := range s.labels {
			if v.ok && (v.f != 0 || math.Signbit(v.f)) {
				b = protowire.AppendFixed64(b, math.Float64bits(v.f))
			}
		}
	}
	if stale {
		b = appendUint(b, snStale, 1)
	}
	return b
}

func (e *stateEncoder) counts(b []byte, keys, counts protowire.Number, k keyCounts) []byte {
	if len(k) == 0 {
		return b
	}
	b = appendPacked(b, keys, len(k), func(b []byte, i int) []byte { return protowire.AppendVarint(b, e.ref(k[i].key)) })
	return appendPacked(b, counts, len(k), func(b []byte, i int) []byte {
		return protowire.AppendVarint(b, protowire.EncodeZigZag(k[i].n))
	})
}

// maxKeptStrings bounds the string list kept from decoding: past it the
// state's strings are listed again from what it uses.
const maxKeptStrings = 256

func appendRaw(b []byte, num protowire.Number, raw string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(len(raw)))
	return append(b, raw...)
}

func appendUint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendInt(b []byte, num protowire.Number, v int64) []byte { return appendUint(b, num, uint64(v)) }

// purchaseInts and lifetimeInts say where the int64 fields of a Purchase
// (at to points) and of a Lifetime live, by field number (nil: not one of
// them): one table for the encoder and the decoder.
func purchaseInts(p *Purchase) [puPoints + 1]*int64 {
	return [...]*int64{puAt: &p.At, puAmount: &p.Amount, puDiscount: &p.Discount, puPoints: &p.Points}
}

func lifetimeInts(l *Lifetime) [lfLastSeen + 1]*int64 {
	return [...]*int64{lfSpend: &l.Spend, lfOrders: &l.Orders, lfRefunded: &l.Refunded,
		lfFirstPurchase: &l.FirstPurchase, lfLastPurchase: &l.LastPurchase, lfFirstSeen: &l.FirstSeen, lfLastSeen: &l.LastSeen}
}

// appendInts appends the fields of a table of int64 fields, in field
// number order.
func appendInts(b []byte, ints []*int64) []byte {
	for num, v := range ints {
		if v != nil {
			b = appendInt(b, protowire.Number(num), *v)
		}
	}
	return b
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendFixed(b []byte, num protowire.Number, v []uint64) []byte {
	if len(v) == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(8*len(v)))
	for _, x := range v {
		b = protowire.AppendFixed64(b, x)
	}
	return b
}

// appendPacked appends a packed repeated varint field of n elements.
func appendPacked(b []byte, num protowire.Number, n int, elem func(b []byte, i int) []byte) []byte {
	if n == 0 {
		return b
	}
	return appendMsg(b, num, func(b []byte) []byte {
		for i := range n {
			b = elem(b, i)
		}
		return b
	})
}

// appendMsg appends a length-delimited field whose content body appends,
// moving the content when its length needs more than the one byte
// reserved.
func appendMsg(b []byte, num protowire.Number, body func(b []byte) []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	at := len(b)
	b = append(b, 0)
	b = body(b)
	n := len(b) - at - 1
	if n < 0x80 {
		b[at] = byte(n)
		return b
	}
	extra := protowire.SizeVarint(uint64(n)) - 1
	b = append(b, make([]byte, extra)...)
	copy(b[at+1+extra:], b[at+1:at+1+n])
	protowire.AppendVarint(b[at:at], uint64(n))
	return b
}

func sortedKeys[V any](m map[string]V) []string {
	if len(m) == 1 {
		for k := range m {
			return []string{k}
		}
	}
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// DecodeState decodes a stored feature state: the protobuf form, or JSON
// as stored before (then without a snapshot: its labels are all evaluated
// once and compared with the stored ones). Empty is a new state.
func DecodeState(b []byte) (*State, error) {
	s := &State{}
	if len(b) == 0 {
		return s, nil
	}
	switch b[0] {
	case stateV1:
		if err := decodeV1(s, b[1:], -1); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadState, err)
		}
		return s, nil
	case '{', ' ', '\t', '\n', '\r':
		if err := json.Unmarshal(b, s); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadState, err)
		}
		return s, nil
	case stateBaseV1:
		return nil, fmt.Errorf("%w: the base of a state in two parts, read without its tail", ErrBadState)
	}
	return nil, fmt.Errorf("%w: unknown version byte %#x", ErrBadState, b[0])
}

// DecodeStateParts decodes a state stored in two parts (EncodeStateParts);
// without a tail, the base is a whole state (DecodeState). An empty base is
// a new state, as an empty whole state is: a state wiped (to be built
// again by a backfill) whatever tail it had.
func DecodeStateParts(base, tail []byte) (*State, error) {
	if len(tail) == 0 || len(base) == 0 {
		return DecodeState(base)
	}
	if base[0] != stateBaseV1 || tail[0] != stateV1 {
		return nil, fmt.Errorf("%w: a tail over a base that is not in the binary form", ErrBadState)
	}
	whole := make([]byte, 0, len(base)+len(tail)-2)
	whole = append(append(whole, base[1:]...), tail[1:]...)
	s := &State{}
	if err := decodeV1(s, whole, len(base)-1); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadState, err)
	}
	return s, nil
}

// decoder reads the fields of one message in buf. Strings are taken from
// str, a string copy of the whole encoding, at the same offsets, so they
// share one allocation.
type decoder struct {
	buf []byte
	off int // of buf in the whole encoding
	*shared
}

// shared is what the decoders of one state share: the string copy, the
// string list, the first error, scratch space and the slabs records take
// their slices from.
type shared struct {
	whole string
	strs  []string
	err   error

	// Scratch, reused by every purchase: category and brand keys and
	// amounts, matched and undecided filter words.
	catKeys, brandKeys []uint64
	catVals, brandVals []uint64
	fm, fu             []uint64
	// Scratch for the snapshot's lists.
	lists [snLabelNumbers + 1][]uint64
	// Slabs the purchases' slices are cut from.
	amountSlab Amounts
	wordSlab   []uint64
}

func (s *shared) fail(err error) {
	if s.err == nil {
		s.err = err
	}
}

// field is one field of a message: its number, wire type, value (varint
// and fixed) or, for length-delimited fields, its content and where that
// starts in the whole encoding.
type field struct {
	num protowire.Number
	typ protowire.Type
	v   uint64
	b   []byte
	off int
}

// next reads the next field into f; false at the end or on an error.
func (d *decoder) next(f *field) bool {
	buf := d.buf
	if len(buf) == 0 || d.err != nil {
		return false
	}
	n := 1
	if t := buf[0]; t < 0x80 { // most tags are one byte
		f.num, f.typ = protowire.Number(t>>3), protowire.Type(t&7)
	} else if f.num, f.typ, n = protowire.ConsumeTag(buf); n < 0 {
		d.fail(protowire.ParseError(n))
		return false
	}
	buf = buf[n:]
	switch f.typ {
	case protowire.VarintType:
		if len(buf) > 0 && buf[0] < 0x80 {
			f.v, n = uint64(buf[0]), 1
		} else {
			f.v, n = protowire.ConsumeVarint(buf)
		}
	case protowire.BytesType:
		var l uint64
		if len(buf) > 0 && buf[0] < 0x80 {
			l, n = uint64(buf[0]), 1
		} else {
			l, n = protowire.ConsumeVarint(buf)
		}
		if n >= 0 {
			if l > uint64(len(buf)-n) {
				n = -1 // protowire: unexpected EOF
				break
			}
			f.b, f.off = buf[n:n+int(l)], d.off+len(d.buf)-len(buf)+n
			n += int(l)
		}
	case protowire.Fixed64Type:
		f.v, n = protowire.ConsumeFixed64(buf)
	case protowire.Fixed32Type:
		var v uint32
		v, n = protowire.ConsumeFixed32(buf)
		f.v = uint64(v)
	default:
		n = protowire.ConsumeFieldValue(f.num, f.typ, buf)
	}
	if n < 0 {
		d.fail(protowire.ParseError(n))
		return false
	}
	buf = buf[n:]
	d.off += len(d.buf) - len(buf)
	d.buf = buf
	return true
}

// str is a string field's content, from the string copy.
func (d *decoder) str(f *field) string {
	if f.typ != protowire.BytesType {
		d.fail(fmt.Errorf("field %d: wire type %d, want bytes", f.num, f.typ))
		return ""
	}
	return d.whole[f.off : f.off+len(f.b)]
}

// u is a varint field's value.
func (d *decoder) u(f *field) uint64 {
	if f.typ != protowire.VarintType {
		d.fail(fmt.Errorf("field %d: wire type %d, want varint", f.num, f.typ))
	}
	return f.v
}

// msg is a decoder of a message field's content.
func (d *decoder) msg(f *field) decoder {
	if f.typ != protowire.BytesType {
		d.fail(fmt.Errorf("field %d: wire type %d, want bytes", f.num, f.typ))
		return decoder{shared: d.shared}
	}
	return decoder{buf: f.b, off: f.off, shared: d.shared}
}

// ref resolves a string reference.
func (d *decoder) ref(v uint64) string {
	if v == 0 {
		return ""
	}
	if v > uint64(len(d.strs)) {
		d.fail(fmt.Errorf("string %d of %d", v, len(d.strs)))
		return ""
	}
	return d.strs[v-1]
}

// nextOther is next, reading the fields a table of int64 fields
// (purchaseInts, lifetimeInts) has into it on the way: it stops at the
// other fields.
func (d *decoder) nextOther(f *field, ints []*int64) bool {
	for d.next(f) {
		if int(f.num) >= len(ints) || ints[f.num] == nil {
			return true
		}
		*ints[f.num] = int64(d.u(f))
	}
	return false
}

// repeated reads f as a repeated field of elements of wire type elem,
// packed or not: it appends f's one element (f.v) to dst and reports done,
// or returns the packed content; a field of another wire type fails the
// decoder and reports done.
func (d *decoder) repeated(dst []uint64, f *field, elem protowire.Type, want string) (_ []uint64, packed []byte, done bool) {
	switch f.typ {
	case elem:
		return append(dst, f.v), nil, true
	case protowire.BytesType:
		return dst, f.b, false
	}
	d.fail(fmt.Errorf("field %d: wire type %d, want %s", f.num, f.typ, want))
	return dst, nil, true
}

// varints appends the elements of a repeated varint field, packed or not,
// to dst.
func (d *decoder) varints(dst []uint64, f *field) []uint64 {
	dst, b, done := d.repeated(dst, f, protowire.VarintType, "varints")
	if done {
		return dst
	}
	for len(b) > 0 {
		if b[0] < 0x80 {
			dst = append(dst, uint64(b[0]))
			b = b[1:]
			continue
		}
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			d.fail(protowire.ParseError(n))
			return dst
		}
		dst = append(dst, v)
		b = b[n:]
	}
	return dst
}

// fixed64s appends the elements of a repeated fixed64 or double field,
// packed or not, to dst.
func (d *decoder) fixed64s(dst []uint64, f *field) []uint64 {
	dst, b, done := d.repeated(dst, f, protowire.Fixed64Type, "fixed64s")
	if done {
		return dst
	}
	if len(b)%8 != 0 {
		d.fail(fmt.Errorf("field %d: %d bytes of fixed64s", f.num, len(b)))
		return dst
	}
	for ; len(b) > 0; b = b[8:] {
		dst = append(dst, binary.LittleEndian.Uint64(b))
	}
	return dst
}

var decoders = sync.Pool{New: func() any { return &shared{} }}

// decodeV1 decodes the protobuf form b; baseEnd, when not negative, is
// where the base part ends in it and a tail begins (DecodeStateParts).
func decodeV1(s *State, b []byte, baseEnd int) error {
	sh := decoders.Get().(*shared)
	sh.whole = string(b)
	defer func() {
		clear(sh.strs)
		*sh = shared{strs: sh.strs[:0], catKeys: sh.catKeys, brandKeys: sh.brandKeys, catVals: sh.catVals,
			brandVals: sh.brandVals, fm: sh.fm, fu: sh.fu, lists: sh.lists}
		decoders.Put(sh)
	}()
	top := decoder{buf: b, shared: sh}
	// The strings first, wherever they are, and how many records.
	var f field
	np, na := 0, 0
	base := stateBase{bytes: baseEnd + 1}
	metaInBase := false
	scan := top
	for scan.next(&f) {
		in := f.off < baseEnd
		switch f.num {
		case stStrings:
			sh.strs = append(sh.strs, scan.str(&f))
			if in {
				base.strings++
			}
		case stPurchases:
			np++
		case stActs:
			na++
		case stLifetimes, stSnapshot:
			metaInBase = metaInBase || in
		}
		if in && (f.num == stPurchases || f.num == stActs) {
			base.records++
		}
	}
	if sh.err != nil {
		return sh.err
	}
	s.dict = &dictionary{strs: slices.Clone(sh.strs)}
	// Room for the event the worker folds next.
	if np > 0 {
		slab := make([]Purchase, np)
		s.Purchases = make([]*Purchase, np, np+1)
		for i := range slab {
			s.Purchases[i] = &slab[i]
		}
		sh.amountSlab = make(Amounts, 0, 4*np)
		sh.wordSlab = make([]uint64, 0, 2*np)
	}
	if na > 0 {
		s.Acts = make([]Act, na, na+1)
	}
	pi, ai := 0, 0
	for d := top; d.next(&f); {
		switch f.num {
		case stPurchases:
			sub := d.msg(&f)
			p := s.Purchases[pi]
			decodePurchase(&sub, p)
			p.stored = stored{raw: sh.whole[f.off : f.off+len(f.b)], dict: s.dict, inBase: f.off < baseEnd}
			pi++
		case stActs:
			sub := d.msg(&f)
			a := &s.Acts[ai]
			decodeAct(&sub, a)
			a.stored = stored{raw: sh.whole[f.off : f.off+len(f.b)], dict: s.dict, inBase: f.off < baseEnd}
			ai++
		case stLifetimes:
			l := &Lifetime{}
			sub := d.msg(&f)
			origin := decodeLifetime(&sub, l)
			if s.Life == nil {
				s.Life = map[string]*Lifetime{}
			}
			s.Life[origin] = l
		case stSnapshot:
			s.snap = &snapshot{}
			sub := d.msg(&f)
			s.stale = decodeSnapshot(&sub, s.snap)
		}
	}
	if sh.err != nil {
		return sh.err
	}
	// Records are stored in time order; a state from elsewhere may not be.
	// A base and its tail are each in order, and the tail's records were
	// added after the base's: a stable sort gives the order they had.
	if !slices.IsSortedFunc(s.Purchases, func(a, b *Purchase) int { return cmp.Compare(a.At, b.At) }) ||
		!slices.IsSortedFunc(s.Acts, func(a, b Act) int { return cmp.Compare(a.At, b.At) }) {
		s.sort()
		s.stale = s.stale || baseEnd < 0
	}
	// A base written with its lifetimes and snapshot (a whole state, as
	// stored before tails) is written again whole before a tail goes over
	// it.
	if baseEnd >= 0 && !metaInBase {
		s.base = &base
	}
	return nil
}

// amounts returns key references and amounts as Amounts cut from the
// slab.
func (d *decoder) amounts(keys, vals []uint64) Amounts {
	if len(keys) != len(vals) {
		d.fail(fmt.Errorf("%d keys, %d amounts", len(keys), len(vals)))
		return nil
	}
	if len(keys) == 0 {
		return nil
	}
	start := len(d.amountSlab)
	for i, k := range keys {
		d.amountSlab = append(d.amountSlab, Amount{Key: d.ref(k), Minor: int64(vals[i])})
	}
	out := d.amountSlab[start:len(d.amountSlab):len(d.amountSlab)]
	if !slices.IsSortedFunc(out, func(a, b Amount) int { return strings.Compare(a.Key, b.Key) }) {
		slices.SortFunc(out, func(a, b Amount) int { return strings.Compare(a.Key, b.Key) })
	}
	return out
}

// words returns filter words cut from the slab.
func (d *decoder) words(w []uint64) filterBits {
	if len(w) == 0 {
		return nil
	}
	start := len(d.wordSlab)
	d.wordSlab = append(d.wordSlab, w...)
	return d.wordSlab[start:len(d.wordSlab):len(d.wordSlab)]
}

func decodePurchase(d *decoder, p *Purchase) {
	var f field
	d.catKeys, d.catVals, d.brandKeys, d.brandVals = d.catKeys[:0], d.catVals[:0], d.brandKeys[:0], d.brandVals[:0]
	d.fm, d.fu = d.fm[:0], d.fu[:0]
	ints := purchaseInts(p)
	for d.nextOther(&f, ints[:]) {
		switch f.num {
		case puEvent:
			p.Event = d.str(&f)
		case puOrder:
			p.Order = d.str(&f)
		case puCoupons:
			p.Coupons = int(int64(d.u(&f)))
		case puChannel:
			p.Channel = d.ref(d.u(&f))
		case puStore:
			p.Store = d.ref(d.u(&f))
		case puOrigin:
			p.Origin = d.ref(d.u(&f))
		case puItemsKnown:
			p.ItemsKnown = d.u(&f) != 0
		case puQuantity:
			p.Quantity = int64(d.u(&f))
		case puCategoryKeys:
			d.catKeys = d.varints(d.catKeys, &f)
		case puCategoryAmounts:
			d.catVals = d.varints(d.catVals, &f)
		case puBrandKeys:
			d.brandKeys = d.varints(d.brandKeys, &f)
		case puBrandAmounts:
			d.brandVals = d.varints(d.brandVals, &f)
		case puFilterVersion:
			p.FV = d.ref(d.u(&f))
		case puFilterMatched:
			d.fm = d.fixed64s(d.fm, &f)
		case puFilterUndecided:
			d.fu = d.fixed64s(d.fu, &f)
		}
	}
	p.Categories = d.amounts(d.catKeys, d.catVals)
	p.Brands = d.amounts(d.brandKeys, d.brandVals)
	p.FM, p.FU = d.words(d.fm), d.words(d.fu)
}

func decodeAct(d *decoder, a *Act) {
	var f field
	for d.next(&f) {
		switch f.num {
		case acEvent:
			a.Event = d.str(&f)
		case acAt:
			a.At = int64(d.u(&f))
		case acKind:
			a.Kind = d.ref(d.u(&f))
		case acOrder:
			a.Order = d.str(&f)
		case acAmount:
			a.Amount = int64(d.u(&f))
		case acRating:
			a.Rating = int(int64(d.u(&f)))
		case acOrigin:
			a.Origin = d.ref(d.u(&f))
		}
	}
}

func decodeLifetime(d *decoder, l *Lifetime) (origin string) {
	var f field
	ints := lifetimeInts(l)
	for d.nextOther(&f, ints[:]) {
		switch f.num {
		case lfOrigin:
			origin = d.ref(d.u(&f))
		case lfSignedUp:
			l.SignedUp = d.u(&f) != 0
		}
	}
	return origin
}

// decodeSnapshot reads a snapshot and reports whether the state was
// stored stale.
func decodeSnapshot(d *decoder, s *snapshot) (stale bool) {
	var f field
	for i := range d.lists {
		d.lists[i] = d.lists[i][:0]
	}
	for d.next(&f) {
		switch f.num {
		case snCatalogue:
			if f.typ != protowire.Fixed64Type {
				d.fail(fmt.Errorf("field %d: wire type %d, want fixed64", f.num, f.typ))
			}
			s.catalogue = f.v
		case snEngine:
			s.engine = uint32(d.u(&f))
		case snAt:
			s.at = int64(d.u(&f))
		case snWithheld:
			s.withheld = d.u(&f) != 0
		case snLifetime:
			sub := d.msg(&f)
			decodeLifetime(&sub, &s.life.Lifetime)
			s.life.any = true
		case snBirthDate:
			s.demo.BirthDate = d.str(&f)
		case snGender:
			s.demo.Gender = d.str(&f)
		case snCity:
			s.demo.City = d.str(&f)
		case snDevice:
			s.device = int64(d.u(&f))
		case snStale:
			stale = d.u(&f) != 0
		case snLabelNumbers:
			d.lists[f.num] = d.fixed64s(d.lists[f.num], &f)
		case snWindows, snTotals, snChannelKeys, snChannelCounts, snCategoryKeys, snCategoryAmounts, snBrandKeys,
			snBrandAmounts, snStoreKeys, snStoreAmounts, snFilters, snLabelValues:
			d.lists[f.num] = d.varints(d.lists[f.num], &f)
		}
	}
	// Label values by code, numbers taken in order.
	codes, numbers := d.lists[snLabelValues], d.lists[snLabelNumbers]
	s.labels = make([]lval, len(codes))
	for i, code := range codes {
		switch {
		case code == lvAbsent:
		case code == lvZero:
			s.labels[i] = lval{ok: true}
		case code == lvTrue:
			s.labels[i] = lval{ok: true, b: true}
		case code == lvNumber:
			if len(numbers) == 0 {
				d.fail(errors.New("fewer label numbers than number labels"))
				return stale
			}
			s.labels[i] = lval{ok: true, f: math.Float64frombits(numbers[0])}
			numbers = numbers[1:]
		case code-lvEnum <= math.MaxUint16:
			s.labels[i] = lval{ok: true, e: uint16(code - lvEnum)}
		default:
			d.fail(fmt.Errorf("label value code %d", code))
		}
	}
	a := &s.agg
	a.next = math.MaxInt64
	windows, totals, filters := d.lists[snWindows], d.lists[snTotals], d.lists[snFilters]
	if len(windows) != nWindows*nCounters || len(totals) != nTotals || len(filters)%nFilterCounters != 0 {
		// Not aggregates this code wrote: keep the labels, never the sums.
		s.engine = 0
		return stale
	}
	for i, v := range windows {
		a.win[i/nCounters][i%nCounters] = protowire.DecodeZigZag(v)
	}
	t := func(i int) int64 { return protowire.DecodeZigZag(totals[i]) }
	a.prevNet, a.prevOrders, a.reviews, a.ratings = t(tPrevNet), t(tPrevOrders), t(tReviews), t(tRatings)
	a.days, a.firstDay, a.lastDay, a.firstDayGross = t(tDays), t(tFirstDay), t(tLastDay), t(tFirstDayGross)
	a.catKnown, a.brandKnown, a.storeKnown, a.next = t(tCatKnown), t(tBrandKnown), t(tStoreKnown), t(tNext)
	if len(filters) > 0 {
		a.filters = make([][nFilterCounters]int64, len(filters)/nFilterCounters)
		for i, v := range filters {
			a.filters[i/nFilterCounters][i%nFilterCounters] = protowire.DecodeZigZag(v)
		}
	}
	a.channels = zipCounts(d, d.lists[snChannelKeys], d.lists[snChannelCounts])
	a.categories = zipCounts(d, d.lists[snCategoryKeys], d.lists[snCategoryAmounts])
	a.brands = zipCounts(d, d.lists[snBrandKeys], d.lists[snBrandAmounts])
	a.stores = zipCounts(d, d.lists[snStoreKeys], d.lists[snStoreAmounts])
	return stale
}

func zipCounts(d *decoder, keys, n []uint64) keyCounts {
	if len(keys) != len(n) {
		d.fail(fmt.Errorf("%d keys, %d counts", len(keys), len(n)))
		return nil
	}
	if len(keys) == 0 {
		return nil
	}
	out := make(keyCounts, len(keys))
	for i := range keys {
		out[i] = keyCount{key: d.ref(keys[i]), n: protowire.DecodeZigZag(n[i])}
	}
	if !slices.IsSortedFunc(out, func(a, b keyCount) int { return strings.Compare(a.key, b.key) }) {
		slices.SortFunc(out, func(a, b keyCount) int { return strings.Compare(a.key, b.key) })
	}
	return out
}
