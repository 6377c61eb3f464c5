package identity

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/hashicorp/golang-lru/v2/expirable"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/attributes"
)

// Crypto-shredding. Every member has a data key of its own, made on first
// use: an AES-256 key that seals the member's PII — identifier values, PII
// attributes, code secrets — kept in the key store (postgres member_keys)
// wrapped under the active key of MC_PII_ENC_KEYS (the key-encryption key).
// A ciphertext under it names it by the key id "m/<member id>", so it
// stays readable wherever a merge moves it. Erasing the member shreds the
// key (and those of the members merged into it): every ciphertext under
// it — in the database, its backups, an export — is unreadable from then
// on. The keyed hashes used for lookup are not covered: they are removed
// from the live database by the erasure and age out of backups.

// memberKeyPrefix starts the key id of a member's data key.
const memberKeyPrefix = "m/"

// MemberKeyID is the key id ciphertexts under member's data key carry.
func MemberKeyID(member uuid.UUID) string { return memberKeyPrefix + member.String() }

// IsMemberKey reports whether a key id names a member's data key.
func IsMemberKey(kid string) bool { return strings.HasPrefix(kid, memberKeyPrefix) }

// memberKeyCache bounds the unwrapped data keys a process keeps for
// sealing, and for how long: a process may still seal under a key another
// one shredded for at most memberKeyTTL (what it seals then is unreadable:
// the key is gone). Opening always reads the key store, so a shredded key
// opens nothing anywhere from the moment it is shredded.
const (
	memberKeyCache = 20000
	memberKeyTTL   = 5 * time.Minute
)

// keyStore is where members' data keys are kept, and the ones in use.
type keyStore struct {
	db    *pgxpool.Pool
	cache *expirable.LRU[uuid.UUID, cipher.AEAD]
}

// UseKeyStore keeps the members' data keys in db (its member_keys table).
func (p *PII) UseKeyStore(db *pgxpool.Pool) {
	p.keys = &keyStore{db: db, cache: expirable.NewLRU[uuid.UUID, cipher.AEAD](memberKeyCache, nil, memberKeyTTL)}
}

// errNoKeyStore is the answer of member key operations without a key store.
var errNoKeyStore = errors.New("no key store: members' data keys are unavailable")

// SealerFor returns a sealer under member's data key, made (and stored) on
// first use. An erased member's is ErrKeyShredded.
func (p *PII) SealerFor(ctx context.Context, member uuid.UUID) (attributes.Sealer, error) {
	aead, err := p.memberAEAD(ctx, member, true)
	if err != nil {
		return nil, err
	}
	return memberSealer{pii: p, kid: MemberKeyID(member), aead: aead}, nil
}

// SealersFor is SealerFor for members being created (an import's batch):
// their data keys made and stored in one statement, on their own before
// any ciphertext under them commits, as SealerFor stores one. A member
// that has a key already gets it.
func (p *PII) SealersFor(ctx context.Context, members []uuid.UUID) (map[uuid.UUID]attributes.Sealer, error) {
	out := make(map[uuid.UUID]attributes.Sealer, len(members))
	if len(members) == 0 {
		return out, nil
	}
	if p.keys == nil {
		return nil, errNoKeyStore
	}
	ks := make([]postgres.MemberKey, len(members))
	for i, member := range members {
		var err error
		if ks[i], err = p.newKey(member); err != nil {
			return nil, err
		}
	}
	stored, err := postgres.CreateMemberKeys(ctx, p.keys.db, ks, time.Now())
	if err != nil {
		return nil, err
	}
	for _, member := range members {
		a, err := p.cacheKey(stored[member])
		if err != nil {
			return nil, err
		}
		out[member] = memberSealer{pii: p, kid: MemberKeyID(member), aead: a}
	}
	return out, nil
}

// memberSealer seals with a member's data key; hashes stay the platform's.
type memberSealer struct {
	pii  *PII
	kid  string
	aead cipher.AEAD
}

func (m memberSealer) Hash(typ int16, scope, value string) []byte {
	return m.pii.Hash(typ, scope, value)
}

func (m memberSealer) Encrypt(value string, hash []byte) ([]byte, string, error) {
	ct, err := seal(m.aead, []byte(value), hash)
	return ct, m.kid, err
}

// Reveal opens a ciphertext under a member's data key or under a platform
// key (written before members had keys, or a dead letter).
func (p *PII) Reveal(ctx context.Context, ct []byte, kid string, hash []byte) (string, error) {
	if !IsMemberKey(kid) {
		return p.Decrypt(ct, kid, hash)
	}
	member, err := uuid.Parse(strings.TrimPrefix(kid, memberKeyPrefix))
	if err != nil {
		return "", fmt.Errorf("decrypt: key id %q: %w", kid, err)
	}
	aead, err := p.memberAEAD(ctx, member, false)
	if err != nil {
		return "", fmt.Errorf("decrypt: %w", err)
	}
	plain, err := open(aead, ct, hash)
	return string(plain), err
}

// Shred destroys the members' data keys (keeping that they were) and
// returns how many there were.
func (p *PII) Shred(ctx context.Context, members []uuid.UUID, at time.Time) (int64, error) {
	if p.keys == nil {
		return 0, errNoKeyStore
	}
	n, err := postgres.ShredMemberKeys(ctx, p.keys.db, members, at)
	for _, m := range members {
		p.keys.cache.Remove(m)
	}
	return n, err
}

