-- +goose Up
-- Dead letters that `membercenter dlq replay` re-published, keyed by the
-- letter's place in the dead-letter topic: a letter is replayed once (a
-- later run skips it unless forced). A letter written when a replayed
-- record failed again names the letter it replays (header
-- mc-dlq-replay-of) and is recorded under that original one.
CREATE TABLE dlq_replays (
    dlq_topic       text NOT NULL,
    dlq_partition   integer NOT NULL,
    dlq_offset      bigint NOT NULL,
    -- Where the replayed record went.
    topic           text NOT NULL,
    partition       integer NOT NULL,
    "offset"        bigint NOT NULL,
    replays         integer NOT NULL DEFAULT 1,
    first_replayed  timestamptz NOT NULL DEFAULT now(),
    last_replayed   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);

-- +goose Down
DROP TABLE dlq_replays;
