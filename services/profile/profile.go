// Package profile serves a member's canonical view (attributes, consents,
// balance, tier, labels), attribute and consent updates, the label
// catalogue and marketing segments through the gRPC ProfileService.
package profile

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/attributes"
	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/tags"
	"github.com/membercenter/membercenter/storage/clickhouse/segment"
)

// ErrNoFacts means segments or a data export were asked for without
// ClickHouse.
var ErrNoFacts = errors.New("this needs ClickHouse, which this process is not connected to")

// ErrInvalid marks a request the service refuses as malformed.
var ErrInvalid = errors.New("invalid request")

// parseMember reads a request's member_id: a malformed one is ErrInvalid.
func parseMember(id string) (uuid.UUID, error) {
	m, err := uuid.Parse(id)
	if err != nil {
		return uuid.Nil, fmt.Errorf("%w: member_id: %v", ErrInvalid, err)
	}
	return m, nil
}

// Labels is what the profile needs of the tag engine: the catalogue in
// force, and recomputing a member's labels in the transaction that changed
// what they read (attributes, consent).
type Labels interface {
	Catalog() *tags.Catalog
	Recompute(ctx context.Context, tx pgx.Tx, member uuid.UUID, cause string, ch mcv1.Channel) error
	RecomputeBatch(ctx context.Context, tx pgx.Tx, members []uuid.UUID, causes []string, ch mcv1.Channel) error
}

var _ Labels = (*tags.Service)(nil)

// Config is the profile service's configuration.
type Config struct {
	// A YAML file declaring the member attributes (name, type, PII class);
	// unset: the built-in schema (docs/security.md lists it).
	AttributeSchema string `env:"MC_ATTRIBUTE_SCHEMA"`
}

// Validate loads the schema, reporting what is wrong with it.
func (c Config) Validate() error {
	_, err := attributes.Load(c.AttributeSchema)
	return err
}

// Service reads and updates profiles.
type Service struct {
	pool    *pgxpool.Pool
	tags    Labels
	changes changes.Writer
	facts   driver.Conn // ClickHouse, for segments; may be nil
	now     func() time.Time
	schema  *attributes.Schema
	sealer  attributes.Keyring // nil: PII attributes are refused
}

// New returns the service, with the built-in attribute schema and no PII
// keys until SetAttributes.
func New(pool *pgxpool.Pool, t Labels, ch changes.Writer) *Service {
	return &Service{pool: pool, tags: t, changes: ch, now: time.Now, schema: attributes.Default()}
}

// SetAttributes sets the attribute schema and the keys PII attributes are
// sealed with (identity's).
func (s *Service) SetAttributes(schema *attributes.Schema, keys attributes.Keyring) {
	s.schema, s.sealer = schema, keys
}

// SealAttributes brings stored attributes in line with the schema and the
// members' data keys: a value of a PII attribute stored unsealed (written
// before the schema declared it PII) is sealed, and a value sealed under a
// platform key (written before members had data keys) is re-sealed under
// its member's. In batches of batch members, each in its own transaction
// behind the members' row locks; safe while the platform serves and to run
// again. progress is called after each batch with the members done and the
// members there were to do.
func (s *Service) SealAttributes(ctx context.Context, batch int, progress func(done, total int64)) (int64, error) {
	if s.sealer == nil {
		return 0, errors.New("seal attributes: no PII keys")
	}
	var pii []string
	for _, a := range s.schema.Attrs() {
		if a.Class == attributes.PII {
			pii = append(pii, a.Name)
		}
	}
	total, err := postgres.CountAttributesToSeal(ctx, s.pool, pii)
	if err != nil {
		return 0, err
	}
	var done int64
	after := uuid.Nil
	for {
		var ids []uuid.UUID
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			var all []map[string]string
			var err error
			if ids, all, err = postgres.ClaimAttributesToSeal(ctx, tx, pii, after, batch); err != nil {
				return err
			}
			for i, attrs := range all {
				for k, v := range attrs {
					if attrs[k], err = s.sealStored(ctx, ids[i], k, v); err != nil {
						return fmt.Errorf("member %s: %w", ids[i], err)
					}
				}
			}
			return postgres.SetAttributesBatch(ctx, tx, ids, all)
		})
		if err != nil {
			return done, err
		}
		done += int64(len(ids))
		if progress != nil && len(ids) > 0 {
			progress(done, total)
		}
		if len(ids) < batch {
			return done, nil
		}
		after = ids[len(ids)-1]
	}
}

