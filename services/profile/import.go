package profile

import (
	"context"
	"fmt"
	"maps"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/attributes"
)

// ImportedConsent is a consent decision a legacy system recorded.
type ImportedConsent struct {
	Purpose   mcv1.ConsentPurpose
	Granted   bool
	DecidedAt time.Time
}

// CheckImport validates a legacy member's attributes and consents against
// the schema before anything is written, returning the attributes
// normalised (ImportProfile seals the PII ones under the member's data key)
// and what the change stream says of them (PII masked). An error names the
// attribute or purpose and wraps ErrInvalid.
func (s *Service) CheckImport(attrs map[string]string, consents []ImportedConsent) (values, shown map[string]string, err error) {
	values, shown = map[string]string{}, map[string]string{}
	for k, v := range attrs {
		if v == "" {
			continue
		}
		nv, a, err := s.checkAttribute(k, v)
		if err != nil {
			return nil, nil, err
		}
		values[k], shown[k] = nv, nv
		if a.Class == attributes.PII {
			shown[k] = attributes.Mask(a.Type, nv)
		}
	}
	seen := map[mcv1.ConsentPurpose]bool{}
	for _, c := range consents {
		if _, ok := mcv1.ConsentPurpose_name[int32(c.Purpose)]; !ok || c.Purpose == mcv1.ConsentPurpose_CONSENT_PURPOSE_UNSPECIFIED {
			return nil, nil, fmt.Errorf("%w: consent purpose %d: %s", ErrInvalid, c.Purpose, purposes)
		}
		if seen[c.Purpose] {
			return nil, nil, fmt.Errorf("%w: consent %s given twice", ErrInvalid, c.Purpose)
		}
		seen[c.Purpose] = true
	}
	return values, shown, nil
}

// SealImport is the stored form of a legacy member's attributes as
// CheckImport returned them: PII sealed under the member's data key.
func (s *Service) SealImport(ctx context.Context, member uuid.UUID, values map[string]string) (map[string]string, error) {
	stored := make(map[string]string, len(values))
	for k, v := range values {
		a, _ := s.schema.Lookup(k)
		var err error
		if stored[k], err = s.storedForm(ctx, member, a, v); err != nil {
			return nil, err
		}
	}
	return stored, nil
}

// ImportProfile gives a member a legacy system brought over (created in tx
// by identity.ImportMember) its attributes, in their stored form
// (SealImport), and consents, as CheckImport returned and checked them,
// announcing both on the change stream, caused by cause; the member's labels are computed once everything else of the
// member is in place (ComputeLabels).
func (s *Service) ImportProfile(ctx context.Context, tx pgx.Tx, member uuid.UUID, stored, shown map[string]string, consents []ImportedConsent, cause string) error {
	if len(shown) > 0 { // stored is all of them, shown what changed
		if err := postgres.SetAttributes(ctx, tx, member, stored); err != nil {
			return err
		}
		if _, err := s.changes.Append(ctx, tx, member, &mcv1.MemberChange{CauseId: cause, Channel: mcv1.Channel_CHANNEL_BACKOFFICE,
			Change: &mcv1.MemberChange_AttributesChanged{AttributesChanged: &mcv1.AttributesChanged{Attributes: maps.Clone(shown)}}}); err != nil {
			return err
		}
	}
	for _, c := range consents {
		if err := postgres.SetConsent(ctx, tx, member, int16(c.Purpose), c.Granted, c.DecidedAt, cause); err != nil {
			return err
		}
		if _, err := s.changes.Append(ctx, tx, member, &mcv1.MemberChange{CauseId: cause, Channel: mcv1.Channel_CHANNEL_BACKOFFICE,
			Change: &mcv1.MemberChange_ConsentChanged{ConsentChanged: &mcv1.ConsentChanged{Purpose: c.Purpose, Granted: c.Granted}}}); err != nil {
			return err
		}
	}
	return nil
}

// ProfileImport is one member of an ImportProfiles batch: its attributes
// and consents as CheckImport returned and checked them, and the last
// sequence number of its changes so far.
type ProfileImport struct {
	Member        uuid.UUID
	Values, Shown map[string]string
	Consents      []ImportedConsent
	Cause         string
	Seq           int64
}

