// Package identity unifies a shopper's identifiers into one member (OneID):
// normalisation, keyed hashing and encryption of PII, resolution of
// identifiers to a member (creating one when none matches), and the gRPC
// IdentityService.
package identity

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/ingest"
	"github.com/membercenter/membercenter/services/changes"
)

// Config configures the identity service.
type Config struct {
	Keys KeyConfig
	// Region assumed for phone numbers without a country code.
	DefaultRegion string `env:"MC_PHONE_DEFAULT_REGION, default=CN"`
}

// Validate reports every problem with the config at once.
func (c Config) Validate() error { return c.Keys.Validate() }

// Service resolves identifiers to members.
type Service struct {
	pool    *pgxpool.Pool
	pii     *PII
	norm    Normalizer
	changes changes.Writer
	log     *slog.Logger
	now     func() time.Time
}

// New returns the service.
func New(cfg Config, pool *pgxpool.Pool, ch changes.Writer, log *slog.Logger) (*Service, error) {
	pii, err := NewPII(cfg.Keys)
	if err != nil {
		return nil, err
	}
	if cfg.Keys.IsDev() {
		log.Warn("PII keys not configured: using the public development keys; set MC_PII_HMAC_KEY, MC_PII_ENC_KEYS and MC_PII_ENC_KEY_ID in production")
	}
	return &Service{pool: pool, pii: pii, norm: Normalizer{DefaultRegion: cfg.DefaultRegion}, changes: ch, log: log, now: time.Now}, nil
}

// Result is the outcome of a resolution.
type Result struct {
	MemberID uuid.UUID // uuid.Nil when nothing matched and creation was off
	Created  bool
	// Identifiers newly attached to the member.
	Linked []Normalized
	// Set when identifiers pointed at several members.
	Conflict bool
	// All the request's identifiers, normalised.
	Identifiers []Normalized
}

// Normalize canonicalises and hashes identifiers; the error names the
// offending identifier.
func (s *Service) Normalize(ids []*mcv1.Identifier) ([]Normalized, error) {
	out := make([]Normalized, 0, len(ids))
	seen := map[string]bool{}
	for i, id := range ids {
		v, err := s.norm.Normalize(id)
		if err != nil {
			return nil, fmt.Errorf("identifiers[%d] (%s): %w", i, id.GetType(), err)
		}
		n := Normalized{Type: id.GetType(), Scope: id.GetScope(), Value: v}
		n.Hash = s.pii.Hash(int16(n.Type), n.Scope, v)
		if seen[string(n.Hash)] {
			continue // the same identifier twice
		}
		seen[string(n.Hash)] = true
		switch n.Type {
		case mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE:
			n.Masked = s.norm.maskPhone(v)
		case mcv1.IdentifierType_IDENTIFIER_TYPE_EMAIL:
			n.Masked = maskEmail(v)
		default:
			n.Masked = mask(v)
		}
		if isPII(n.Type) {
			if n.Cipher, n.KeyID, err = s.pii.Encrypt(v, n.Hash); err != nil {
				return nil, fmt.Errorf("encrypt identifier: %w", err)
			}
		}
		out = append(out, n)
	}
	return out, nil
}