// sealStored is a stored attribute value of member as the schema and the
// members' data keys want it stored.
func (s *Service) sealStored(ctx context.Context, member uuid.UUID, name, stored string) (string, error) {
	if attributes.Sealed(stored) {
		if s.sealer.IsMemberKey(attributes.KeyID(stored)) {
			return stored, nil
		}
		to, err := s.sealer.SealerFor(ctx, member)
		if err != nil {
			return "", err
		}
		return attributes.Reseal(ctx, s.sealer, to, stored)
	}
	a, ok := s.schema.Lookup(name)
	if !ok || a.Class != attributes.PII {
		return stored, nil
	}
	v, err := s.schema.Normalize(name, stored, s.now())
	if err != nil {
		// Stored before the schema said what it must be: sealed as it is
		// (it is personal data all the same), shown masked as text.
		v, a.Type = stored, attributes.String
	}
	return s.storedForm(ctx, member, a, v)
}

// SetClock replaces the service's clock, for tests and simulations.
func (s *Service) SetClock(now func() time.Time) { s.now = now }

// SetFacts connects the service to ClickHouse for segments.
func (s *Service) SetFacts(conn driver.Conn) { s.facts = conn }

// Get returns the member's current profile and the sequence of the last
// change it reflects. A merged member's id answers with the member it was
// merged into. One round trip for a member that was not merged.
func (s *Service) Get(ctx context.Context, id uuid.UUID) (*mcv1.Profile, error) {
	return s.getAs(ctx, id, decoded)
}

// GetToSend is Get for a profile that is only sent (GetProfile's answer):
// its labels stay in their stored encoding, in the message's unknown
// fields, so that they are marshalled as they are, without being decoded
// and encoded again (a GetProfile with the whole catalogue spent a fifth
// of its CPU on that). Unmarshalled, the message holds them as labels; in
// this process its Labels are empty.
func (s *Service) GetToSend(ctx context.Context, id uuid.UUID) (*mcv1.Profile, error) {
	return s.getAs(ctx, id, toSend)
}

func (s *Service) getAs(ctx context.Context, id uuid.UUID, as labelsAs) (*mcv1.Profile, error) {
	p, merged, err := s.read(ctx, s.pool, id, as)
	if err == nil && merged {
		if id, err = postgres.CanonicalMember(ctx, s.pool, id); err == nil {
			p, _, err = s.read(ctx, s.pool, id, as)
		}
	}
	return p, err
}

// labelsAs says how a profile read holds its labels.
type labelsAs bool

const (
	decoded labelsAs = false // in Labels
	toSend  labelsAs = true  // encoded, in the unknown fields, where they are stored so
)

// labelsField is the number of Profile's labels.
var labelsField = (&mcv1.Profile{}).ProtoReflect().Descriptor().Fields().ByName("labels").Number()

// Snapshot is Get in one repeatable-read transaction: every part of the
// profile is as of the sequence it reports, so a client can start from it
// and follow the change stream, dropping changes up to that sequence.
func (s *Service) Snapshot(ctx context.Context, id uuid.UUID) (*mcv1.Profile, error) {
	id, err := postgres.CanonicalMember(ctx, s.pool, id)
	if err != nil {
		return nil, err
	}
	var p *mcv1.Profile
	err = pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var err error
		p, _, err = s.read(ctx, tx, id, decoded)
		return err
	})
	return p, err
}

