// Package identity unifies a shopper's identifiers into one member (OneID):
// normalisation, keyed hashing and encryption of PII, rules per identifier
// type, resolution of identifiers to a member (creating, merging or
// recording a conflict), reversible merges with an append-only audit, and
// the gRPC IdentityService.
package identity

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/membercenter/membercenter/pipeline/contract"
	"github.com/membercenter/membercenter/pipeline/fault"
	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/attributes"
	"github.com/membercenter/membercenter/services/changes"
)

// Config configures the identity service.
type Config struct {
	Keys KeyConfig
	// Region assumed for phone numbers without a country code.
	DefaultRegion string `env:"MC_PHONE_DEFAULT_REGION, default=CN"`
	// Path of an identity rules file (see rules.yaml); empty for the defaults.
	RulesPath string `env:"MC_IDENTITY_RULES"`
	// Which signed device assertions are accepted.
	Assertions AssertionPolicy
}

// Validate reports every problem with the config at once.
func (c Config) Validate() error {
	_, err := LoadRules(c.RulesPath)
	return errors.Join(c.Keys.Validate(), err, c.Assertions.Validate())
}

// Service resolves identifiers to members.
type Service struct {
	pool       *pgxpool.Pool
	codeTurns  numberLocks // attempts at one member number's code, in this process
	assertions AssertionPolicy
	pii        *PII
	norm       Normalizer
	rules      *Rules
	changes    changes.Writer
	data       []MemberData
	log        *slog.Logger
	now        func() time.Time
}

// New returns the service.
func New(cfg Config, pool *pgxpool.Pool, ch changes.Writer, log *slog.Logger) (*Service, error) {
	pii, err := NewPII(cfg.Keys)
	if err != nil {
		return nil, err
	}
	// The members' data keys live beside their data unless the platform
	// names a key store of its own (Service.PII().UseKeyStore).
	pii.UseKeyStore(pool)
	rules, err := LoadRules(cfg.RulesPath)
	if err != nil {
		return nil, err
	}
	if cfg.Keys.IsDev() {
		log.Warn("PII keys not configured: using the public development keys; set MC_PII_HMAC_KEY, MC_PII_ENC_KEYS and MC_PII_ENC_KEY_ID in production")
	}
	return &Service{pool: pool, pii: pii, norm: NewNormalizer(cfg.DefaultRegion), rules: rules,
		assertions: cfg.Assertions, changes: ch, log: log, now: time.Now}, nil
}

// PII returns the keys identifiers are hashed and sealed with; the profile
// seals PII attributes with them too.
func (s *Service) PII() *PII { return s.pii }

// Rules returns the identity rules in force.
func (s *Service) Rules() *Rules { return s.rules }

var (
	// ErrRefused is wrapped by every refusal of an identity rule (a blocked
	// value, a per-member limit, merge protection): FailedPrecondition.
	ErrRefused = errors.New("refused by identity rules")
	// ErrUnroutable is returned when no identifier may find or create a member.
	ErrUnroutable = errors.New("no identifier can identify a member")
	// ErrMemberInactive is returned for a member that was merged into another.
	ErrMemberInactive = errors.New("member was merged into another member")
	// ErrSelfReferral refuses a referral whose referee is the referrer.
	ErrSelfReferral = errors.New("referral.referee names the referrer")
)

// RuleError is a refusal by a named rule.
type RuleError struct {
	Rule   string // e.g. "phone.blocked", "device_id.max_per_member", "limits.max_merges"
	Detail string
}

func (e *RuleError) Error() string { return fmt.Sprintf("refused by rule %s: %s", e.Rule, e.Detail) }

// Is makes every RuleError match ErrRefused.
func (e *RuleError) Is(target error) bool { return target == ErrRefused }

// Ignored is an identifier resolution did not use, and why.
type Ignored struct {
	Identifier Normalized
	Rule       string
}

// Result is the outcome of a resolution.
type Result struct {
	MemberID uuid.UUID // uuid.Nil when nothing matched and creation was off
	Created  bool
	// Identifiers newly attached to the member.
	Linked []Normalized
	// Members merged into MemberID.
	Merged []uuid.UUID
	// Set when identifiers pointed at members the rules would not merge.
	Conflict   bool
	ConflictID uuid.UUID
	// The member the request is attributed to (see Resolution.origin_member_id).
	Origin uuid.UUID
	// All the request's identifiers, normalised.
	Identifiers []Normalized
	Ignored     []Ignored
}

