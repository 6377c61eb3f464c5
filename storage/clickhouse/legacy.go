package clickhouse

import (
	"context"
	"fmt"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// CountEventsWithPrefix counts the distinct events whose id starts with
// prefix, their amounts and their basket lines.
func CountEventsWithPrefix(ctx context.Context, conn driver.Conn, prefix string) (events uint64, amount int64, lines uint64, err error) {
	if err := conn.QueryRow(ctx, `SELECT count(), sum(amount_minor), sum(length(items.sku)) FROM member_events FINAL
		WHERE substring(event_id, 1, length(?)) = ?`, prefix, prefix).Scan(&events, &amount, &lines); err != nil {
		return 0, 0, 0, fmt.Errorf("count events: %w", err)
	}
	return events, amount, lines, nil
}
