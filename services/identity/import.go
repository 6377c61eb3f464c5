package identity

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
)

// ErrImportConflict refuses a migrated member whose identifier already
// belongs to a member: a migration never merges silently.
var ErrImportConflict = errors.New("an identifier already belongs to a member")

// ImportPlan is a legacy member's identifiers checked for an import
// (PlanImport): normalised and hashed once, placeholders set apart.
type ImportPlan struct {
	// Every identifier, normalised; Usable those left once the
	// placeholders the rules block are ignored (Ignored).
	Identifiers, Usable []Normalized
	Ignored             []Ignored
}

// PlanImport normalises and hashes a legacy member's identifiers and sets
// apart the placeholder values the rules block (ignored, as in ingest),
// reading nothing. An identifier that cannot be normalised refuses the
// member (ErrInvalidIdentifier, naming it), as does a member no identifier
// left may create (ErrUnroutable).
func (s *Service) PlanImport(ids []*mcv1.Identifier) (ImportPlan, error) {
	var p ImportPlan
	norm, err := s.Normalize(ids)
	if err != nil {
		return p, fmt.Errorf("%w: %w", ErrInvalidIdentifier, err)
	}
	p.Identifiers = norm
	p.Usable, p.Ignored = s.withoutPlaceholders(norm)
	if len(p.Usable) == 0 {
		return p, fmt.Errorf("%w: no identifier left after placeholders were ignored", ErrUnroutable)
	}
	if !s.anyMayCreate(p.Usable) {
		return p, fmt.Errorf("%w: no identifier of a type that may create a member (%s)", ErrUnroutable, typeList(p.Usable))
	}
	return p, nil
}

// ImportRequest is one legacy member of an ImportMembers batch.
type ImportRequest struct {
	Plan      ImportPlan
	CreatedAt time.Time // the legacy record's date
	Cause     string
}

// Imported is what ImportMembers made of a legacy member's identifiers.
type Imported struct {
	MemberID uuid.UUID
	// The identifiers linked, and the ones ignored (placeholders, over a
	// limit) with the rule that ignored them.
	Linked  []Normalized
	Ignored []Ignored
	// The member's changes so far (MemberCreated), numbered from 1, for
	// the caller to write with the rest of its changes (QueueOutbox).
	Changes []postgres.OutboxRow
}