// Normalize canonicalises and hashes identifiers; the error names the
// offending identifier.
func (s *Service) Normalize(ids []*mcv1.Identifier) ([]Normalized, error) {
	out := make([]Normalized, 0, len(ids))
	seen := map[string]bool{}
	for i, id := range ids {
		n, err := s.normalizeField(id, fmt.Sprintf("identifiers[%d]", i))
		if err != nil {
			return nil, err
		}
		if seen[string(n.Hash)] {
			continue // the same identifier twice
		}
		seen[string(n.Hash)] = true
		out = append(out, n)
	}
	return out, nil
}

// NormalizeOne canonicalises and hashes the identifier of a request's
// field named field (identifier, referral.referee); the error names it.
func (s *Service) NormalizeOne(id *mcv1.Identifier, field string) (Normalized, error) {
	return s.normalizeField(id, field)
}

func (s *Service) normalizeField(id *mcv1.Identifier, field string) (Normalized, error) {
	v, maskedPhone, err := s.norm.normalize(id)
	if err != nil {
		return Normalized{}, fmt.Errorf("%s (%s): %w", field, id.GetType(), err)
	}
	n := Normalized{Type: id.GetType(), Scope: id.GetScope(), Value: v}
	n.Hash = s.pii.Hash(int16(n.Type), n.Scope, v)
	switch n.Type {
	case mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE:
		n.Masked = maskedPhone
	case mcv1.IdentifierType_IDENTIFIER_TYPE_EMAIL:
		n.Masked = maskEmail(v)
	default:
		n.Masked = mask(v)
	}
	return n, nil
}

// origin says who caused a change: the actor, the channel and the cause.
type origin struct {
	actor   string
	channel mcv1.Channel
	store   string
	cause   string
}

type resolveOpts struct {
	origin
	create bool
	// strict refuses the whole request (RPCs); otherwise a refused
	// identifier is ignored and the rest are used (channel events).
	strict bool
	// again is set when the resolution is made again (resolveAgain).
	again bool
}

func keyOf(n Normalized) postgres.IdentifierKey {
	return postgres.IdentifierKey{Type: int16(n.Type), Scope: n.Scope, Hash: n.Hash}
}

// match is an existing member found through one of the request's identifiers.
type match struct {
	member   uuid.UUID
	origin   uuid.UUID
	id       Normalized
	unique   bool
	linkedAt time.Time
}