// resolve finds or creates the member of ids inside tx. A unique violation
// from a concurrent creator surfaces as an error for RetryTx to retry.
func (s *Service) resolve(ctx context.Context, tx pgx.Tx, ids []Normalized, create bool, ch *mcv1.MemberChange) (Result, error) {
	res := Result{Identifiers: ids}
	keys := make([]postgres.IdentifierKey, len(ids))
	for i, n := range ids {
		keys[i] = postgres.IdentifierKey{Type: int16(n.Type), Scope: n.Scope, Hash: n.Hash}
	}
	found, err := postgres.FindIdentifiers(ctx, tx, keys)
	if err != nil {
		return res, err
	}
	owner := map[string]uuid.UUID{}
	for _, f := range found {
		owner[string(f.Hash)] = f.MemberID
	}

	// The member of the strongest matching identifier wins.
	matched := append([]Normalized(nil), ids...)
	sort.SliceStable(matched, func(i, j int) bool { return priority(matched[i].Type) < priority(matched[j].Type) })
	for _, n := range matched {
		if m, ok := owner[string(n.Hash)]; ok {
			if res.MemberID == uuid.Nil {
				res.MemberID = m
			} else if m != res.MemberID {
				res.Conflict = true
			}
		}
	}

	now := s.now()
	if res.MemberID == uuid.Nil {
		if !create {
			return res, nil
		}
		res.MemberID = uuid.Must(uuid.NewV7())
		res.Created = true
		if err := postgres.InsertMember(ctx, tx, res.MemberID, now); err != nil {
			return res, err
		}
	}
	cause := ch.GetCauseId()
	for _, n := range ids {
		if _, ok := owner[string(n.Hash)]; ok {
			continue
		}
		if err := postgres.InsertIdentifier(ctx, tx, toIdentifierRow(res.MemberID, n, now, cause)); err != nil {
			return res, err
		}
		res.Linked = append(res.Linked, n)
	}

	switch {
	case res.Created:
		ch.Change = &mcv1.MemberChange_MemberCreated{MemberCreated: &mcv1.MemberCreated{Identifiers: Refs(res.Linked)}}
	case len(res.Linked) > 0:
		ch.Change = &mcv1.MemberChange_IdentityChanged{IdentityChanged: &mcv1.IdentityChanged{
			Kind: mcv1.IdentityChangeKind_IDENTITY_CHANGE_KIND_LINKED, Identifiers: Refs(res.Linked), Reason: "seen together with a known identifier",
		}}
	default:
		return res, nil
	}
	_, err = s.changes.Append(ctx, tx, res.MemberID, ch)
	return res, err
}

func toIdentifierRow(member uuid.UUID, n Normalized, at time.Time, cause string) postgres.IdentifierRow {
	return postgres.IdentifierRow{
		IdentifierKey: postgres.IdentifierKey{Type: int16(n.Type), Scope: n.Scope, Hash: n.Hash},
		MemberID:      member, Cipher: n.Cipher, KeyID: n.KeyID, Masked: n.Masked, LinkedAt: at, CauseID: cause,
	}
}

// Refs converts normalised identifiers to references safe to publish.
func Refs(ns []Normalized) []*mcv1.IdentifierRef {
	out := make([]*mcv1.IdentifierRef, len(ns))
	for i, n := range ns {
		out[i] = &mcv1.IdentifierRef{Type: n.Type, ValueHash: hex.EncodeToString(n.Hash), Scope: n.Scope, Masked: n.Masked}
	}
	return out
}

func toRowRefs(rows []postgres.IdentifierRow) []*mcv1.IdentifierRef {
	out := make([]*mcv1.IdentifierRef, len(rows))
	for i, r := range rows {
		out[i] = &mcv1.IdentifierRef{Type: mcv1.IdentifierType(r.Type), ValueHash: hex.EncodeToString(r.Hash), Scope: r.Scope, Masked: r.Masked}
	}
	return out
}

var _ ingest.Resolver = (*Service)(nil)

