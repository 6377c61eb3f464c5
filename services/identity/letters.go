package identity

import (
	"context"
	"crypto/rand"
	"errors"
	"time"

	"github.com/google/uuid"

	"github.com/membercenter/membercenter/pipeline/contract"
	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
)

var _ contract.MemberSealer = (*PII)(nil)

// ForRecordKey is the sealer of a dead letter of a record keyed by a
// member id (the member topics): the member's data key, so that the letter
// is shredded with the member. An erased member's letter is sealed under a
// key made for it and forgotten at once: it keeps its reason and place but
// its content opens nowhere. nil for a key that is no member id, or when
// the key store does not answer (the platform key seals the letter then).
func (p *PII) ForRecordKey(ctx context.Context, key []byte) contract.Sealer {
	member, err := uuid.ParseBytes(key)
	if err != nil || len(key) != 36 || p.keys == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	aead, err := p.memberAEAD(ctx, member, true)
	if errors.Is(err, postgres.ErrKeyShredded) {
		lost := make([]byte, 32)
		if _, err := rand.Read(lost); err != nil {
			return nil
		}
		if aead, err = newAEAD(lost); err != nil {
			return nil
		}
	} else if err != nil {
		return nil
	}
	return memberSealer{pii: p, kid: MemberKeyID(member), aead: aead}
}

// Decrypt on a member sealer opens what it sealed (a dead letter's replay
// reads it through the platform's PII instead, which finds the key).
func (m memberSealer) Decrypt(ct []byte, kid string, ad []byte) (string, error) {
	plain, err := open(m.aead, ct, ad)
	return string(plain), err
}

var _ contract.MemberFinder = (*Service)(nil)

// KnownMember is the member a unique identifier of the event belongs to,
// found without changing anything (nor linking, nor creating); ok is false
// when no identifier normalises, none is held, or two members hold them.
func (s *Service) KnownMember(ctx context.Context, ev *mcv1.ChannelEvent) (string, bool) {
	ids, err := s.Normalize(ev.GetIdentifiers())
	if err != nil || len(ids) == 0 {
		return "", false
	}
	keys := make([]postgres.IdentifierKey, len(ids))
	for i, n := range ids {
		keys[i] = keyOf(n)
	}
	found, err := postgres.FindIdentifiers(ctx, s.pool, keys)
	if err != nil {
		return "", false
	}
	var member uuid.UUID
	for _, f := range found {
		if !f.Unique {
			continue
		}
		if member != uuid.Nil && f.MemberID != member {
			return "", false
		}
		member = f.MemberID
	}
	return member.String(), member != uuid.Nil
}
