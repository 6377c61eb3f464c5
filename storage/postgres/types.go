package postgres

import (
	"encoding/binary"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
)

// registerTypes teaches a connection's type map github.com/google/uuid's
// UUID as the 16 bytes it is (uuidCodec). Left alone, pgx encodes a
// uuid.UUID through its driver.Valuer (a string, planned and parsed again
// for every value: for the arrays of member ids the batch statements send,
// a third of the benefit service's CPU) and scans it through sql.Scanner
// (a string, then parsed). The arrays the batch statements send are
// written straight into the binary format (fastArrayCodec).
func registerTypes(m *pgtype.Map) {
	m.RegisterType(&pgtype.Type{Name: "uuid", OID: pgtype.UUIDOID, Codec: uuidCodec{}})
	for _, a := range []struct {
		name      string
		oid, elem uint32
		plan      func(elem uint32, value any) pgtype.EncodePlan
	}{
		{"_uuid", pgtype.UUIDArrayOID, pgtype.UUIDOID, func(elem uint32, value any) pgtype.EncodePlan {
			return plan(elem, value, func(b []byte, v uuid.UUID) []byte { return append(b, v[:]...) }, fixed[uuid.UUID](16))
		}},
		{"_bytea", pgtype.ByteaArrayOID, pgtype.ByteaOID, func(elem uint32, value any) pgtype.EncodePlan {
			if _, ok := value.([][]byte); ok { // a nil []byte is NULL
				return encodeArray[[]byte]{elem, func(b []byte, v []byte) ([]byte, bool) { return append(b, v...), v == nil }, func(v []byte) int { return len(v) }}
			}
			return nil
		}},
		{"_text", pgtype.TextArrayOID, pgtype.TextOID, func(elem uint32, value any) pgtype.EncodePlan {
			return plan(elem, value, func(b []byte, v string) []byte { return append(b, v...) }, func(v string) int { return len(v) })
		}},
		{"_int8", pgtype.Int8ArrayOID, pgtype.Int8OID, func(elem uint32, value any) pgtype.EncodePlan {
			return plan(elem, value, func(b []byte, v int64) []byte { return binary.BigEndian.AppendUint64(b, uint64(v)) }, fixed[int64](8))
		}},
		{"_timestamptz", pgtype.TimestamptzArrayOID, pgtype.TimestamptzOID, func(elem uint32, value any) pgtype.EncodePlan {
			return plan(elem, value, appendTimestamptz, fixed[time.Time](8))
		}},
	} {
		if elem, ok := m.TypeForOID(a.elem); ok { // pgx registers every one of them
			m.RegisterType(&pgtype.Type{Name: a.name, OID: a.oid, Codec: fastArrayCodec{&pgtype.ArrayCodec{ElementType: elem}, a.plan}})
		}
	}
}

// plan is the plan writing value, when it is a []T or a []*T (a nil
// pointer is a NULL element), as an array of elem, each element by put,
// which appends size(v) bytes; nil for any other value.
func plan[T any](elem uint32, value any, put func(buf []byte, v T) []byte, size func(v T) int) pgtype.EncodePlan {
	switch value.(type) {
	case []T:
		return encodeArray[T]{elem, func(b []byte, v T) ([]byte, bool) { return put(b, v), false }, size}
	case []*T:
		return encodeArray[*T]{elem, func(b []byte, v *T) ([]byte, bool) {
			if v == nil {
				return b, true
			}
			return put(b, *v), false
		}, func(v *T) int {
			if v == nil {
				return 0
			}
			return size(*v)
		}}
	}
	return nil
}

// fixed is the size function of a type whose binary form is n bytes.
func fixed[T any](n int) func(T) int { return func(T) int { return n } }

// fastArrayCodec is an array type's pgtype.ArrayCodec that writes the
// slices its plan knows straight into PostgreSQL's binary array format. pgx's
// own path boxes every element on its way to the element's plan, and reads
// a slice of a type it does not list ([]uuid.UUID, [][]byte) through
// reflection: parameter encoding was 7% of the process's CPU in Commit at
// saturation, whose batch statements send every column as an array.
// Anything else (other slices, the text format, scans) is the
// ArrayCodec's.
type fastArrayCodec struct {
	*pgtype.ArrayCodec
	plan func(elem uint32, value any) pgtype.EncodePlan // elem: the element type's OID
}

func (c fastArrayCodec) PlanEncode(m *pgtype.Map, oid uint32, format int16, value any) pgtype.EncodePlan {
	if format == pgtype.BinaryFormatCode {
		if p := c.plan(c.ElementType.OID, value); p != nil {
			return p
		}
	}
	return c.ArrayCodec.PlanEncode(m, oid, format, value)
}

// encodeArray writes a []T as a one-dimensional array of elem, each
// element by put, which appends its binary form (size bytes) or says it is
// NULL. A nil slice is NULL and an empty one has one dimension of length
// 0, as pgx writes them. The buffer grows once, to the array's size: pgx
// hands every statement a buffer of at most 256 bytes, and appending a
// batch's column to it grew and copied it a dozen times.
type encodeArray[T any] struct {
	elem uint32
	put  func(buf []byte, v T) (out []byte, null bool)
	size func(v T) int
}

func (p encodeArray[T]) Encode(value any, buf []byte) ([]byte, error) {
	vs := value.([]T)
	if vs == nil {
		return nil, nil
	}
	n := 20 + 4*len(vs)
	for i := range vs {
		n += p.size(vs[i])
	}
	buf = slices.Grow(buf, n)
	flags := len(buf) + 4
	buf = binary.BigEndian.AppendUint32(buf, 1) // dimensions
	buf = binary.BigEndian.AppendUint32(buf, 0) // has NULLs: set below
	buf = binary.BigEndian.AppendUint32(buf, p.elem)
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(vs)))
	buf = binary.BigEndian.AppendUint32(buf, 1) // lower bound
	for i := range vs {
		at := len(buf)
		buf = append(buf, 0, 0, 0, 0)
		var null bool
		if buf, null = p.put(buf, vs[i]); null {
			binary.BigEndian.PutUint32(buf[at:], 0xFFFFFFFF) // length -1
			binary.BigEndian.PutUint32(buf[flags:], 1)
			continue
		}
		binary.BigEndian.PutUint32(buf[at:], uint32(len(buf)-at-4))
	}
	return buf, nil
}

// appendTimestamptz appends t in timestamptz's binary form, microseconds
// since 2000-01-01 UTC, as pgx writes a time.Time.
func appendTimestamptz(buf []byte, t time.Time) []byte {
	return binary.BigEndian.AppendUint64(buf, uint64(t.Unix()*1_000_000+int64(t.Nanosecond())/1000-y2kMicros))
}

// y2kMicros is 2000-01-01 UTC in microseconds since the Unix epoch.
const y2kMicros = 946_684_800_000_000
