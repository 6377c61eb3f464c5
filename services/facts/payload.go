package facts

import (
	"bytes"
	"math"
	"math/bits"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// changePayload is the change as JSON (member_changes.payload): what
// protojson writes, field for field and value for value.
//
// A LabelsChanged change carries its labels (16 a purchase on average, each
// with its time), and protojson walks them through reflection: 8% of
// membercenter's CPU in the pipeline's drain went to it. Its labels are
// written here by hand and the rest of the change by protojson. Anything
// the hand-written part does not write exactly as protojson would (a
// timestamp out of protojson's range, a string that is not UTF-8) goes
// through protojson whole.
//
// m's change is unset while protojson writes the rest: m must not be read
// elsewhere meanwhile (the sink decodes each change for itself).
func changePayload(m *mcv1.MemberChange) string {
	lc, ok := m.GetChange().(*mcv1.MemberChange_LabelsChanged)
	if !ok || lc.LabelsChanged == nil {
		return protojsonString(m)
	}
	// About 125 bytes a label (id, value, time): room for them all at once.
	labels, ok := appendLabelsChanged(make([]byte, 0, 64+128*len(lc.LabelsChanged.GetLabels())), lc.LabelsChanged)
	if !ok {
		return protojsonString(m)
	}
	m.Change = nil
	env, err := protojson.Marshal(m)
	m.Change = lc
	if err != nil || len(env) < 2 || env[len(env)-1] != '}' {
		return protojsonString(m)
	}
	var b strings.Builder
	b.Grow(len(env) + len(labels) + 20)
	b.Write(env[:len(env)-1])
	if len(bytes.TrimSpace(env[1:len(env)-1])) > 0 {
		b.WriteByte(',')
	}
	b.WriteString(`"labelsChanged":`)
	b.Write(labels)
	b.WriteByte('}')
	return b.String()
}

func protojsonString(m *mcv1.MemberChange) string {
	payload, _ := protojson.Marshal(m) // a decoded message always marshals
	return string(payload)
}

// appendLabelsChanged appends lc as protojson writes it (without its
// random white space); false when a value needs protojson's own handling.
func appendLabelsChanged(b []byte, lc *mcv1.LabelsChanged) ([]byte, bool) {
	b = append(b, '{')
	first := true
	ok := true
	if ls := lc.GetLabels(); len(ls) > 0 {
		b = appendName(b, &first, "labels")
		b = append(b, '[')
		var st stamps
		for i, l := range ls {
			if i > 0 {
				b = append(b, ',')
			}
			if b, ok = appendLabelValue(b, l, &st); !ok {
				return b, false
			}
		}
		b = append(b, ']')
	}
	if v := lc.GetCatalogVersion(); v != "" {
		b = appendName(b, &first, "catalogVersion")
		if b, ok = appendString(b, v); !ok {
			return b, false
		}
	}
	return append(b, '}'), true
}

// stamps remembers the last timestamp appended and its text: the labels of
// a change are mostly computed at one moment, and formatting the time was
// a third of writing them.
type stamps struct {
	secs  int64
	nanos int32
	text  []byte
}

func (s *stamps) append(b []byte, t *timestamppb.Timestamp) ([]byte, bool) {
	if s.text != nil && t.GetSeconds() == s.secs && t.GetNanos() == s.nanos {
		return append(b, s.text...), true
	}
	start := len(b)
	b, ok := appendTimestamp(b, t)
	if ok {
		s.secs, s.nanos, s.text = t.GetSeconds(), t.GetNanos(), append(s.text[:0], b[start:]...)
	}
	return b, ok
}

func appendLabelValue(b []byte, l *mcv1.LabelValue, st *stamps) ([]byte, bool) {
	b = append(b, '{')
	first := true
	ok := true
	if id := l.GetLabelId(); id != "" {
		b = appendName(b, &first, "labelId")
		if b, ok = appendString(b, id); !ok {
			return b, false
		}
	}
	// A value set in the oneof is written even when it is the zero value.
	switch v := l.GetValue().(type) {
	case *mcv1.LabelValue_BoolValue:
		b = appendName(b, &first, "boolValue")
		b = strconv.AppendBool(b, v.BoolValue)
	case *mcv1.LabelValue_EnumValue:
		b = appendName(b, &first, "enumValue")
		if b, ok = appendString(b, v.EnumValue); !ok {
			return b, false
		}
	case *mcv1.LabelValue_NumberValue:
		b = appendName(b, &first, "numberValue")
		b = appendFloat(b, v.NumberValue)
	}
	if l.GetCleared() {
		b = appendName(b, &first, "cleared")
		b = append(b, "true"...)
	}
	if t := l.GetComputedAt(); t != nil {
		b = appendName(b, &first, "computedAt")
		if b, ok = st.append(b, t); !ok {
			return b, false
		}
	}
	return append(b, '}'), true
}

// appendName appends the name of an object's member, after a comma unless
// it is the first (first says so, and is then cleared).
func appendName(b []byte, first *bool, name string) []byte {
	if !*first {
		b = append(b, ',')
	}
	*first = false
	b = append(b, '"')
	b = append(b, name...)
	return append(b, '"', ':')
}

// appendString is protojson's string: quotes, backslashes and control
// characters escaped, nothing else; false for a string that is not UTF-8.
func appendString(b []byte, s string) ([]byte, bool) {
	if !utf8.ValidString(s) {
		return b, false
	}
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= ' ' && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		b = append(b, '\\')
		switch c {
		case '"', '\\':
			b = append(b, c)
		case '\b':
			b = append(b, 'b')
		case '\f':
			b = append(b, 'f')
		case '\n':
			b = append(b, 'n')
		case '\r':
			b = append(b, 'r')
		case '\t':
			b = append(b, 't')
		default:
			b = append(b, 'u')
			b = append(b, "0000"[1+(bits.Len32(uint32(c))-1)/4:]...)
			b = strconv.AppendUint(b, uint64(c), 16)
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"'), true
}

// appendFloat is protojson's double: encoding/json's form
// (AppendJSONNumber), and NaN and the infinities as strings.
func appendFloat(b []byte, n float64) []byte {
	switch {
	case math.IsNaN(n):
		return append(b, `"NaN"`...)
	case math.IsInf(n, 1):
		return append(b, `"Infinity"`...)
	case math.IsInf(n, -1):
		return append(b, `"-Infinity"`...)
	}
	return AppendJSONNumber(b, n)
}

// AppendJSONNumber appends a finite number as encoding/json writes it.
func AppendJSONNumber(b []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// e-07 → e-7, as encoding/json writes it.
		if l := len(b); l >= 4 && b[l-4] == 'e' && b[l-3] == '-' && b[l-2] == '0' {
			b[l-2] = b[l-1]
			b = b[:l-1]
		}
	}
	return b
}

// Timestamp bounds protojson accepts: 0001-01-01 to 9999-12-31, UTC.
const (
	minTimestampSeconds = -62135596800
	maxTimestampSeconds = 253402300799
)

// appendTimestamp is protojson's Timestamp: RFC 3339 in UTC with 0, 3, 6 or
// 9 fractional digits; false outside protojson's range.
func appendTimestamp(b []byte, t *timestamppb.Timestamp) ([]byte, bool) {
	secs, nanos := t.GetSeconds(), t.GetNanos()
	if secs < minTimestampSeconds || secs > maxTimestampSeconds || nanos < 0 || nanos >= 1e9 {
		return b, false
	}
	b = append(b, '"')
	b = time.Unix(secs, int64(nanos)).UTC().AppendFormat(b, "2006-01-02T15:04:05")
	if nanos != 0 {
		frac := strconv.AppendInt(nil, int64(nanos)+1e9, 10)[1:] // nine digits
		switch {
		case nanos%1e6 == 0:
			frac = frac[:3]
		case nanos%1e3 == 0:
			frac = frac[:6]
		}
		b = append(b, '.')
		b = append(b, frac...)
	}
	return append(b, 'Z', '"'), true
}
