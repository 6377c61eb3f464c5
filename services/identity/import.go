package identity

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
)

// ErrImportConflict refuses a migrated member whose identifier already
// belongs to a member: a migration never merges silently.
var ErrImportConflict = errors.New("an identifier already belongs to a member")

// Imported is what ImportMember made of a legacy member's identifiers.
type Imported struct {
	MemberID uuid.UUID
	// The identifiers linked, and the ones ignored (placeholders, over a
	// limit) with the rule that ignored them.
	Linked  []Normalized
	Ignored []Ignored
}

// ImportMember creates, in tx, the member a legacy system knew by ids, as
// created at createdAt (the legacy record's date), caused by cause: the
// identifiers are normalised, hashed and sealed like a channel's;
// placeholder values the rules block are ignored, as in ingest. An
// identifier that cannot be normalised refuses the member (naming it); one
// that a member already holds refuses it with ErrImportConflict naming the
// identifier (masked) and the member, so the migration report lists the
// conflict for review instead of merging two people. The member's creation
// is audited and announced like any (MemberCreated).
func (s *Service) ImportMember(ctx context.Context, tx pgx.Tx, ids []*mcv1.Identifier, createdAt time.Time, cause string) (Imported, error) {
	var out Imported
	norm, err := s.Normalize(ids)
	if err != nil {
		return out, fmt.Errorf("%w: %w", ErrInvalidIdentifier, err)
	}
	var usable []Normalized
	usable, out.Ignored = s.withoutPlaceholders(norm)
	if len(usable) == 0 {
		return out, fmt.Errorf("%w: no identifier left after placeholders were ignored", ErrUnroutable)
	}
	if !s.anyMayCreate(usable) {
		return out, fmt.Errorf("%w: no identifier of a type that may create a member (%s)", ErrUnroutable, typeList(usable))
	}
	byHash, err := s.lockUnclaimed(ctx, tx, usable, uuid.Nil)
	if err != nil {
		return out, err
	}
	o := resolveOpts{origin: origin{actor: "migration", channel: mcv1.Channel_CHANNEL_BACKOFFICE, cause: cause}, create: true}
	res := Result{Identifiers: norm, Created: true, Ignored: out.Ignored}
	res.MemberID = uuid.Must(uuid.NewV7())
	res.Origin = res.MemberID
	if err := postgres.InsertMember(ctx, tx, res.MemberID, createdAt); err != nil {
		return out, err
	}
	if err := s.linkMissing(ctx, tx, &res, usable, byHash, createdAt, o); err != nil {
		return out, err
	}
	if err := s.recordResolution(ctx, tx, &res, o); err != nil {
		return out, err
	}
	out.MemberID, out.Linked, out.Ignored = res.MemberID, res.Linked, res.Ignored
	return out, nil
}

// Held reports which of ids (normalised) the member holds, for a
// reconciliation: the identifiers it does not hold are returned, masked.
func (s *Service) Held(ctx context.Context, q postgres.Querier, member uuid.UUID, ids []*mcv1.Identifier) (missing []string, err error) {
	norm, err := s.Normalize(ids)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidIdentifier, err)
	}
	keys := make([]postgres.IdentifierKey, 0, len(norm))
	var want []Normalized
	for _, n := range norm {
		if s.rules.Blocked(n.Type, n.Value) {
			continue
		}
		keys, want = append(keys, keyOf(n)), append(want, n)
	}
	found, err := postgres.FindIdentifiers(ctx, q, keys)
	if err != nil {
		return nil, err
	}
	held := map[string]bool{}
	for _, f := range found {
		if f.MemberID == member {
			held[string(f.Hash)] = true
		}
	}
	for _, n := range want {
		if !held[string(n.Hash)] {
			missing = append(missing, TypeName(n.Type)+" "+n.Masked)
		}
	}
	return missing, nil
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
	found, byHash, err := lockAndFind(ctx, tx, usable)
	if err != nil {
		return nil, err
	}
	for _, f := range found {
		if !f.Unique || f.MemberID == member {
			continue // a shared identifier (a store's device) proves nothing
		}
		for _, n := range usable {
			if string(n.Hash) == string(f.Hash) {
				return nil, fmt.Errorf("%w: %s %s belongs to member %s", ErrImportConflict, TypeName(n.Type), n.Masked, f.MemberID)
			}
		}
	}
	return byHash, nil
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
