package pgtest

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/membercenter/membercenter/storage/postgres"
)

// CheckLabelSets verifies that every member's label set (member_label_sets)
// is the boolean labels that are true in its stored labels
// (member_features.labels_pb, a LabelsChanged on the wire): the set is
// written only when a label flips, so a set that drifted would stay wrong.
// A member without stored labels has an empty set or none. Stored labels
// that do not decode are an error.
func CheckLabelSets(ctx context.Context, q postgres.Querier) error {
	rows, err := q.Query(ctx, `SELECT coalesce(f.member_id, s.member_id), f.labels_pb, coalesce(s.labels, '{}')
		  FROM (SELECT member_id, labels_pb FROM member_features WHERE labels_pb IS NOT NULL) f
		  FULL JOIN member_label_sets s USING (member_id)`)
	if err != nil {
		return fmt.Errorf("check label sets: %w", err)
	}
	var member uuid.UUID
	var pb []byte
	var set []string
	var bad []string
	n := 0
	_, err = pgx.ForEachRow(rows, []any{&member, &pb, &set}, func() error {
		want, err := trueLabels(pb)
		if err != nil {
			return fmt.Errorf("member %s's stored labels: %w", member, err)
		}
		slices.Sort(want)
		got := slices.Clone(set)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			n++
			if len(bad) < 3 {
				bad = append(bad, fmt.Sprintf("%s: set %q, true in its labels %q", member, set, want))
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("check label sets: %w", err)
	}
	if n > 0 {
		return fmt.Errorf("label sets differ from the stored labels of %d members (%s)", n, strings.Join(bad, "; "))
	}
	return nil
}

// trueLabels lists the labels of b, a LabelsChanged on the wire, whose
// boolean value is true (LabelsChanged.labels = 1; LabelValue.label_id = 1,
// bool_value = 2).
func trueLabels(b []byte) ([]string, error) {
	var out []string
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		if num != 1 || typ != protowire.BytesType {
			return nil
		}
		var id string
		var isTrue bool
		if err := eachField(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
			switch {
			case num == 1 && typ == protowire.BytesType:
				id = string(v)
			case num == 2 && typ == protowire.VarintType:
				isTrue = x != 0
			case num == 2 || num == 3 || num == 4: // another value of the oneof, the last one wins
				isTrue = false
			}
			return nil
		}); err != nil {
			return err
		}
		if isTrue {
			out = append(out, id)
		}
		return nil
	})
	return out, err
}

// eachField calls f with each field of b: its number, type, and its bytes
// (length-delimited) or varint.
func eachField(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var v []byte
		var x uint64
		switch typ {
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		if err := f(num, typ, v, x); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}