func (s *Service) read(ctx context.Context, q postgres.Batcher, id uuid.UUID, as labelsAs) (*mcv1.Profile, bool, error) {
	row, err := postgres.ReadProfile(ctx, q, id)
	if err != nil {
		return nil, false, err
	}
	p, err := toProtoProfile(id, row, as)
	return p, row.Merged, err
}

// toProtoProfile is the API's view of a stored profile, its labels held
// as says.
func toProtoProfile(id uuid.UUID, row postgres.ProfileRow, as labelsAs) (*mcv1.Profile, error) {
	p := &mcv1.Profile{MemberId: id.String(), CreatedAt: timestamppb.New(row.CreatedAt), Sequence: uint64(row.Sequence),
		Attributes: attributes.Display(row.Attributes), PointsBalance: row.Balance, Tier: row.Tier}
	if p.Tier == "" {
		p.Tier = "normal"
	}
	if row.LabelsAt != nil {
		p.LabelsComputedAt = timestamppb.New(*row.LabelsAt)
	}
	raw, ok := []byte(nil), false
	if row.LabelsPB != nil && as == toSend {
		// The row's labels are this read's own copy: they are re-tagged in
		// place.
		raw, ok = tags.LabelsAsField(row.LabelsPB, labelsField)
	}
	switch {
	case ok:
		p.ProtoReflect().SetUnknown(raw)
	case row.LabelsPB != nil:
		var err error
		if p.Labels, err = tags.DecodeLabels(row.LabelsPB); err != nil {
			return nil, fmt.Errorf("read profile: %w", err)
		}
	default:
		p.Labels = tags.ProtoLabels(row.LabelsJSON, time.Time{})
	}
	for _, c := range row.Consents {
		p.Consents = append(p.Consents, &mcv1.Consent{Purpose: mcv1.ConsentPurpose(c.Purpose), Granted: c.Granted, DecidedAt: timestamppb.New(c.DecidedAt)})
	}
	return p, nil
}