// resolve finds or creates the member of ids inside tx, merging members the
// identifiers prove to be one person and recording a conflict where the
// rules forbid the merge.
func (s *Service) resolve(ctx context.Context, tx pgx.Tx, ids []Normalized, o resolveOpts) (Result, error) {
	res := Result{Identifiers: ids}
	var usable []Normalized
	for _, n := range ids {
		if s.rules.Blocked(n.Type, n.Value) {
			err := &RuleError{Rule: TypeName(n.Type) + ".blocked", Detail: fmt.Sprintf("%s %s is a placeholder value, not a shopper's", TypeName(n.Type), n.Masked)}
			if o.strict {
				return res, err
			}
			res.Ignored = append(res.Ignored, Ignored{Identifier: n, Rule: err.Rule})
			continue
		}
		usable = append(usable, n)
	}
	if len(usable) == 0 {
		return res, fmt.Errorf("%w: every identifier is on a blocked list", ErrUnroutable)
	}

	// Concurrent resolutions of the same identifiers queue here, so the
	// second sees what the first created: one member, never two.
	_, byHash, err := lockAndFind(ctx, tx, usable)
	if err != nil {
		return res, err
	}

	// The best match per member: the strongest identifier, then the latest link.
	best := map[uuid.UUID]match{}
	for _, n := range usable {
		for _, f := range byHash[string(n.Hash)] {
			m := match{member: f.MemberID, origin: f.OriginMemberID, id: n, unique: f.Unique, linkedAt: f.LinkedAt}
			if b, ok := best[f.MemberID]; !ok || s.better(m, b) {
				best[f.MemberID] = m
			}
		}
	}
	matches := make([]match, 0, len(best))
	for _, m := range best {
		matches = append(matches, m)
	}
	sort.Slice(matches, func(i, j int) bool { return s.better(matches[i], matches[j]) })

	// A shared identifier (a store tablet's device id) is no proof of who
	// the shopper is: when the request also brings a unique identifier no
	// one holds, it is a new shopper on a shared device, not the last one.
	if len(matches) > 0 && !matches[0].unique && s.bringsNewUnique(usable, byHash) {
		matches = nil
	}
	now := s.now()
	if len(matches) == 0 {
		if !o.create {
			return res, nil
		}
		if !s.anyMayCreate(usable) {
			err := fmt.Errorf("%w: no identifier of a type that may create a member (%s)", ErrUnroutable, typeList(usable))
			if o.strict {
				return res, &RuleError{Rule: "may_create", Detail: err.Error()}
			}
			return res, err
		}
		res.MemberID = uuid.Must(uuid.NewV7())
		res.Created = true
		res.Origin = res.MemberID
		if err := postgres.InsertMember(ctx, tx, res.MemberID, now); err != nil {
			return res, err
		}
	} else {
		// The members a merge or a conflict would write or name (the
		// target and those found through a unique identifier; a shared
		// identifier's holders, thousands for a store tablet, are never
		// written) are locked in id order, in one statement, before
		// anything is written about them, as every writer of a member
		// does. An erasure holds the lock from before it shreds their keys
		// until it commits: a member erased meanwhile is found here,
		// before a conflict or audit row names it, and the identifiers,
		// gone now, are looked up again. A lone target is locked by
		// linkMissing, when something is linked to it.
		if named := namedMembers(matches); len(named) > 1 {
			locked, err := postgres.LockMembersForUpdate(ctx, tx, named)
			if err != nil {
				return res, err
			}
			if len(locked) < len(named) {
				return s.resolveAgain(ctx, tx, ids, o)
			}
		}
		target := matches[0]
		res.MemberID, res.Origin = target.member, target.origin
		if err := s.mergeOrConflict(ctx, tx, &res, target, matches[1:], o); err != nil {
			return res, err
		}
	}

	if err := s.linkMissing(ctx, tx, &res, usable, byHash, now, o); errors.Is(err, errErasedMeanwhile) {
		// Nothing was written for the erased member, and its identifiers
		// are gone now that the erasure committed: resolve them again.
		return s.resolveAgain(ctx, tx, ids, o)
	} else if err != nil {
		return res, err
	}
	return res, s.recordResolution(ctx, tx, &res, o)
}

// resolveAgain resolves ids again after a member found was erased while
// the resolution waited for it (its identifiers gone with the erasure's
// commit). Once only: a member found erased again would be an identifier
// left to an erased member, and the transaction is tried anew (a
// transient error) rather than looping.
func (s *Service) resolveAgain(ctx context.Context, tx pgx.Tx, ids []Normalized, o resolveOpts) (Result, error) {
	if o.again {
		return Result{}, fault.Temporary(errors.New("a member found was erased while the resolution waited for it, twice"))
	}
	o.again = true
	return s.resolve(ctx, tx, ids, o)
}

// namedMembers are the distinct members of matches a merge or a conflict
// would write or name: the target (the first) and those found through a
// unique identifier.
func namedMembers(matches []match) []uuid.UUID {
	out := []uuid.UUID{matches[0].member}
	for _, m := range matches[1:] {
		if m.unique && !slices.Contains(out, m.member) {
			out = append(out, m.member)
		}
	}
	return out
}

// errErasedMeanwhile: the member a resolution found was erased before the
// resolution could write to it.
var errErasedMeanwhile = errors.New("member erased while the resolution waited for it")

// sealerOf is the sealer under member's data key; a member created in
// this transaction has none yet, so its key is made without looking for
// one first (one round trip to the key store instead of two).
func (s *Service) sealerOf(ctx context.Context, member uuid.UUID, created bool) (attributes.Sealer, error) {
	if !created {
		return s.pii.SealerFor(ctx, member)
	}
	sealers, err := s.pii.SealersFor(ctx, []uuid.UUID{member})
	if err != nil {
		return nil, err
	}
	return sealers[member], nil
}

// better orders matches: a unique identifier over a shared one, then the
// higher-priority type, then the most recent link.
func (s *Service) better(a, b match) bool {
	if a.unique != b.unique {
		return a.unique
	}
	if pa, pb := s.rules.For(a.id.Type).Priority, s.rules.For(b.id.Type).Priority; pa != pb {
		return pa < pb
	}
	if !a.linkedAt.Equal(b.linkedAt) {
		return a.linkedAt.After(b.linkedAt)
	}
	return a.member.String() < b.member.String()
}