// ImportMembers creates the members a legacy system knew (each planned by
// PlanImport), as created at their record's date, caused by their cause,
// as a stage writes a batch: every identifier of the batch locked in one
// statement and looked up in one, the members' data keys made in one
// statement, and their rows — members, identifiers (sealed under each
// member's key), the identity audit — queued on b for the caller to send
// with the rest of the batch's writes, in tx. Each member's creation is
// audited and announced like any (MemberCreated, in Imported.Changes).
//
// A member one of whose unique identifiers a member already holds is
// refused with ErrImportConflict naming the identifier (masked) and the
// member — a migration never merges two people — in refused, by index,
// and nothing of it is queued. Requests must not share a unique
// identifier (the caller tells them apart first). Over a per-member limit,
// an identifier is ignored. err is the batch's (the database's).
func (s *Service) ImportMembers(ctx context.Context, tx pgx.Tx, b *pgx.Batch, reqs []ImportRequest) (out []Imported, refused map[int]error, err error) {
	out, refused = make([]Imported, len(reqs)), map[int]error{}
	var all []Normalized
	for _, r := range reqs {
		all = append(all, r.Plan.Usable...)
	}
	_, byHash, err := lockAndFind(ctx, tx, all)
	if err != nil {
		return nil, nil, err
	}
	var made []uuid.UUID
	for i, r := range reqs {
		if err := conflictOf(r.Plan.Usable, byHash, uuid.Nil); err != nil {
			refused[i] = err
			continue
		}
		out[i].MemberID = uuid.Must(uuid.NewV7())
		made = append(made, out[i].MemberID)
	}
	sealers, err := s.pii.SealersFor(ctx, made)
	if err != nil {
		return nil, nil, fmt.Errorf("encrypt identifier: %w", err)
	}
	var ids []uuid.UUID
	var created []time.Time
	var rows []postgres.IdentifierRow
	var audits []postgres.AuditRow
	now := s.now()
	for i, r := range reqs {
		if refused[i] != nil {
			continue
		}
		o := origin{actor: "migration", channel: mcv1.Channel_CHANNEL_BACKOFFICE, cause: r.Cause}
		im := &out[i]
		im.Ignored = slices.Clone(r.Plan.Ignored)
		ids, created = append(ids, im.MemberID), append(created, r.CreatedAt)
		// A new member holds nothing: the per-member limits count the
		// identifiers of the record.
		counts, total := map[mcv1.IdentifierType]int{}, 0
		for _, n := range r.Plan.Usable {
			rule := s.rules.For(n.Type)
			switch {
			case counts[n.Type] >= rule.MaxPerMember:
				im.Ignored = append(im.Ignored, Ignored{Identifier: n, Rule: TypeName(n.Type) + ".max_per_member"})
				continue
			case total >= s.rules.Limits.MaxIdentifiers:
				im.Ignored = append(im.Ignored, Ignored{Identifier: n, Rule: "limits.max_identifiers"})
				continue
			}
			if isPII(n.Type) {
				if n.Cipher, n.KeyID, err = sealers[im.MemberID].Encrypt(n.Value, n.Hash); err != nil {
					return nil, nil, fmt.Errorf("encrypt identifier: %w", err)
				}
			}
			row := toIdentifierRow(im.MemberID, n, r.CreatedAt, r.Cause)
			row.OriginMemberID, row.Unique = im.MemberID, rule.Unique
			rows = append(rows, row)
			counts[n.Type]++
			total++
			im.Linked = append(im.Linked, n)
		}
		refs := Refs(im.Linked)
		audit := uuid.Must(uuid.NewV7())
		audits = append(audits, postgres.AuditRow{
			AuditID: audit, At: now, Action: "create", Actor: o.actor, Channel: channelName(o.channel), CauseID: o.cause,
			MemberID: im.MemberID, Identifiers: mustJSON(refsJSON(refs)),
			After:  mustJSON(map[string]any{"status": "active", "identifiers": refsJSON(refs)}),
			Reason: "no member held these identifiers",
		})
		change, err := s.changes.Row(ctx, im.MemberID, 1, &mcv1.MemberChange{
			CauseId: o.cause, Channel: o.channel, StoreId: o.store,
			Change: &mcv1.MemberChange_MemberCreated{MemberCreated: &mcv1.MemberCreated{Identifiers: refs, AuditId: audit.String()}},
		})
		if err != nil {
			return nil, nil, err
		}
		im.Changes = []postgres.OutboxRow{change}
	}
	postgres.QueueNewMembers(b, ids, created)
	postgres.QueueIdentifiers(b, rows)
	postgres.QueueAudits(b, audits)
	return out, refused, nil
}

// HeldBy reports, for a reconciliation of many members with one lookup,
// which of ids[i] (normalised) members[i] holds: missing[i] lists the
// identifiers it does not hold, masked; bad[i] is set
// (ErrInvalidIdentifier) when one of ids[i] cannot be normalised.
func (s *Service) HeldBy(ctx context.Context, q postgres.Querier, members []uuid.UUID, ids [][]*mcv1.Identifier) (missing [][]string, bad []error, err error) {
	missing, bad = make([][]string, len(members)), make([]error, len(members))
	want := make([][]Normalized, len(members))
	for i := range members {
		norm, err := s.Normalize(ids[i])
		if err != nil {
			bad[i] = fmt.Errorf("%w: %w", ErrInvalidIdentifier, err)
			continue
		}
		for _, n := range norm {
			if !s.rules.Blocked(n.Type, n.Value) {
				want[i] = append(want[i], n)
			}
		}
	}
	found, err := postgres.KeysHeldBy(ctx, q, members)
	if err != nil {
		return nil, nil, err
	}
	type holding struct {
		member uuid.UUID
		typ    int16
		scope  string
		hash   string
	}
	held := map[holding]bool{}
	for _, f := range found {
		held[holding{f.Member, f.Type, f.Scope, string(f.Hash)}] = true
	}
	for i, member := range members {
		for _, n := range want[i] {
			if k := keyOf(n); !held[holding{member, k.Type, k.Scope, string(k.Hash)}] {
				missing[i] = append(missing[i], TypeName(n.Type)+" "+n.Masked)
			}
		}
	}
	return missing, bad, nil
}

// withoutPlaceholders splits identifiers into the usable ones and the
// placeholder values the rules block (ignored, as in ingest).
func (s *Service) withoutPlaceholders(norm []Normalized) (usable []Normalized, ignored []Ignored) {
	for _, n := range norm {
		if s.rules.Blocked(n.Type, n.Value) {
			ignored = append(ignored, Ignored{Identifier: n, Rule: TypeName(n.Type) + ".blocked"})
			continue
		}
		usable = append(usable, n)
	}
	return usable, ignored
}

