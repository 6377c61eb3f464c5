package clickhouse

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// HistoryEvent is one member event as member_events keeps it, for
// rebuilding what was derived from the events (the tag engine's backfill).
type HistoryEvent struct {
	EventID, EventType, Channel, StoreID string
	OccurredAt                           time.Time
	Origin                               string // the member whose identifiers caused it
	OrderID                              string
	AmountMinor, DiscountMinor           int64
	PointsRedeemed                       int64
	CouponCount                          int
	ReviewRating                         int
	Items                                []ItemRow
}

// ReadHistory streams the events of the given origin members in time order.
func ReadHistory(ctx context.Context, conn driver.Conn, origins []string, fn func(HistoryEvent)) error {
	if len(origins) == 0 {
		return nil
	}
	marks := strings.TrimSuffix(strings.Repeat("?,", len(origins)), ",")
	args := make([]any, len(origins))
	for i, o := range origins {
		args[i] = o
	}
	rows, err := conn.Query(ctx, `
		SELECT event_id, event_type, channel, store_id, occurred_at,
		       if(origin_member_id = '', member_id, origin_member_id) AS origin,
		       order_id, amount_minor, discount_minor, points_redeemed, coupon_count, review_rating,
		       items.category, items.brand, items.quantity, items.amount_minor
		  FROM member_events FINAL
		 WHERE if(origin_member_id = '', member_id, origin_member_id) IN (`+marks+`)
		 ORDER BY occurred_at, event_id`, args...)
	if err != nil {
		return fmt.Errorf("read history: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var e HistoryEvent
		var coupons uint16
		var rating uint8
		var cats, brands []string
		var qty []int32
		var amounts []int64
		if err := rows.Scan(&e.EventID, &e.EventType, &e.Channel, &e.StoreID, &e.OccurredAt, &e.Origin, &e.OrderID, &e.AmountMinor,
			&e.DiscountMinor, &e.PointsRedeemed, &coupons, &rating, &cats, &brands, &qty, &amounts); err != nil {
			return fmt.Errorf("read history: %w", err)
		}
		e.CouponCount, e.ReviewRating = int(coupons), int(rating)
		for i := range cats {
			e.Items = append(e.Items, ItemRow{Category: cats[i], Brand: brands[i], Quantity: qty[i], AmountMinor: amounts[i]})
		}
		fn(e)
	}
	return rows.Err()
}
