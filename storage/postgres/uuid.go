package postgres

import (
	"encoding/binary"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
)

// registerTypes teaches a connection's type map github.com/google/uuid's
// UUID as the 16 bytes it is. Left alone, pgx encodes a uuid.UUID through
// its driver.Valuer (a string, planned and parsed again for every value:
// for the arrays of member ids the batch statements send, a third of the
// benefit service's CPU) and scans it through sql.Scanner (a string, then
// parsed). Arrays of uuid.UUID, *uuid.UUID and []byte are written straight
// into the binary format (uuidArrayCodec, byteaArrayCodec).
func registerTypes(m *pgtype.Map) {
	t := &pgtype.Type{Name: "uuid", OID: pgtype.UUIDOID, Codec: uuidCodec{}}
	m.RegisterType(t)
	m.RegisterType(&pgtype.Type{Name: "_uuid", OID: pgtype.UUIDArrayOID, Codec: uuidArrayCodec{&pgtype.ArrayCodec{ElementType: t}}})
	bytea, _ := m.TypeForOID(pgtype.ByteaOID)
	m.RegisterType(&pgtype.Type{Name: "_bytea", OID: pgtype.ByteaArrayOID, Codec: byteaArrayCodec{&pgtype.ArrayCodec{ElementType: bytea}}})
}

// uuidArrayCodec is uuid[]'s pgtype.ArrayCodec that writes []uuid.UUID
// and []*uuid.UUID (a nil pointer is a NULL element) straight into
// PostgreSQL's binary array format. pgx's own path reads such a slice
// through reflection and boxes every element, twice, on its way to the
// element's plan: 4-5% of the process's CPU in a drain of the pipeline
// and in Commit at saturation, whose batch statements send member ids as
// arrays.
type uuidArrayCodec struct{ *pgtype.ArrayCodec }

func (c uuidArrayCodec) PlanEncode(m *pgtype.Map, oid uint32, format int16, value any) pgtype.EncodePlan {
	if format == pgtype.BinaryFormatCode {
		switch value.(type) {
		case []uuid.UUID:
			return encodeUUIDArray{}
		case []*uuid.UUID:
			return encodeUUIDPointerArray{}
		}
	}
	return c.ArrayCodec.PlanEncode(m, oid, format, value)
}

// appendArrayHeader appends the header of a one-dimensional array of n
// elements of type elem (one dimension of length 0 when empty, as pgx
// writes it).
func appendArrayHeader(buf []byte, elem uint32, n int, hasNull bool) []byte {
	var null uint32
	if hasNull {
		null = 1
	}
	buf = binary.BigEndian.AppendUint32(buf, 1) // dimensions
	buf = binary.BigEndian.AppendUint32(buf, null)
	buf = binary.BigEndian.AppendUint32(buf, elem)
	buf = binary.BigEndian.AppendUint32(buf, uint32(n))
	return binary.BigEndian.AppendUint32(buf, 1) // lower bound
}

type encodeUUIDArray struct{}

// Encode writes a nil slice as NULL, as pgx does.
func (encodeUUIDArray) Encode(value any, buf []byte) ([]byte, error) {
	ids := value.([]uuid.UUID)
	if ids == nil {
		return nil, nil
	}
	buf = appendArrayHeader(buf, pgtype.UUIDOID, len(ids), false)
	for i := range ids {
		buf = binary.BigEndian.AppendUint32(buf, 16)
		buf = append(buf, ids[i][:]...)
	}
	return buf, nil
}

type encodeUUIDPointerArray struct{}

func (encodeUUIDPointerArray) Encode(value any, buf []byte) ([]byte, error) {
	ids := value.([]*uuid.UUID)
	if ids == nil {
		return nil, nil
	}
	hasNull := false
	for _, id := range ids {
		hasNull = hasNull || id == nil
	}
	buf = appendArrayHeader(buf, pgtype.UUIDOID, len(ids), hasNull)
	for _, id := range ids {
		if id == nil {
			buf = binary.BigEndian.AppendUint32(buf, 0xFFFFFFFF) // -1: NULL
			continue
		}
		buf = binary.BigEndian.AppendUint32(buf, 16)
		buf = append(buf, id[:]...)
	}
	return buf, nil
}

// uuidCodec is pgtype.UUIDCodec that also encodes uuid.UUID and scans into
// *uuid.UUID directly.
type uuidCodec struct{ pgtype.UUIDCodec }

func (c uuidCodec) PlanEncode(m *pgtype.Map, oid uint32, format int16, value any) pgtype.EncodePlan {
	if _, ok := value.(uuid.UUID); ok {
		next := c.UUIDCodec.PlanEncode(m, oid, format, pgtype.UUID{Valid: true})
		if next == nil {
			return nil
		}
		return encodeGoogleUUID{next: next}
	}
	return c.UUIDCodec.PlanEncode(m, oid, format, value)
}

type encodeGoogleUUID struct{ next pgtype.EncodePlan }

func (p encodeGoogleUUID) Encode(value any, buf []byte) ([]byte, error) {
	return p.next.Encode(pgtype.UUID{Bytes: value.(uuid.UUID), Valid: true}, buf)
}

func (c uuidCodec) PlanScan(m *pgtype.Map, oid uint32, format int16, target any) pgtype.ScanPlan {
	if _, ok := target.(*uuid.UUID); ok {
		return scanGoogleUUID{format: format}
	}
	return c.UUIDCodec.PlanScan(m, oid, format, target)
}

type scanGoogleUUID struct{ format int16 }

// Scan leaves the target alone on a NULL, as uuid.UUID's sql.Scanner does.
func (p scanGoogleUUID) Scan(src []byte, dst any) error {
	u := dst.(*uuid.UUID)
	switch {
	case src == nil:
	case p.format == pgtype.BinaryFormatCode:
		if len(src) != 16 {
			return fmt.Errorf("invalid length for uuid: %d", len(src))
		}
		*u = uuid.UUID(src)
	default:
		v, err := uuid.ParseBytes(src)
		if err != nil {
			return err
		}
		*u = v
	}
	return nil
}

// byteaArrayCodec is bytea[]'s pgtype.ArrayCodec that writes [][]byte (a
// nil element is NULL) straight into the binary array format, for the same
// reason as uuidArrayCodec: the batch statements send payloads, states
// and responses as such arrays.
type byteaArrayCodec struct{ *pgtype.ArrayCodec }

func (c byteaArrayCodec) PlanEncode(m *pgtype.Map, oid uint32, format int16, value any) pgtype.EncodePlan {
	if _, ok := value.([][]byte); ok && format == pgtype.BinaryFormatCode {
		return encodeByteaArray{}
	}
	return c.ArrayCodec.PlanEncode(m, oid, format, value)
}

type encodeByteaArray struct{}

func (encodeByteaArray) Encode(value any, buf []byte) ([]byte, error) {
	vs := value.([][]byte)
	if vs == nil {
		return nil, nil
	}
	hasNull := false
	for _, v := range vs {
		hasNull = hasNull || v == nil
	}
	buf = appendArrayHeader(buf, pgtype.ByteaOID, len(vs), hasNull)
	for _, v := range vs {
		if v == nil {
			buf = binary.BigEndian.AppendUint32(buf, 0xFFFFFFFF) // -1: NULL
			continue
		}
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(v)))
		buf = append(buf, v...)
	}
	return buf, nil
}
