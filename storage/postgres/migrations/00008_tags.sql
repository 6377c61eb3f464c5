-- +goose Up
-- The tag engine's per-member feature state and current labels. labels is
-- the whole current label vector (JSON object id → value); member_labels
-- keeps the same values one row per label for relational readers
-- (benefit and campaign conditions).
CREATE TABLE member_features (
    member_id       uuid PRIMARY KEY REFERENCES members (member_id),
    state           jsonb NOT NULL DEFAULT '{}'::jsonb,
    labels          jsonb NOT NULL DEFAULT '{}'::jsonb,
    catalog_version text NOT NULL DEFAULT '',
    -- Increases with every change of labels; the ClickHouse profile row's
    -- version.
    version         bigint NOT NULL DEFAULT 0,
    -- When a label may next change with the clock alone (a window ends, a
    -- day passes); the sweep recomputes members whose time has come.
    due_at          timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX member_features_due ON member_features (due_at) WHERE due_at IS NOT NULL;

-- A member's current consent decision per purpose (ConsentPurpose values).
CREATE TABLE member_consents (
    member_id  uuid NOT NULL REFERENCES members (member_id),
    purpose    smallint NOT NULL,
    granted    boolean NOT NULL,
    decided_at timestamptz NOT NULL,
    cause      text NOT NULL,
    PRIMARY KEY (member_id, purpose)
);

-- Members seen with each device identifier (abuse signals).
CREATE TABLE device_members (
    device_hash text NOT NULL,
    member_id   uuid NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_hash, member_id)
);
CREATE INDEX device_members_member ON device_members (member_id);

-- Members whose ClickHouse profile row is behind PostgreSQL: written in the
-- transaction that changes the labels, drained by the profile exporter.
CREATE TABLE profile_exports (
    member_id uuid PRIMARY KEY,
    version   bigint NOT NULL,
    queued_at timestamptz NOT NULL DEFAULT now()
);

-- Loaded label catalogue versions; services follow the newest.
CREATE TABLE label_catalogs (
    seq       bigserial PRIMARY KEY,
    version   text NOT NULL UNIQUE,
    source    text NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now()
);

-- Backfill progress per catalogue version, so an interrupted run resumes.
CREATE TABLE tag_backfills (
    catalog_version text PRIMARY KEY,
    last_member     uuid,
    members         bigint NOT NULL DEFAULT 0,
    changed         bigint NOT NULL DEFAULT 0,
    done            boolean NOT NULL DEFAULT false,
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE tag_backfills;
DROP TABLE label_catalogs;
DROP TABLE profile_exports;
DROP TABLE device_members;
DROP TABLE member_consents;
DROP TABLE member_features;