// LiveKeys counts the members' data keys not shredded.
func (p *PII) LiveKeys(ctx context.Context, members []uuid.UUID) (int64, error) {
	if p.keys == nil {
		return 0, errNoKeyStore
	}
	return postgres.CountLiveMemberKeys(ctx, p.keys.db, members)
}

// Rewrap wraps every data key not under the active key-encryption key
// under it, in batches, so an old key of MC_PII_ENC_KEYS can be retired
// without touching a ciphertext. progress is called after each batch.
func (p *PII) Rewrap(ctx context.Context, batch int, progress func(done, total int64)) (int64, error) {
	if p.keys == nil {
		return 0, errNoKeyStore
	}
	total, err := postgres.CountMemberKeysNotUnder(ctx, p.keys.db, p.active)
	if err != nil {
		return 0, err
	}
	var done int64
	err = inBatches(ctx, p.keys.db, batch, &done, total, progress, func(tx pgx.Tx) (int, error) {
		ks, err := postgres.ClaimMemberKeysNotUnder(ctx, tx, p.active, batch)
		if err != nil {
			return 0, err
		}
		for _, k := range ks {
			dek, err := p.unwrap(k)
			if err != nil {
				return 0, err
			}
			if k.Wrapped, k.KEKID, err = p.wrap(k.MemberID, dek); err != nil {
				return 0, err
			}
			if err := postgres.RewrapMemberKey(ctx, tx, k); err != nil {
				return 0, err
			}
		}
		return len(ks), nil
	})
	return done, err
}

// inBatches runs step, one transaction each, until a step does fewer
// than batch rows, adding them to done and reporting progress after each.
func inBatches(ctx context.Context, db *pgxpool.Pool, batch int, done *int64, total int64, progress func(done, total int64), step func(pgx.Tx) (int, error)) error {
	for {
		n := 0
		err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			var err error
			n, err = step(tx)
			return err
		})
		if err != nil {
			return err
		}
		*done += int64(n)
		if progress != nil && n > 0 {
			progress(*done, total)
		}
		if n < batch {
			return nil
		}
	}
}

// memberAEAD is member's data key from the key store, or the cache when
// it is for sealing (create); made when create is set and the member has
// none.
func (p *PII) memberAEAD(ctx context.Context, member uuid.UUID, create bool) (cipher.AEAD, error) {
	if p.keys == nil {
		return nil, errNoKeyStore
	}
	if a, ok := p.keys.cache.Get(member); ok && create {
		return a, nil
	}
	k, err := postgres.GetMemberKey(ctx, p.keys.db, member)
	if errors.Is(err, postgres.ErrNotFound) && create {
		if k, err = p.newKey(member); err == nil {
			// Stored on its own, before any ciphertext under it commits: a
			// key whose member's transaction then rolls back seals nothing.
			k, err = postgres.CreateMemberKey(ctx, p.keys.db, k, time.Now())
		}
	}
	if err != nil {
		return nil, err
	}
	return p.cacheKey(k)
}

// cacheKey unwraps a member's data key and keeps it for sealing.
func (p *PII) cacheKey(k postgres.MemberKey) (cipher.AEAD, error) {
	dek, err := p.unwrap(k)
	if err != nil {
		return nil, err
	}
	a, err := newAEAD(dek)
	if err != nil {
		return nil, err
	}
	p.keys.cache.Add(k.MemberID, a)
	return a, nil
}

// newKey is a new data key for member, wrapped (not stored).
func (p *PII) newKey(member uuid.UUID) (postgres.MemberKey, error) {
	dek := make([]byte, 32)
	if _, err := rand.Read(dek); err != nil {
		return postgres.MemberKey{}, err
	}
	k := postgres.MemberKey{MemberID: member}
	var err error
	k.Wrapped, k.KEKID, err = p.wrap(member, dek)
	return k, err
}

// wrap seals a data key under the active key-encryption key, bound to its
// member.
func (p *PII) wrap(member uuid.UUID, dek []byte) ([]byte, string, error) {
	ct, err := seal(p.aeads[p.active], dek, wrapAD(member))
	return ct, p.active, err
}

func (p *PII) unwrap(k postgres.MemberKey) ([]byte, error) {
	kek, ok := p.aeads[k.KEKID]
	if !ok {
		return nil, fmt.Errorf("data key of member %s is wrapped under key %q, which MC_PII_ENC_KEYS does not list", k.MemberID, k.KEKID)
	}
	dek, err := open(kek, k.Wrapped, wrapAD(k.MemberID))
	if err != nil {
		return nil, fmt.Errorf("unwrap the data key of member %s: %w", k.MemberID, err)
	}
	return dek, nil
}

func wrapAD(member uuid.UUID) []byte { return append([]byte("member-key\x00"), member[:]...) }

func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// seal is nonce ‖ AES-GCM(plain) with ad bound.
func seal(aead cipher.AEAD, plain, ad []byte) ([]byte, error) {
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return aead.Seal(nonce, nonce, plain, ad), nil
}

// open reverses seal.
func open(aead cipher.AEAD, ct, ad []byte) ([]byte, error) {
	n := aead.NonceSize()
	if len(ct) < n {
		return nil, errors.New("decrypt: ciphertext too short")
	}
	plain, err := aead.Open(nil, ct[:n], ct[n:], ad)
	if err != nil {
		return nil, fmt.Errorf("decrypt: %w", err)
	}
	return plain, nil
}

// IsMemberKey reports whether a key id names a member's data key.
func (p *PII) IsMemberKey(kid string) bool { return IsMemberKey(kid) }
