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
	return readHistory(ctx, conn, `if(origin_member_id = '', member_id, origin_member_id) IN (`+marks(len(origins))+`)`, strs(origins), fn)
}

// ReadHistoryStoredUnder is ReadHistory for origin members whose events are
// all stored under one of members (each origin's own id, when none of them
// was ever merged into another): the table's key finds them, where
// ReadHistory reads every event.
func ReadHistoryStoredUnder(ctx context.Context, conn driver.Conn, members, origins []string, fn func(HistoryEvent)) error {
	if len(origins) == 0 || len(members) == 0 {
		return nil
	}
	return readHistory(ctx, conn, `member_id IN (`+marks(len(members))+`) AND if(origin_member_id = '', member_id, origin_member_id) IN (`+marks(len(origins))+`)`,
		append(strs(members), strs(origins)...), fn)
}

func marks(n int) string { return strings.TrimSuffix(strings.Repeat("?,", n), ",") }

func strs(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

func readHistory(ctx context.Context, conn driver.Conn, where string, args []any, fn func(HistoryEvent)) error {
	rows, err := conn.Query(ctx, `
		SELECT event_id, event_type, channel, store_id, occurred_at,
		       if(origin_member_id = '', member_id, origin_member_id) AS origin,
		       order_id, amount_minor, discount_minor, points_redeemed, coupon_count, review_rating,
		       items.category, items.brand, items.quantity, items.amount_minor
		  FROM member_events FINAL
		 WHERE `+where+`
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

// Purchase is a purchase as member_events keeps it, for replaying past
// purchases through a programme (campaign simulation).
type Purchase struct {
	MemberID, Channel, StoreID, OrderID string
	OccurredAt                          time.Time
	AmountMinor                         int64
	Items                               []ItemRow
}

// ReadPurchases streams the purchases that happened in [from, until), in
// time order; an error from fn stops it and is returned.
func ReadPurchases(ctx context.Context, conn driver.Conn, from, until time.Time, fn func(Purchase) error) error {
	rows, err := conn.Query(ctx, `SELECT member_id, occurred_at, channel, store_id, order_id, amount_minor,
		items.sku, items.category, items.brand, items.quantity, items.amount_minor
		FROM member_events FINAL
		WHERE event_type = 'transaction' AND occurred_at >= ? AND occurred_at < ?
		ORDER BY occurred_at, event_id`, from, until)
	if err != nil {
		return fmt.Errorf("read purchases: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var p Purchase
		var skus, cats, brands []string
		var qty []int32
		var amts []int64
		if err := rows.Scan(&p.MemberID, &p.OccurredAt, &p.Channel, &p.StoreID, &p.OrderID, &p.AmountMinor, &skus, &cats, &brands, &qty, &amts); err != nil {
			return fmt.Errorf("read purchases: %w", err)
		}
		for i := range skus {
			p.Items = append(p.Items, ItemRow{SKU: skus[i], Category: cats[i], Brand: brands[i], Quantity: qty[i], AmountMinor: amts[i]})
		}
		if err := fn(p); err != nil {
			return err
		}
	}
	return rows.Err()
}
