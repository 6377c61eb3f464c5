-- +goose Up
-- Failed dynamic-code attempts per member number: after too many in a short
-- window the number is locked for a while, so six digits cannot be guessed
-- online.
CREATE TABLE member_code_failures (
    member_no   bigint NOT NULL,
    failed_at   timestamptz NOT NULL,
    store_id    text NOT NULL DEFAULT '',
    terminal_id text NOT NULL DEFAULT ''
);
CREATE INDEX member_code_failures_recent ON member_code_failures (member_no, failed_at);

-- +goose Down
DROP TABLE member_code_failures;
