-- +goose Up
-- Members and their identifiers (OneID). Raw PII never lands here: every
-- identifier is looked up by a keyed HMAC of its normalised value; phone and
-- e-mail additionally keep an AES-GCM ciphertext for display.
CREATE TABLE members (
    member_id   uuid PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'merged')),
    merged_into uuid REFERENCES members (member_id),
    -- Last sequence number handed to a change of this member (outbox).
    change_seq  bigint NOT NULL DEFAULT 0,
    attributes  jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE TABLE member_identifiers (
    identifier_id bigserial PRIMARY KEY,
    member_id     uuid NOT NULL REFERENCES members (member_id),
    id_type       smallint NOT NULL,
    scope         text NOT NULL DEFAULT '',
    value_hash    bytea NOT NULL,
    value_cipher  bytea,
    key_id        text,
    masked        text NOT NULL,
    linked_at     timestamptz NOT NULL DEFAULT now(),
    cause_id      text NOT NULL
);
CREATE UNIQUE INDEX member_identifiers_value ON member_identifiers (id_type, scope, value_hash);
CREATE INDEX member_identifiers_member ON member_identifiers (member_id);

-- One row per channel event that ingest has resolved: a redelivered event is
-- routed to the same member and resolved only once.
CREATE TABLE ingested_events (
    event_id    text PRIMARY KEY,
    member_id   uuid NOT NULL REFERENCES members (member_id),
    created     boolean NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now()
);

-- Answers of mutating RPCs, keyed by the caller's idempotency key.
CREATE TABLE idempotency_keys (
    scope      text NOT NULL,
    key        text NOT NULL,
    response   bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

-- Exactly-once effects: a worker records the event id in the same transaction
-- as the effect, so a redelivered event changes nothing.
CREATE TABLE processed_events (
    consumer     text NOT NULL,
    event_id     text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Points ledger: double entry. Every transaction's entries sum to zero
-- (checked at commit); a member's account never goes negative.
CREATE TABLE points_accounts (
    member_id       uuid PRIMARY KEY REFERENCES members (member_id),
    available       bigint NOT NULL DEFAULT 0 CHECK (available >= 0),
    pending         bigint NOT NULL DEFAULT 0 CHECK (pending >= 0),
    lifetime_earned bigint NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ledger_transactions (
    transaction_id uuid PRIMARY KEY,
    member_id      uuid NOT NULL REFERENCES members (member_id),
    kind           text NOT NULL,
    reason         text NOT NULL,
    -- Event id, RPC idempotency key or job run that caused the transaction.
    cause_id       text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (cause_id, kind)
);
CREATE INDEX ledger_transactions_member ON ledger_transactions (member_id, created_at DESC);

CREATE TABLE ledger_entries (
    entry_id       bigserial PRIMARY KEY,
    transaction_id uuid NOT NULL REFERENCES ledger_transactions (transaction_id),
    -- 'member:<uuid>' or a programme account such as 'programme:liability'.
    account        text NOT NULL,
    member_id      uuid REFERENCES members (member_id),
    delta          bigint NOT NULL CHECK (delta <> 0),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_entries_transaction ON ledger_entries (transaction_id);
CREATE INDEX ledger_entries_member ON ledger_entries (member_id, entry_id DESC) WHERE member_id IS NOT NULL;

-- +goose StatementBegin
CREATE FUNCTION ledger_transaction_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    total bigint;
BEGIN
    SELECT coalesce(sum(delta), 0) INTO total FROM ledger_entries WHERE transaction_id = NEW.transaction_id;
    IF total <> 0 THEN
        RAISE EXCEPTION 'ledger transaction % does not balance (sum %)', NEW.transaction_id, total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
-- +goose StatementEnd

CREATE CONSTRAINT TRIGGER ledger_entries_balanced
    AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_transaction_balanced();

-- Earned points form lots that expire; redemption consumes the
-- earliest-expiring lots first.
CREATE TABLE point_lots (
    lot_id         bigserial PRIMARY KEY,
    member_id      uuid NOT NULL REFERENCES members (member_id),
    transaction_id uuid NOT NULL REFERENCES ledger_transactions (transaction_id),
    earned         bigint NOT NULL CHECK (earned > 0),
    remaining      bigint NOT NULL CHECK (remaining >= 0 AND remaining <= earned),
    earned_at      timestamptz NOT NULL,
    available_at   timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL
);
CREATE INDEX point_lots_open ON point_lots (member_id, expires_at) WHERE remaining > 0;

-- Transactional outbox: every change of a member's state, written in the
-- same transaction as the change, with a per-member sequence that increases
-- by one. The relay publishes it to member.changes.v1.
CREATE TABLE outbox (
    outbox_id    bigserial PRIMARY KEY,
    member_id    uuid NOT NULL,
    sequence     bigint NOT NULL,
    change_id    uuid NOT NULL,
    payload      bytea NOT NULL,
    -- W3C trace context of the transaction that wrote the change, so the
    -- relay's publish joins the same trace.
    traceparent  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    UNIQUE (member_id, sequence)
);
CREATE INDEX outbox_unpublished ON outbox (outbox_id) WHERE published_at IS NULL;

-- +goose StatementBegin
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mc_outbox', '');
    RETURN NULL;
END $$;
-- +goose StatementEnd

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- +goose Down
DROP TABLE outbox;
DROP FUNCTION outbox_notify;
DROP TABLE point_lots;
DROP TABLE ledger_entries;
DROP FUNCTION ledger_transaction_balanced;
DROP TABLE ledger_transactions;
DROP TABLE points_accounts;
DROP TABLE processed_events;
DROP TABLE idempotency_keys;
DROP TABLE ingested_events;
DROP TABLE member_identifiers;
DROP TABLE members;
