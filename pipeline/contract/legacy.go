package contract

import "context"

// LegacyRecord is a record of a legacy system's change-data-capture topic
// (a Debezium envelope, or a tombstone with no value).
type LegacyRecord struct {
	Topic      string
	Partition  int32
	Offset     int64
	Key, Value []byte
}

// LegacyChanges applies a legacy system's changes while it still runs
// (membercenter import cdc). ApplyLegacyChanges applies a partition's
// records in order, each change once (a change at or before the last one
// applied to its legacy row changes nothing, so a batch applied again, or
// a topic holding the stream twice, changes nothing more); a record it
// refuses is returned alone with its reason (a data error: the stage
// dead-letters it), the others applied. err is the platform's: the batch
// is retried.
type LegacyChanges interface {
	ApplyLegacyChanges(ctx context.Context, recs []LegacyRecord) (rejected map[int]error, err error)
}