// ResolveEvent resolves a channel event for the ingest stage, exactly once
// per event id: a redelivered event gets the member it got the first time.
// Identifiers that cannot be normalised dead-letter the event.
func (s *Service) ResolveEvent(ctx context.Context, ev *mcv1.ChannelEvent) (ingest.Resolution, error) {
	ids, err := s.Normalize(ev.GetIdentifiers())
	if err != nil {
		if errors.Is(err, ErrInvalidIdentifier) {
			return ingest.Resolution{}, dlq.Reject(err)
		}
		return ingest.Resolution{}, err
	}
	var out ingest.Resolution
	err = postgres.RetryTx(ctx, s.pool, func(tx pgx.Tx) error {
		prev, err := postgres.GetIngestedEvent(ctx, tx, ev.GetEventId())
		if err == nil {
			detail := &mcv1.Resolution{}
			if err := proto.Unmarshal(prev.Resolution, detail); err != nil {
				return fmt.Errorf("stored resolution of %s: %w", ev.GetEventId(), err)
			}
			out = ingest.Resolution{MemberID: prev.MemberID.String(), Identifiers: Refs(ids), Detail: detail}
			return nil
		}
		if !errors.Is(err, postgres.ErrNotFound) {
			return err
		}
		ch := &mcv1.MemberChange{CauseId: ev.GetEventId(), Channel: ev.GetChannel(), StoreId: ev.GetStoreId()}
		res, err := s.resolve(ctx, tx, ids, true, ch)
		if err != nil {
			return err
		}
		detail := &mcv1.Resolution{Created: res.Created, Linked: Refs(res.Linked), Conflict: res.Conflict}
		stored, err := proto.MarshalOptions{Deterministic: true}.Marshal(detail)
		if err != nil {
			return err
		}
		if err := postgres.InsertIngestedEvent(ctx, tx, postgres.IngestedEvent{
			EventID: ev.GetEventId(), MemberID: res.MemberID, Created: res.Created, Resolution: stored,
		}); err != nil {
			return err
		}
		out = ingest.Resolution{MemberID: res.MemberID.String(), Identifiers: Refs(ids), Detail: detail}
		return nil
	})
	return out, err
}

// Resolve answers the Resolve RPC; a retry with the same idempotency key gets
// the first answer.
func (s *Service) Resolve(ctx context.Context, req *mcv1.ResolveRequest) (*mcv1.ResolveResponse, error) {
	ids, err := s.Normalize(req.GetIdentifiers())
	if err != nil {
		return nil, err
	}
	resp := &mcv1.ResolveResponse{}
	err = postgres.RetryTx(ctx, s.pool, func(tx pgx.Tx) error {
		resp.Reset()
		_, err := changes.Idempotent(ctx, tx, "identity.Resolve", req.GetIdempotencyKey(), req, resp, func() error {
			ch := &mcv1.MemberChange{CauseId: "rpc:Resolve:" + req.GetIdempotencyKey(), Channel: req.GetChannel(), StoreId: req.GetStoreId()}
			res, err := s.resolve(ctx, tx, ids, req.GetCreateIfMissing(), ch)
			if err != nil {
				return err
			}
			if res.MemberID != uuid.Nil {
				resp.MemberId = res.MemberID.String()
			}
			resp.Created, resp.Linked, resp.Conflict = res.Created, Refs(res.Linked), res.Conflict
			return nil
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// FindByIdentifier looks a member up without side effects.
func (s *Service) FindByIdentifier(ctx context.Context, id *mcv1.Identifier) (*mcv1.Member, error) {
	ids, err := s.Normalize([]*mcv1.Identifier{id})
	if err != nil {
		return nil, err
	}
	n := ids[0]
	found, err := postgres.FindIdentifiers(ctx, s.pool, []postgres.IdentifierKey{{Type: int16(n.Type), Scope: n.Scope, Hash: n.Hash}})
	if err != nil {
		return nil, err
	}
	if len(found) == 0 {
		return nil, fmt.Errorf("no member has this identifier: %w", postgres.ErrNotFound)
	}
	return s.Member(ctx, found[0].MemberID)
}

// Member returns a member with its identifiers.
func (s *Service) Member(ctx context.Context, id uuid.UUID) (*mcv1.Member, error) {
	m, err := postgres.GetMember(ctx, s.pool, id)
	if err != nil {
		return nil, err
	}
	rows, err := postgres.ListIdentifiers(ctx, s.pool, id)
	if err != nil {
		return nil, err
	}
	return toProtoMember(m, rows), nil
}