// ImportProfiles is ImportProfile for members a legacy system brought over
// (created in this batch by identity.ImportMembers), as a stage writes a
// batch: their attributes sealed (SealImport) and queued on b with their
// consents, one statement per kind of row; the changes that announce them
// are returned, numbered after each member's Seq, for the caller to write
// with the batch's others (QueueOutbox).
func (s *Service) ImportProfiles(ctx context.Context, b *pgx.Batch, items []ProfileImport) ([]postgres.OutboxRow, error) {
	var members []uuid.UUID
	var attrs []map[string]string
	var consents []postgres.ConsentWrite
	var out []postgres.OutboxRow
	for _, it := range items {
		seq := it.Seq
		add := func(ch *mcv1.MemberChange) error {
			seq++
			row, err := s.changes.Row(ctx, it.Member, seq, ch)
			out = append(out, row)
			return err
		}
		if len(it.Shown) > 0 {
			stored, err := s.SealImport(ctx, it.Member, it.Values)
			if err != nil {
				return nil, err
			}
			members, attrs = append(members, it.Member), append(attrs, stored)
			if err := add(&mcv1.MemberChange{CauseId: it.Cause, Channel: mcv1.Channel_CHANNEL_BACKOFFICE,
				Change: &mcv1.MemberChange_AttributesChanged{AttributesChanged: &mcv1.AttributesChanged{Attributes: maps.Clone(it.Shown)}}}); err != nil {
				return nil, err
			}
		}
		for _, c := range it.Consents {
			consents = append(consents, postgres.ConsentWrite{Member: it.Member, Purpose: int16(c.Purpose), Granted: c.Granted, DecidedAt: c.DecidedAt, Cause: it.Cause})
			if err := add(&mcv1.MemberChange{CauseId: it.Cause, Channel: mcv1.Channel_CHANNEL_BACKOFFICE,
				Change: &mcv1.MemberChange_ConsentChanged{ConsentChanged: &mcv1.ConsentChanged{Purpose: c.Purpose, Granted: c.Granted}}}); err != nil {
				return nil, err
			}
		}
	}
	postgres.QueueAttributes(b, members, attrs)
	postgres.QueueConsents(b, consents)
	return out, nil
}

// CatchUpProfile brings a migrated member's attributes and consents, in
// tx, to a legacy system's change (membercenter import catch-up): attrs
// are merged as UpdateAttributes merges them (checked against the schema,
// PII sealed; "" removes one), consents that differ from the member's are
// set with their date; what changed is announced, caused by cause. The
// caller computes the labels once the change is applied (ComputeLabels).
// An error wrapping ErrInvalid names the attribute or purpose.
func (s *Service) CatchUpProfile(ctx context.Context, tx pgx.Tx, member uuid.UUID, attrs map[string]string, consents []ImportedConsent, cause string) error {
	want, err := s.checkAttributes(attrs)
	if err != nil {
		return err
	}
	if _, _, err := s.CheckImport(nil, consents); err != nil {
		return err
	}
	have, changed, err := s.mergeAttributes(ctx, tx, member, want)
	if err != nil {
		return err
	}
	var moved []ImportedConsent
	for _, c := range consents {
		prev, err := postgres.ConsentOf(ctx, tx, member, int16(c.Purpose))
		if err != nil {
			return err
		}
		if prev == nil || *prev != c.Granted {
			moved = append(moved, c)
		}
	}
	if len(changed) == 0 && len(moved) == 0 {
		return nil
	}
	if err := s.ImportProfile(ctx, tx, member, have, changed, moved, cause); err != nil {
		return err
	}
	if len(moved) > 0 {
		// Segments for a purpose read consents from the profile in
		// ClickHouse: export it again.
		return postgres.RequeueProfileExport(ctx, tx, member)
	}
	return nil
}

// ComputeLabels computes a member's labels (and queues its profile for
// ClickHouse) in tx, as an attribute update does.
func (s *Service) ComputeLabels(ctx context.Context, tx pgx.Tx, member uuid.UUID, cause string) error {
	return s.tags.Recompute(ctx, tx, member, cause, mcv1.Channel_CHANNEL_BACKOFFICE)
}

// ComputeLabelsBatch is ComputeLabels for many members (an import's
// batch), causes[i] the cause of members[i]'s change: their labels
// computed and written as a stage writes a batch.
func (s *Service) ComputeLabelsBatch(ctx context.Context, tx pgx.Tx, members []uuid.UUID, causes []string) error {
	return s.tags.RecomputeBatch(ctx, tx, members, causes, mcv1.Channel_CHANNEL_BACKOFFICE)
}

// AttributesDiffer lists the attributes of want that have (a member's
// attributes as stored, read by the caller: a reconciliation reads a chunk
// of members at once) does not hold as want says, PII compared by keyed
// hash (never decrypted).
func (s *Service) AttributesDiffer(have, want map[string]string) (mismatched []string) {
	for k, v := range want {
		if v == "" {
			continue
		}
		a, ok := s.schema.Lookup(k)
		nv, nerr := s.schema.Normalize(k, v, s.now())
		if !ok || nerr != nil || !attributes.Same(s.sealer, a, have[k], nv) {
			mismatched = append(mismatched, "attributes["+k+"]")
		}
	}
	return mismatched
}