// lockUnclaimed locks the identifiers and returns who holds them; one that
// a member other than member holds uniquely is ErrImportConflict, naming
// the identifier (masked) and its holder: a migration never merges.
func (s *Service) lockUnclaimed(ctx context.Context, tx pgx.Tx, usable []Normalized, member uuid.UUID) (map[string][]postgres.IdentifierRow, error) {
	_, byHash, err := lockAndFind(ctx, tx, usable)
	if err != nil {
		return nil, err
	}
	return byHash, conflictOf(usable, byHash, member)
}

// conflictOf is ErrImportConflict for the first of usable that a member
// other than member holds uniquely (a shared identifier, a store's device,
// proves nothing), naming it (masked) and its holder; nil when there is
// none.
func conflictOf(usable []Normalized, byHash map[string][]postgres.IdentifierRow, member uuid.UUID) error {
	for _, n := range usable {
		for _, f := range byHash[string(n.Hash)] {
			if f.Unique && f.MemberID != member {
				return fmt.Errorf("%w: %s %s belongs to member %s", ErrImportConflict, TypeName(n.Type), n.Masked, f.MemberID)
			}
		}
	}
	return nil
}

// LockIdentifiersOf takes the locks of the identifiers ids, as every
// resolution takes them before any member's row (postgres.LockIdentifiers),
// for a writer that goes on to lock a member and then link or unlink them
// (the legacy catch-up). An identifier that does not normalise is left out:
// the writer refuses it later.
func (s *Service) LockIdentifiersOf(ctx context.Context, tx pgx.Tx, ids []*mcv1.Identifier) error {
	keys := make([]postgres.IdentifierKey, 0, len(ids))
	for _, id := range ids {
		if n, err := s.Normalize([]*mcv1.Identifier{id}); err == nil && len(n) == 1 {
			keys = append(keys, keyOf(n[0]))
		}
	}
	if len(keys) == 0 {
		return nil
	}
	return postgres.LockIdentifiers(ctx, tx, keys)
}

// CatchUpIdentifiers brings a migrated member's identifiers, in tx, to a
// legacy system's change (membercenter import catch-up): add are linked
// under the identity rules as ImportMember links them (placeholders
// ignored and returned; one another member holds uniquely refuses the
// change with ErrImportConflict, never merging; over a per-member limit,
// ignored), remove are unlinked when the member holds them. Each is
// audited and announced (IdentityChanged), caused by cause. The caller
// holds the member's row lock.
func (s *Service) CatchUpIdentifiers(ctx context.Context, tx pgx.Tx, member uuid.UUID, add, remove []*mcv1.Identifier, cause string) ([]Ignored, error) {
	o := resolveOpts{origin: origin{actor: "migration", channel: mcv1.Channel_CHANNEL_BACKOFFICE, cause: cause}}
	gone, err := s.Normalize(remove)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidIdentifier, err)
	}
	var unlinked []Normalized
	for _, n := range gone {
		ok, err := postgres.DeleteIdentifier(ctx, tx, member, keyOf(n))
		if err != nil {
			return nil, err
		}
		if ok {
			unlinked = append(unlinked, n)
		}
	}
	if len(unlinked) > 0 {
		if _, err := s.audit(ctx, tx, o.origin, auditEntry{action: "unlink", kind: mcv1.IdentityChangeKind_IDENTITY_CHANGE_KIND_UNLINKED,
			member: member, refs: Refs(unlinked), reason: "removed in the legacy system"}); err != nil {
			return nil, err
		}
	}
	norm, err := s.Normalize(add)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidIdentifier, err)
	}
	usable, ignored := s.withoutPlaceholders(norm)
	if len(usable) == 0 {
		return ignored, nil
	}
	byHash, err := s.lockUnclaimed(ctx, tx, usable, member)
	if err != nil {
		return nil, err
	}
	res := Result{MemberID: member, Origin: member}
	if err := s.linkMissing(ctx, tx, &res, usable, byHash, s.now(), o); err != nil {
		return nil, err
	}
	if len(res.Linked) > 0 {
		if _, err := s.audit(ctx, tx, o.origin, auditEntry{action: "link", kind: mcv1.IdentityChangeKind_IDENTITY_CHANGE_KIND_LINKED,
			member: member, refs: Refs(res.Linked), reason: "added in the legacy system"}); err != nil {
			return nil, err
		}
	}
	return append(ignored, res.Ignored...), nil
}
