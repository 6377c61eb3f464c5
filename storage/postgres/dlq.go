package postgres

import (
	"context"
	"fmt"
)

// DLQReplayed reports whether the dead letter at dlqTopic/partition@offset
// was replayed before.
func DLQReplayed(ctx context.Context, q Querier, dlqTopic string, partition int32, offset int64) (bool, error) {
	var done bool
	err := q.QueryRow(ctx, `SELECT EXISTS (SELECT FROM dlq_replays WHERE dlq_topic = $1 AND dlq_partition = $2 AND dlq_offset = $3)`,
		dlqTopic, partition, offset).Scan(&done)
	if err != nil {
		return false, fmt.Errorf("look up dlq replay: %w", err)
	}
	return done, nil
}

// RecordDLQReplay records that the dead letter at dlqTopic/partition@offset
// was replayed to topic/toPartition@toOffset (again, if it was before).
func RecordDLQReplay(ctx context.Context, q Querier, dlqTopic string, partition int32, offset int64, topic string, toPartition int32, toOffset int64) error {
	return exec(ctx, q, "record dlq replay", `
		INSERT INTO dlq_replays (dlq_topic, dlq_partition, dlq_offset, topic, partition, "offset") VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (dlq_topic, dlq_partition, dlq_offset) DO UPDATE
		   SET topic = excluded.topic, partition = excluded.partition, "offset" = excluded."offset",
		       replays = dlq_replays.replays + 1, last_replayed = now()`,
		dlqTopic, partition, offset, topic, toPartition, toOffset)
}