// UpdateAttributes merges attributes into the member's canonical ones (an
// empty value removes the attribute), once per idempotency key, writes the
// change and recomputes the labels that read attributes, all in one
// transaction.
func (s *Service) UpdateAttributes(ctx context.Context, req *mcv1.UpdateAttributesRequest, ch mcv1.Channel) (*mcv1.UpdateAttributesResponse, error) {
	id, err := parseMember(req.GetMemberId())
	if err != nil {
		return nil, err
	}
	// Every value checked and normalised before anything is read: one bad
	// attribute refuses the whole request. An empty value removes the
	// attribute, declared or not (so an attribute the schema no longer
	// declares can be cleaned away).
	want, err := s.checkAttributes(req.GetAttributes())
	if err != nil {
		return nil, err
	}
	resp := &mcv1.UpdateAttributesResponse{}
	err = postgres.RetryTx(ctx, s.pool, func(tx pgx.Tx) error {
		_, err := changes.Idempotent(ctx, tx, "profile.UpdateAttributes", req.GetIdempotencyKey(), req, resp, func() error {
			member, _, err := postgres.LockCanonicalMember(ctx, tx, id)
			if err != nil {
				return err
			}
			attrs, changed, err := s.mergeAttributes(ctx, tx, member, want) // locked: no wait
			if err != nil {
				return err
			}
			if len(changed) > 0 {
				if err := postgres.SetAttributes(ctx, tx, member, attrs); err != nil {
					return err
				}
				if _, err := s.changes.Append(ctx, tx, member, &mcv1.MemberChange{
					CauseId: "rpc:profile.UpdateAttributes:" + req.GetIdempotencyKey(), Channel: ch,
					Change: &mcv1.MemberChange_AttributesChanged{AttributesChanged: &mcv1.AttributesChanged{Attributes: maps.Clone(changed)}},
				}); err != nil {
					return err
				}
				if err := s.tags.Recompute(ctx, tx, member, "rpc:profile.UpdateAttributes:"+req.GetIdempotencyKey(), ch); err != nil {
					return err
				}
			}
			// The profile as this transaction leaves it.
			resp.Profile, _, err = s.read(ctx, tx, member, decoded)
			return err
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// checkAttributes checks attributes against the schema and returns them
// normalised; an empty value (a removal) is kept empty.
func (s *Service) checkAttributes(attrs map[string]string) (map[string]string, error) {
	want := make(map[string]string, len(attrs))
	for k, v := range attrs {
		if v == "" {
			want[k] = ""
			continue
		}
		nv, _, err := s.checkAttribute(k, v)
		if err != nil {
			return nil, err
		}
		want[k] = nv
	}
	return want, nil
}

// mergeAttributes locks the member's attributes and merges want into them
// (normalised values; "" removes), returning them and what changed as the
// change stream says it (PII masked).
func (s *Service) mergeAttributes(ctx context.Context, tx pgx.Tx, member uuid.UUID, want map[string]string) (attrs, changed map[string]string, err error) {
	attrs, err = postgres.LockMemberAttributes(ctx, tx, member)
	if err != nil {
		return nil, nil, err
	}
	changed = map[string]string{}
	for k, v := range want {
		old, had := attrs[k]
		if v == "" {
			if had {
				delete(attrs, k)
				changed[k] = ""
			}
			continue
		}
		a, _ := s.schema.Lookup(k)
		if had && attributes.Same(s.sealer, a, old, v) {
			continue
		}
		stored, err := s.storedForm(ctx, member, a, v)
		if err != nil {
			return nil, nil, err
		}
		attrs[k], changed[k] = stored, attributes.Shown(stored)
	}
	return attrs, changed, nil
}

// checkAttribute checks an attribute's value against the schema and
// returns it normalised, with its declaration; the error wraps ErrInvalid,
// or says a PII attribute cannot be kept without the PII keys.
func (s *Service) checkAttribute(name, value string) (string, attributes.Attr, error) {
	nv, err := s.schema.Normalize(name, value, s.now())
	if err != nil {
		return "", attributes.Attr{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	a, _ := s.schema.Lookup(name)
	if a.Class == attributes.PII && s.sealer == nil {
		return "", a, fmt.Errorf("attributes[%s] is PII and this process has no PII keys", name)
	}
	return nv, a, nil
}

// storedForm is a normalised value of a as member's row keeps it: sealed
// under the member's data key when a is PII.
func (s *Service) storedForm(ctx context.Context, member uuid.UUID, a attributes.Attr, v string) (string, error) {
	if a.Class != attributes.PII {
		return v, nil
	}
	sealer, err := s.sealer.SealerFor(ctx, member)
	if err != nil {
		return "", fmt.Errorf("seal attributes[%s]: %w", a.Name, err)
	}
	return attributes.Seal(sealer, a, v)
}

// SetConsent records a consent decision once per idempotency key, writes
// the change, and — for profiling — withholds or restores the member's
// behavioural labels in the same transaction.
func (s *Service) SetConsent(ctx context.Context, req *mcv1.SetConsentRequest, ch mcv1.Channel) (*mcv1.SetConsentResponse, error) {
	id, err := parseMember(req.GetMemberId())
	if err != nil {
		return nil, err
	}
	if _, ok := mcv1.ConsentPurpose_name[int32(req.GetPurpose())]; !ok || req.GetPurpose() == mcv1.ConsentPurpose_CONSENT_PURPOSE_UNSPECIFIED {
		return nil, fmt.Errorf("%w: purpose: %s", ErrInvalid, purposes)
	}
	resp := &mcv1.SetConsentResponse{}
	cause := "rpc:profile.SetConsent:" + req.GetIdempotencyKey()
	err = postgres.RetryTx(ctx, s.pool, func(tx pgx.Tx) error {
		_, err := changes.Idempotent(ctx, tx, "profile.SetConsent", req.GetIdempotencyKey(), req, resp, func() error {
			member, _, err := postgres.LockCanonicalMember(ctx, tx, id)
			if err != nil {
				return err
			}
			now := s.now()
			prev, err := postgres.ConsentOf(ctx, tx, member, int16(req.GetPurpose()))
			if err != nil {
				return err
			}
			if err := postgres.SetConsent(ctx, tx, member, int16(req.GetPurpose()), req.GetGranted(), now, cause); err != nil {
				return err
			}
			if _, err := s.changes.Append(ctx, tx, member, &mcv1.MemberChange{
				CauseId: cause, Channel: ch,
				Change: &mcv1.MemberChange_ConsentChanged{ConsentChanged: &mcv1.ConsentChanged{Purpose: req.GetPurpose(), Granted: req.GetGranted()}},
			}); err != nil {
				return err
			}
			// Profiling consent (absent means granted) decides whether
			// behavioural labels are computed.
			if prev == nil || *prev != req.GetGranted() {
				if req.GetPurpose() == mcv1.ConsentPurpose_CONSENT_PURPOSE_PROFILING {
					if err := s.tags.Recompute(ctx, tx, member, cause, ch); err != nil {
						return err
					}
				}
				// Segments for a purpose read the member's consents from
				// the profile in ClickHouse: export it again (within
				// seconds).
				if err := postgres.RequeueProfileExport(ctx, tx, member); err != nil {
					return err
				}
			}
			resp.Consent = &mcv1.Consent{Purpose: req.GetPurpose(), Granted: req.GetGranted(), DecidedAt: timestamppb.New(now)}
			return nil
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// ListLabels returns the catalogue in force, optionally one group.
func (s *Service) ListLabels(group string) *mcv1.ListLabelsResponse {
	c := s.tags.Catalog()
	out := &mcv1.ListLabelsResponse{CatalogVersion: c.Version}
	for _, l := range c.SortedLabels() {
		if group != "" && l.Group != group {
			continue
		}
		d := &mcv1.LabelDefinition{LabelId: l.ID, NameEn: l.NameEN, NameZh: l.NameZH, Group: l.Group, Description: l.Description,
			ValueType: l.Type, Kind: l.Kind, Definition: l.Expr, Values: l.Values, Behavioural: l.IsBehavioural()}
		for _, ex := range l.Examples {
			d.Examples = append(d.Examples, tags.ProtoExample(ex))
		}
		out.Labels = append(out.Labels, d)
	}
	return out
}

// Segment compiles a segment expression over the catalogue's labels.
func (s *Service) Segment(expr string) (*segment.Query, error) {
	c, err := s.tags.Catalog().Segments()
	if err != nil {
		return nil, err
	}
	return c.Compile(expr)
}

// purposes names the purposes a request may give.
const purposes = "choose marketing, profiling, third-party sharing or analytics"

// segmentFor compiles expr restricted to the members who consent to p.
func (s *Service) segmentFor(expr string, p mcv1.ConsentPurpose) (*segment.Query, error) {
	col, ok := tags.ConsentColumn(p)
	if !ok {
		return nil, fmt.Errorf("%w: purpose: what the segment is for is required (members without consent for it are left out); %s", ErrInvalid, purposes)
	}
	q, err := s.Segment(expr)
	if err != nil {
		return nil, err
	}
	return q.Consenting(col)
}

// CountSegment counts the members a segment expression matches among those
// who consent to purpose.
func (s *Service) CountSegment(ctx context.Context, expr string, purpose mcv1.ConsentPurpose) (uint64, *segment.Query, error) {
	q, err := s.segmentFor(expr, purpose)
	if err != nil {
		return 0, nil, err
	}
	if s.facts == nil {
		return 0, q, ErrNoFacts
	}
	n, err := segment.Count(ctx, s.facts, q)
	return n, q, err
}

// ExportSegment streams the matching member ids who consent to purpose in
// batches.
func (s *Service) ExportSegment(ctx context.Context, expr string, purpose mcv1.ConsentPurpose, batch int, fn func([]string) error) error {
	q, err := s.segmentFor(expr, purpose)
	if err != nil {
		return err
	}
	if s.facts == nil {
		return ErrNoFacts
	}
	return segment.Export(ctx, s.facts, q, batch, fn)
}
