-- +goose Up
-- Members whose labels that a benefit of the programme depends on changed:
-- written by the tag worker in the transaction that changed the labels,
-- taken by the benefit stage, which re-evaluates the member's benefits
-- with the new labels and deletes the row in the same transaction. So a
-- benefit that follows a label ({labels: [sharer]}) is granted or revoked
-- when the label changes, whatever event changed it, and exactly once.
CREATE TABLE benefit_label_checks (
    member_id uuid PRIMARY KEY REFERENCES members(member_id),
    queued_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX benefit_label_checks_queued ON benefit_label_checks (queued_at);

-- +goose Down
DROP TABLE benefit_label_checks;