// bringsNewUnique reports whether ids include a unique identifier that no
// member holds and that may create a member.
func (s *Service) bringsNewUnique(ids []Normalized, byHash map[string][]postgres.IdentifierRow) bool {
	for _, n := range ids {
		r := s.rules.For(n.Type)
		if r.Unique && r.MayCreate && len(byHash[string(n.Hash)]) == 0 {
			return true
		}
	}
	return false
}

func (s *Service) anyMayCreate(ids []Normalized) bool {
	for _, n := range ids {
		if s.rules.For(n.Type).MayCreate {
			return true
		}
	}
	return false
}

func typeList(ids []Normalized) string {
	var names []string
	for _, n := range ids {
		names = append(names, TypeName(n.Type))
	}
	sort.Strings(names)
	return fmt.Sprint(names)
}

// mergeOrConflict handles the other members the identifiers matched. A
// member reached only through a shared identifier (a store tablet's device
// id) is not the same person and is left alone. A member reached through a
// unique identifier is merged into the target when the rules of both
// identifiers allow it and merge protection agrees; otherwise the conflict is
// recorded for review.
func (s *Service) mergeOrConflict(ctx context.Context, tx pgx.Tx, res *Result, target match, others []match, o resolveOpts) error {
	var conflicting []match
	var reasons []string
	for _, m := range others {
		if !m.unique {
			continue
		}
		if !target.unique || !s.rules.For(target.id.Type).MayMerge || !s.rules.For(m.id.Type).MayMerge {
			conflicting = append(conflicting, m)
			reasons = append(reasons, fmt.Sprintf("%s of %s and %s of %s may not merge members", TypeName(target.id.Type), target.member, TypeName(m.id.Type), m.member))
			continue
		}
		reason := fmt.Sprintf("%s %s and %s %s seen together", TypeName(target.id.Type), target.id.Masked, TypeName(m.id.Type), m.id.Masked)
		_, refused, err := s.merge(ctx, tx, m.member, target.member, reason, o.origin)
		if err != nil {
			return err
		}
		if refused != nil {
			conflicting = append(conflicting, m)
			reasons = append(reasons, refused.Error())
			continue
		}
		res.Merged = append(res.Merged, m.member)
	}
	if len(conflicting) == 0 {
		return nil
	}
	res.Conflict = true
	members := []uuid.UUID{target.member}
	ids := []Normalized{target.id}
	for _, m := range conflicting {
		members = append(members, m.member)
		ids = append(ids, m.id)
	}
	id, err := s.recordConflict(ctx, tx, members, ids, joinReasons(reasons), o.origin)
	res.ConflictID = id
	return err
}

func joinReasons(rs []string) string {
	out := ""
	for i, r := range rs {
		if i > 0 {
			out += "; "
		}
		out += r
	}
	return out
}

// lockAndFind locks the identifiers (concurrent writers of the same ones
// queue) and returns who holds them, also by keyed hash.
func lockAndFind(ctx context.Context, tx pgx.Tx, ids []Normalized) ([]postgres.IdentifierRow, map[string][]postgres.IdentifierRow, error) {
	keys := make([]postgres.IdentifierKey, len(ids))
	for i, n := range ids {
		keys[i] = keyOf(n)
	}
	if err := postgres.LockIdentifiers(ctx, tx, keys); err != nil {
		return nil, nil, err
	}
	found, err := postgres.FindIdentifiers(ctx, tx, keys)
	if err != nil {
		return nil, nil, err
	}
	byHash := map[string][]postgres.IdentifierRow{}
	for _, f := range found {
		byHash[string(f.Hash)] = append(byHash[string(f.Hash)], f)
	}
	return found, byHash, nil
}

