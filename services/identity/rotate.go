package identity

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/membercenter/membercenter/storage/postgres"
)

// Reencrypt moves every PII ciphertext still under a platform key of
// MC_PII_ENC_KEYS (identifier display values and member code secrets
// written before members had data keys) under its member's data key. With
// PII.Rewrap, which wraps the members' data keys under the active key, it
// lets an old key be retired: configure the new key as active with the old
// one still listed, run both, then drop the old key. It works in batches;
// progress is called after each with the count done and the count there was
// to do. It is safe to run while the platform serves and to run twice.
func (s *Service) Reencrypt(ctx context.Context, batch int, progress func(done, total int64)) (int64, error) {
	total, err := postgres.CountPlatformSealed(ctx, s.pool)
	if err != nil {
		return 0, err
	}
	var done int64
	for _, kind := range []struct {
		claim  func(context.Context, pgx.Tx, int) ([]postgres.SealedRow, error)
		update func(context.Context, pgx.Tx, postgres.SealedRow, []byte, string) error
		ad     func(postgres.SealedRow) []byte
	}{
		{postgres.ClaimIdentifierCiphers,
			func(ctx context.Context, tx pgx.Tx, r postgres.SealedRow, c []byte, kid string) error {
				return postgres.UpdateIdentifierCipher(ctx, tx, r.ID, c, kid)
			},
			func(r postgres.SealedRow) []byte { return r.Hash }},
		{postgres.ClaimCodeSecretCiphers,
			func(ctx context.Context, tx pgx.Tx, r postgres.SealedRow, c []byte, kid string) error {
				return postgres.UpdateCodeSecretCipher(ctx, tx, r.MemberID, c, kid)
			},
			func(r postgres.SealedRow) []byte { return codeSecretAD(r.MemberID) }},
	} {
		err := inBatches(ctx, s.pool, batch, &done, total, progress, func(tx pgx.Tx) (int, error) {
			rows, err := kind.claim(ctx, tx, batch)
			if err != nil {
				return 0, err
			}
			for _, r := range rows {
				plain, err := s.pii.Decrypt(r.Cipher, r.KeyID, kind.ad(r))
				if err != nil {
					return 0, fmt.Errorf("re-encrypt: %w (is key %q still listed in MC_PII_ENC_KEYS?)", err, r.KeyID)
				}
				sealer, err := s.pii.SealerFor(ctx, r.MemberID)
				if err != nil {
					return 0, fmt.Errorf("re-encrypt: %w", err)
				}
				sealed, kid, err := sealer.Encrypt(plain, kind.ad(r))
				if err != nil {
					return 0, err
				}
				if err := kind.update(ctx, tx, r, sealed, kid); err != nil {
					return 0, err
				}
			}
			return len(rows), nil
		})
		if err != nil {
			return done, err
		}
	}
	return done, nil
}
