-- +goose Up
-- Each member's data key (crypto-shredding, docs/security.md): the AES-256
-- key that seals the member's PII (identifier values, PII attributes, code
-- secrets), wrapped (AES-GCM) under a key-encryption key of MC_PII_ENC_KEYS
-- named by kek_id. Erasing the member shreds the key: the row keeps only
-- the member id and the time, so no key is ever made for it again, and every
-- ciphertext under it, in this database, its backups or anywhere it was
-- copied, is unreadable from then on. This table is the key store: it lives
-- in the platform's database unless MC_KEYSTORE_URL names another one (which
-- gets the same table through MigrateKeyStore), whose backups must then be
-- kept no longer than erasure may take to reach them.
CREATE TABLE member_keys (
    member_id   uuid PRIMARY KEY,
    wrapped     bytea,
    kek_id      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    shredded_at timestamptz,
    CHECK ((wrapped IS NULL) = (shredded_at IS NOT NULL)),
    CHECK ((wrapped IS NULL) = (kek_id IS NULL))
);

-- +goose Down
DROP TABLE member_keys;