// linkMissing attaches the identifiers the member does not hold yet, within
// the per-member limits; a value another member holds uniquely is left to
// the conflict just recorded.
func (s *Service) linkMissing(ctx context.Context, tx pgx.Tx, res *Result, usable []Normalized, byHash map[string][]postgres.IdentifierRow, now time.Time, o resolveOpts) error {
	merged := map[uuid.UUID]bool{res.MemberID: true}
	for _, m := range res.Merged {
		merged[m] = true
	}
	var missing []Normalized
	for _, n := range usable {
		held, ownedElsewhere := false, false
		for _, f := range byHash[string(n.Hash)] {
			if merged[f.MemberID] {
				held = true
			} else if f.Unique {
				ownedElsewhere = true
			}
		}
		if !held && !ownedElsewhere {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	// A member created in this transaction holds none yet. Another is
	// written to: its row is locked first, as every writer of a member
	// does, so that concurrent links count each other against the limits;
	// and an erasure holds that lock from before it shreds the member's
	// keys until it commits, so a resolution that found the member's
	// identifiers before then finds the member erased here.
	counts := map[int16]int{}
	if !res.Created {
		ms, err := postgres.LockMembers(ctx, tx, res.MemberID)
		if err != nil {
			return err
		}
		if ms[res.MemberID].Status == "erased" {
			return errErasedMeanwhile
		}
		if counts, err = postgres.CountIdentifiers(ctx, tx, res.MemberID); err != nil {
			return err
		}
	}
	total := 0
	for _, n := range counts {
		total += n
	}
	// Sealed under the data key of the member the identifiers came through
	// (the origin, which an unmerge gives them back to), not the survivor's:
	// erasing either then shreds exactly its own.
	owner := res.Origin
	if owner == uuid.Nil {
		owner = res.MemberID
	}
	var sealer attributes.Sealer // the origin's, made on first use
	var err error
	for _, n := range missing {
		rule := s.rules.For(n.Type)
		var refusal *RuleError
		switch {
		case counts[int16(n.Type)] >= rule.MaxPerMember:
			refusal = &RuleError{Rule: TypeName(n.Type) + ".max_per_member",
				Detail: fmt.Sprintf("member already holds %d %s identifiers (limit %d)", counts[int16(n.Type)], TypeName(n.Type), rule.MaxPerMember)}
		case total >= s.rules.Limits.MaxIdentifiers:
			refusal = &RuleError{Rule: "limits.max_identifiers",
				Detail: fmt.Sprintf("member already holds %d identifiers (limit %d)", total, s.rules.Limits.MaxIdentifiers)}
		}
		if refusal != nil {
			if o.strict {
				return refusal
			}
			res.Ignored = append(res.Ignored, Ignored{Identifier: n, Rule: refusal.Rule})
			continue
		}
		// Encrypted only now, under the origin's data key: a lookup never
		// pays for it.
		if isPII(n.Type) {
			if sealer == nil {
				if sealer, err = s.sealerOf(ctx, owner, res.Created && owner == res.MemberID); err != nil {
					return fmt.Errorf("encrypt identifier: %w", err)
				}
			}
			if n.Cipher, n.KeyID, err = sealer.Encrypt(n.Value, n.Hash); err != nil {
				return fmt.Errorf("encrypt identifier: %w", err)
			}
		}
		row := toIdentifierRow(res.MemberID, n, now, o.cause)
		row.OriginMemberID, row.Unique = res.Origin, rule.Unique
		if err := postgres.InsertIdentifier(ctx, tx, row); err != nil {
			return err
		}
		counts[int16(n.Type)]++
		total++
		res.Linked = append(res.Linked, n)
	}
	return nil
}

func toIdentifierRow(member uuid.UUID, n Normalized, at time.Time, cause string) postgres.IdentifierRow {
	return postgres.IdentifierRow{
		IdentifierKey: keyOf(n),
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

func ignoredRefs(ig []Ignored) []*mcv1.IgnoredIdentifier {
	out := make([]*mcv1.IgnoredIdentifier, len(ig))
	for i, g := range ig {
		out[i] = &mcv1.IgnoredIdentifier{Identifier: Refs([]Normalized{g.Identifier})[0], Rule: g.Rule}
	}
	return out
}

// Detail is the Resolution a member event carries.
func (r Result) Detail() *mcv1.Resolution {
	d := &mcv1.Resolution{Created: r.Created, Linked: Refs(r.Linked), Conflict: r.Conflict, Ignored: ignoredRefs(r.Ignored)}
	if r.Origin != uuid.Nil {
		d.OriginMemberId = r.Origin.String()
	}
	for _, m := range r.Merged {
		d.MergedMemberIds = append(d.MergedMemberIds, m.String())
	}
	return d
}

var _ contract.Resolver = (*Service)(nil)

// ResolveEvent resolves a channel event for the ingest stage, exactly once
// per event id: a redelivered event gets the answer it got the first time.
// Identifiers that cannot be normalised, and events no identifier can route,
// dead-letter; blocked or over-limit identifiers are ignored and reported in
// the resolution.
func (s *Service) ResolveEvent(ctx context.Context, ev *mcv1.ChannelEvent) (contract.Resolution, error) {
	ids, referee, err := s.prepareEvent(ev)
	if err != nil {
		return contract.Resolution{}, err
	}
	if referee == nil {
		if out, ok, err := s.resolveKnownEvent(ctx, ev, ids); err != nil || ok {
			return out, err
		}
	}
	return s.resolveEventInTx(ctx, ev, ids, referee)
}

// resolveEventInTx resolves an event on the transactional path, in a
// transaction of its own (retried on conflicts).
func (s *Service) resolveEventInTx(ctx context.Context, ev *mcv1.ChannelEvent, ids []Normalized, referee *Normalized) (contract.Resolution, error) {
	var out contract.Resolution
	err := postgres.PipelinedTx(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		out, err = s.resolveEventTx(ctx, tx, ev, ids, referee)
		return err
	})
	return out, err
}

// prepareEvent normalises an event's identifiers and its referral's
// referee; a referral that names one of the event's own identifiers is
// refused (it pays the referrer for bringing someone else).
func (s *Service) prepareEvent(ev *mcv1.ChannelEvent) (ids []Normalized, referee *Normalized, err error) {
	ids, err = s.Normalize(ev.GetIdentifiers())
	if err != nil {
		if errors.Is(err, ErrInvalidIdentifier) {
			return nil, nil, fault.Permanent(err)
		}
		return nil, nil, err
	}
	r := ev.GetReferral().GetReferee()
	if r == nil {
		return ids, nil, nil
	}
	n, err := s.NormalizeOne(r, "referral.referee")
	if err != nil {
		return nil, nil, fault.Permanent(err)
	}
	referee = &n
	for _, id := range ids {
		if bytes.Equal(id.Hash, referee.Hash) {
			return nil, nil, fault.Permanent(fmt.Errorf("%w: %s %s is one of the event's own identifiers",
				ErrSelfReferral, TypeName(referee.Type), referee.Masked))
		}
	}
	return ids, referee, nil
}

// resolveEventTx is the transactional path of one event inside tx: the
// first answer when the event was resolved before, else the resolution
// (finding, creating, linking, merging) recorded under its event id. An
// event no identifier can route, or a referral of the referrer, is a data
// error (fault.Permanent); tx must then be rolled back, as far as its
// writes.
func (s *Service) resolveEventTx(ctx context.Context, tx pgx.Tx, ev *mcv1.ChannelEvent, ids []Normalized, referee *Normalized) (contract.Resolution, error) {
	prev, err := postgres.GetIngestedEvent(ctx, tx, ev.GetEventId())
	if err == nil {
		return firstAnswer(ev, s.fingerprint(ev), ids, prev)
	}
	if !errors.Is(err, postgres.ErrNotFound) {
		return contract.Resolution{}, err
	}
	return s.resolveNewEventTx(ctx, tx, ev, ids, referee)
}

// firstAnswer is the resolution recorded for an event resolved before, if
// ev (whose fingerprint is fp) is that event again.
func firstAnswer(ev *mcv1.ChannelEvent, fp []byte, ids []Normalized, prev postgres.IngestedEvent) (contract.Resolution, error) {
	if err := sameEvent(ev, fp, prev.Fingerprint); err != nil {
		return contract.Resolution{}, err
	}
	detail := &mcv1.Resolution{}
	if err := proto.Unmarshal(prev.Resolution, detail); err != nil {
		return contract.Resolution{}, fmt.Errorf("stored resolution of %s: %w", ev.GetEventId(), err)
	}
	return contract.Resolution{MemberID: prev.MemberID.String(), Identifiers: Refs(ids), Detail: detail}, nil
}

// ErrEventIDReused is matched by the refusal of an event under an event id
// already used for another event (a data error).
var ErrEventIDReused = errors.New("the event id was used before for a different event")

// fingerprint tells a redelivered event from another event under its id:
// the schema's tag (eventSchema) and a keyed hash (PII.Fingerprint) of the
// event as decoded, in its deterministic encoding (a retry sent as JSON and
// one sent as protobuf are the same event). Nil, and compared with
// nothing, for an event that does not encode (ingest refuses those
// before).
func (s *Service) fingerprint(ev *mcv1.ChannelEvent) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
	if err != nil {
		return nil
	}
	return append(eventSchema[:len(eventSchema):len(eventSchema)], s.pii.Fingerprint(b)...)
}

// eventSchema tags a fingerprint with the ChannelEvent schema it was made
// under (a hash of the descriptors of ChannelEvent and every message in
// it): two versions of the platform that differ in a field of the event
// encode the same record differently (one keeps the field, the other
// drops it or keeps it as unknown bytes), so only fingerprints of one
// schema are compared, and a redelivery across a rolling upgrade is never
// refused as another event.
var eventSchema = func() []byte {
	h := sha256.New()
	seen := map[protoreflect.FullName]bool{}
	var walk func(md protoreflect.MessageDescriptor)
	walk = func(md protoreflect.MessageDescriptor) {
		if seen[md.FullName()] {
			return
		}
		seen[md.FullName()] = true
		b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(protodesc.ToDescriptorProto(md))
		h.Write(b)
		fields := md.Fields()
		for i := range fields.Len() {
			if m := fields.Get(i).Message(); m != nil {
				walk(m)
			}
		}
	}
	walk((&mcv1.ChannelEvent{}).ProtoReflect().Descriptor())
	return h.Sum(nil)[:4]
}()

// sameEvent refuses ev, whose fingerprint is fp, when the event first
// recorded under its id had another (first). Before, the new event got
// the first one's answer and was passed on: the stages, which had applied
// the first, passed over it, and ClickHouse kept its row in place of the
// first's. An event recorded before fingerprints were (migration 00041),
// or erased since, has none and is not compared, nor is one fingerprinted
// under another schema of the event (eventSchema).
func sameEvent(ev *mcv1.ChannelEvent, fp, first []byte) error {
	if fp == nil || first == nil || hmac.Equal(fp, first) || !bytes.HasPrefix(first, eventSchema) {
		return nil // the same event, or one fingerprinted under another schema
	}
	return fault.Permanent(fmt.Errorf("event_id %q: %w (a redelivery sends the same event again; a new event needs an id of its own)",
		ev.GetEventId(), ErrEventIDReused))
}

// resolveNewEventTx is resolveEventTx for an event tx found no first
// answer of.
func (s *Service) resolveNewEventTx(ctx context.Context, tx pgx.Tx, ev *mcv1.ChannelEvent, ids []Normalized, referee *Normalized) (contract.Resolution, error) {
	res, err := s.resolve(ctx, tx, ids, resolveOpts{create: true, origin: origin{
		actor: "ingest", channel: ev.GetChannel(), store: ev.GetStoreId(), cause: ev.GetEventId()}})
	if errors.Is(err, ErrUnroutable) {
		return contract.Resolution{}, fault.Permanent(err)
	}
	if err != nil {
		return contract.Resolution{}, err
	}
	if referee != nil {
		found, err := postgres.FindIdentifiers(ctx, tx, []postgres.IdentifierKey{keyOf(*referee)})
		if err != nil {
			return contract.Resolution{}, err
		}
		for _, f := range found {
			if f.MemberID == res.MemberID {
				// Rolled back: the refused event links nothing.
				return contract.Resolution{}, fault.Permanent(fmt.Errorf("%w: %s %s belongs to the referring member",
					ErrSelfReferral, TypeName(referee.Type), referee.Masked))
			}
		}
	}
	detail := res.Detail()
	stored, err := proto.MarshalOptions{Deterministic: true}.Marshal(detail)
	if err != nil {
		return contract.Resolution{}, err
	}
	if err := postgres.InsertIngestedEvent(ctx, tx, postgres.IngestedEvent{
		EventID: ev.GetEventId(), MemberID: res.MemberID, Created: res.Created, Resolution: stored, Fingerprint: s.fingerprint(ev),
	}); err != nil {
		return contract.Resolution{}, err
	}
	return contract.Resolution{MemberID: res.MemberID.String(), Identifiers: Refs(ids), Detail: detail}, nil
}

// resolveKnownEvent is ingest's fast path, two round trips and no
// transaction: an event seen before gets its first answer; an event whose
// resolution would change nothing in the graph (knownMember) only records
// it. Anything else takes the
// transactional path.
func (s *Service) resolveKnownEvent(ctx context.Context, ev *mcv1.ChannelEvent, ids []Normalized) (contract.Resolution, bool, error) {
	keys := make([]postgres.IdentifierKey, len(ids))
	for i, n := range ids {
		if s.rules.Blocked(n.Type, n.Value) {
			return contract.Resolution{}, false, nil
		}
		keys[i] = keyOf(n)
	}
	prev, found, err := postgres.LookupIngest(ctx, s.pool, ev.GetEventId(), keys)
	if err != nil {
		return contract.Resolution{}, false, err
	}
	fp := s.fingerprint(ev)
	if prev != nil {
		out, err := firstAnswer(ev, fp, ids, *prev)
		return out, err == nil, err
	}
	byHash := map[string][]postgres.IdentifierRow{}
	for _, f := range found {
		byHash[string(f.Hash)] = append(byHash[string(f.Hash)], f)
	}
	member, origin, ok := s.knownMember(ev, ids, byHash)
	if !ok {
		return contract.Resolution{}, false, nil
	}
	detail := &mcv1.Resolution{OriginMemberId: origin.String()}
	stored, err := proto.MarshalOptions{Deterministic: true}.Marshal(detail)
	if err != nil {
		return contract.Resolution{}, false, err
	}
	inserted, err := postgres.InsertIngestedEventIfNew(ctx, s.pool, postgres.IngestedEvent{
		EventID: ev.GetEventId(), MemberID: member, Resolution: stored, Fingerprint: fp})
	if err != nil || !inserted {
		return contract.Resolution{}, false, err // a concurrent ingest won: take the slow path
	}
	return contract.Resolution{MemberID: member.String(), Identifiers: Refs(ids), Detail: detail}, true, nil
}

// Resolve answers the Resolve RPC; a retry with the same idempotency key gets
// the first answer. Blocked or over-limit identifiers refuse the request.
func (s *Service) Resolve(ctx context.Context, req *mcv1.ResolveRequest) (*mcv1.ResolveResponse, error) {
	ids, err := s.Normalize(req.GetIdentifiers())
	if err != nil {
		return nil, err
	}
	if resp, ok, err := s.resolveKnown(ctx, req, ids); err != nil || ok {
		return resp, err
	}
	resp := &mcv1.ResolveResponse{}
	err = postgres.PipelinedTx(ctx, s.pool, func(tx pgx.Tx) error {
		resp.Reset()
		_, err := changes.Idempotent(ctx, tx, "identity.Resolve", req.GetIdempotencyKey(), req, resp, func() error {
			res, err := s.resolve(ctx, tx, ids, resolveOpts{create: req.GetCreateIfMissing(), strict: true, origin: origin{
				actor: actorFrom(ctx), channel: req.GetChannel(), store: req.GetStoreId(), cause: "rpc:Resolve:" + req.GetIdempotencyKey()}})
			if err != nil {
				return err
			}
			if res.MemberID != uuid.Nil {
				resp.MemberId = res.MemberID.String()
			}
			resp.Created, resp.Linked, resp.Conflict = res.Created, Refs(res.Linked), res.Conflict
			for _, m := range res.Merged {
				resp.MergedMemberIds = append(resp.MergedMemberIds, m.String())
			}
			if res.ConflictID != uuid.Nil {
				resp.ConflictId = res.ConflictID.String()
			}
			return nil
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// resolveKnown is the read-only fast path of Resolve, one round trip: when
// every identifier already belongs to the same member through unique
// identifiers (nothing to link, merge or refuse) and the idempotency key is
// new, the answer changes nothing, so nothing is written. Anything else
// takes the transactional path.
func (s *Service) resolveKnown(ctx context.Context, req *mcv1.ResolveRequest, ids []Normalized) (*mcv1.ResolveResponse, bool, error) {
	keys := make([]postgres.IdentifierKey, len(ids))
	for i, n := range ids {
		if s.rules.Blocked(n.Type, n.Value) {
			return nil, false, nil
		}
		keys[i] = keyOf(n)
	}
	used, found, err := postgres.LookupIdempotent(ctx, s.pool, "identity.Resolve", req.GetIdempotencyKey(), keys)
	if err != nil || used || len(found) != len(ids) {
		return nil, false, err
	}
	member := found[0].MemberID
	for _, f := range found {
		if !f.Unique || f.MemberID != member {
			return nil, false, nil
		}
	}
	return &mcv1.ResolveResponse{MemberId: member.String()}, true, nil
}

// FindByIdentifier looks a member up without side effects. A shared
// identifier finds the member it was linked to last.
func (s *Service) FindByIdentifier(ctx context.Context, id *mcv1.Identifier) (*mcv1.Member, error) {
	n, err := s.NormalizeOne(id, "identifier")
	if err != nil {
		return nil, err
	}
	found, err := postgres.FindIdentifiers(ctx, s.pool, []postgres.IdentifierKey{keyOf(n)})
	if err != nil {
		return nil, err
	}
	if len(found) == 0 {
		return nil, fmt.Errorf("no member has this identifier: %w", postgres.ErrNotFound)
	}
	sort.Slice(found, func(i, j int) bool { return found[i].LinkedAt.After(found[j].LinkedAt) })
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
