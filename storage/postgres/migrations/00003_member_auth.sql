-- +goose Up
-- Multi-channel member authentication: dynamic member codes shown by the app
-- and scanned at a POS, and biometric match results signed by registered
-- store terminals.

-- A short public member number. It is the first part of a dynamic member
-- code, so it is at most ten digits; it reveals nothing but the order in
-- which members were created.
CREATE SEQUENCE member_no_seq AS bigint MINVALUE 1 MAXVALUE 9999999999 NO CYCLE;
ALTER TABLE members ADD COLUMN member_no bigint;
UPDATE members m SET member_no = n.member_no
  FROM (SELECT member_id, nextval('member_no_seq') AS member_no
          FROM (SELECT member_id FROM members ORDER BY created_at, member_id) AS ordered) AS n
 WHERE m.member_id = n.member_id;
ALTER TABLE members
    ALTER COLUMN member_no SET DEFAULT nextval('member_no_seq'),
    ALTER COLUMN member_no SET NOT NULL,
    ADD CONSTRAINT members_member_no_key UNIQUE (member_no);
ALTER SEQUENCE member_no_seq OWNED BY members.member_no;

-- Per-member TOTP secret, created on the first code issued. Only the AES-GCM
-- ciphertext is stored (PII encryption keys, key_id names the key), bound to
-- the member by its additional data.
CREATE TABLE member_code_secrets (
    member_id     uuid PRIMARY KEY REFERENCES members (member_id),
    secret_cipher bytea NOT NULL,
    key_id        text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Every accepted dynamic code: the primary key makes a code (a member's
-- time step) acceptable once. Rows older than the accepted clock skew only
-- serve as an audit trail and may be pruned.
CREATE TABLE member_code_uses (
    member_id   uuid NOT NULL REFERENCES members (member_id),
    step        bigint NOT NULL,
    used_at     timestamptz NOT NULL DEFAULT now(),
    store_id    text NOT NULL DEFAULT '',
    terminal_id text NOT NULL DEFAULT '',
    PRIMARY KEY (member_id, step)
);

-- Store devices allowed to sign biometric match results, with their raw
-- Ed25519 public keys. A key belongs to one terminal, so revoking a terminal
-- cannot be undone by registering its key under another id.
CREATE TABLE terminals (
    terminal_id   text PRIMARY KEY,
    store_id      text NOT NULL,
    public_key    bytea NOT NULL CHECK (octet_length(public_key) = 32),
    description   text NOT NULL DEFAULT '',
    registered_at timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    revoke_reason text,
    CHECK ((revoked_at IS NULL) = (revoke_reason IS NULL))
);
CREATE UNIQUE INDEX terminals_public_key ON terminals (public_key);

-- Nonces of accepted device assertions: an assertion is accepted once.
-- Rows older than the accepted clock skew may be pruned, since such
-- assertions are refused as stale anyway.
CREATE TABLE assertion_nonces (
    terminal_id text NOT NULL REFERENCES terminals (terminal_id),
    nonce       bytea NOT NULL CHECK (octet_length(nonce) BETWEEN 16 AND 64),
    asserted_at timestamptz NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (terminal_id, nonce)
);

-- +goose Down
DROP TABLE assertion_nonces;
DROP TABLE terminals;
DROP TABLE member_code_uses;
DROP TABLE member_code_secrets;
ALTER TABLE members DROP COLUMN member_no;
DROP SEQUENCE IF EXISTS member_no_seq;
