package postgres

import (
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
)

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
