-- +goose Up
-- The loyalty programme (docs/benefits.md): orders, tier activity and
-- history, campaign usage and budgets, coupons, benefit grants, missions.

-- Versions of the programme loaded with `membercenter program load`.
CREATE TABLE program_versions (
    seq       bigserial PRIMARY KEY,
    version   text NOT NULL UNIQUE,
    source    text NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE ledger_transactions ADD COLUMN program_version text NOT NULL DEFAULT '';
ALTER TABLE point_lots ADD COLUMN order_id text;
ALTER TABLE point_lots ADD COLUMN kind text NOT NULL DEFAULT 'earn';

-- A member's balance is the sum of its lots' remaining points; available and
-- pending are derived from the lots at read time.
ALTER TABLE points_accounts RENAME COLUMN available TO balance;
UPDATE points_accounts SET balance = balance + pending;
ALTER TABLE points_accounts DROP COLUMN pending;

-- Small per-member state: tier, grace, last effective time, missions.
CREATE TABLE loyalty_state (
    member_id  uuid PRIMARY KEY REFERENCES members (member_id),
    state      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Tier inputs by month, kept per origin so an unmerge can give them back.
CREATE TABLE member_activity (
    member_id        uuid NOT NULL REFERENCES members (member_id),
    origin_member_id uuid NOT NULL REFERENCES members (member_id),
    month            integer NOT NULL,
    spend            bigint NOT NULL DEFAULT 0,
    points           bigint NOT NULL DEFAULT 0,
    orders           bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (member_id, origin_member_id, month)
);

CREATE TABLE orders (
    order_id         text PRIMARY KEY,
    member_id        uuid NOT NULL REFERENCES members (member_id),
    origin_member_id uuid NOT NULL REFERENCES members (member_id),
    at               timestamptz NOT NULL,
    total            bigint NOT NULL,
    paid             bigint NOT NULL,
    coupon_discount  bigint NOT NULL,
    redeemed         bigint NOT NULL,
    earned           bigint NOT NULL,
    refunded         bigint NOT NULL DEFAULT 0,
    reversed         bigint NOT NULL DEFAULT 0,
    restored         bigint NOT NULL DEFAULT 0,
    unrecovered      bigint NOT NULL DEFAULT 0,
    fully_refunded   boolean NOT NULL DEFAULT false,
    coupon_codes     text[] NOT NULL DEFAULT '{}',
    lot_id           bigint REFERENCES point_lots (lot_id),
    extras           jsonb NOT NULL DEFAULT '{}'::jsonb,
    cause            text NOT NULL,
    program_version  text NOT NULL,
    CHECK (refunded <= paid)
);
CREATE INDEX orders_member ON orders (member_id, at);

CREATE TABLE tier_history (
    id        bigserial PRIMARY KEY,
    member_id uuid NOT NULL REFERENCES members (member_id),
    from_tier text NOT NULL,
    to_tier   text NOT NULL,
    at        timestamptz NOT NULL,
    reason    text NOT NULL,
    cause     text NOT NULL
);
CREATE INDEX tier_history_member ON tier_history (member_id, id);

CREATE TABLE campaign_usage (
    campaign_id text NOT NULL,
    member_id   uuid NOT NULL REFERENCES members (member_id),
    period      text NOT NULL,
    points      bigint NOT NULL,
    PRIMARY KEY (member_id, campaign_id, period)
);

CREATE TABLE campaign_budgets (
    campaign_id text PRIMARY KEY,
    spent       bigint NOT NULL
);

CREATE TABLE coupons (
    code             text PRIMARY KEY,
    member_id        uuid NOT NULL REFERENCES members (member_id),
    origin_member_id uuid NOT NULL REFERENCES members (member_id),
    template_id      text NOT NULL,
    state            text NOT NULL CHECK (state IN ('issued', 'used', 'restored', 'revoked')),
    valid_from       timestamptz NOT NULL,
    valid_until      timestamptz NOT NULL,
    issued_at        timestamptz NOT NULL,
    cause            text NOT NULL,
    order_id         text
);
CREATE INDEX coupons_member ON coupons (member_id);

CREATE TABLE coupon_template_counts (
    template_id text PRIMARY KEY,
    issued      integer NOT NULL
);

CREATE TABLE benefit_grants (
    member_id      uuid NOT NULL REFERENCES members (member_id),
    benefit_id     text NOT NULL,
    granted_at     timestamptz NOT NULL,
    cause          text NOT NULL,
    pending_revoke boolean NOT NULL DEFAULT false,
    PRIMARY KEY (member_id, benefit_id)
);

CREATE TABLE benefit_history (
    id         bigserial PRIMARY KEY,
    member_id  uuid NOT NULL REFERENCES members (member_id),
    benefit_id text NOT NULL,
    granted    boolean NOT NULL,
    at         timestamptz NOT NULL,
    cause      text NOT NULL
);

-- Labels the tag engine computes; benefits and campaigns read them.
CREATE TABLE member_labels (
    member_id  uuid NOT NULL REFERENCES members (member_id),
    label_id   text NOT NULL,
    value      text NOT NULL DEFAULT 'true',
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (member_id, label_id)
);

-- +goose Down
DROP TABLE member_labels;
DROP TABLE benefit_history;
DROP TABLE benefit_grants;
DROP TABLE coupon_template_counts;
DROP TABLE coupons;
DROP TABLE campaign_budgets;
DROP TABLE campaign_usage;
DROP TABLE tier_history;
DROP TABLE orders;
DROP TABLE member_activity;
DROP TABLE loyalty_state;
ALTER TABLE points_accounts ADD COLUMN pending bigint NOT NULL DEFAULT 0;
ALTER TABLE points_accounts RENAME COLUMN balance TO available;
ALTER TABLE point_lots DROP COLUMN kind;
ALTER TABLE point_lots DROP COLUMN order_id;
ALTER TABLE ledger_transactions DROP COLUMN program_version;
DROP TABLE program_versions;
