package tags

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
)

// BackfillOptions tune a backfill.
type BackfillOptions struct {
	// Members per batch (one PostgreSQL transaction, one ClickHouse query).
	Batch int
	// Restart forgets the progress of an earlier run of this catalogue
	// version.
	Restart bool
	// Progress is called after every batch.
	Progress func(p BackfillProgress)
}

// BackfillProgress is where a backfill stands.
type BackfillProgress struct {
	Catalog string
	Done    int64 // members recomputed, over all runs of this version
	Total   int64 // active members
	Changed int64 // members whose labels changed
	Events  int64 // events read from ClickHouse in this run
	Resumed bool  // this run continued an interrupted one
	// AlreadyDone: this catalogue version was backfilled before; nothing
	// was done (Restart runs it again).
	AlreadyDone bool
	Elapsed     time.Duration
}

// Backfill recomputes every active member's features and labels from the
// event history in ClickHouse (member_events) with the catalogue in force:
// after a catalogue change, or to repair. Members are taken in id order and
// progress is stored with each batch's effects, so an interrupted backfill
// resumes where it stopped and a finished one does nothing until
// restarted; running it twice gives the same labels (label changes are
// written, with their outbox change, only where a value differs). Events
// the worker folded that have not reached ClickHouse yet are kept.
func (s *Service) Backfill(ctx context.Context, facts driver.Conn, o BackfillOptions) (BackfillProgress, error) {
	c := s.Catalog()
	if o.Batch <= 0 {
		o.Batch = 500
	}
	start := time.Now()
	p := BackfillProgress{Catalog: c.Version}
	if o.Restart {
		if _, err := s.pool.Exec(ctx, `DELETE FROM tag_backfills WHERE catalog_version = $1`, c.Version); err != nil {
			return p, fmt.Errorf("restart backfill: %w", err)
		}
	}
	var last *uuid.UUID
	var done bool
	err := s.pool.QueryRow(ctx, `INSERT INTO tag_backfills (catalog_version) VALUES ($1)
		ON CONFLICT (catalog_version) DO UPDATE SET updated_at = now()
		RETURNING last_member, members, changed, done`, c.Version).Scan(&last, &p.Done, &p.Changed, &done)
	if err != nil {
		return p, fmt.Errorf("backfill progress: %w", err)
	}
	p.Resumed = last != nil && !done
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM members WHERE merged_into IS NULL`).Scan(&p.Total); err != nil {
		return p, fmt.Errorf("count members: %w", err)
	}
	if done {
		p.AlreadyDone, p.Elapsed = true, time.Since(start)
		return p, nil
	}
	after := uuid.Nil
	if last != nil {
		after = *last
	}
	for {
		var ids []uuid.UUID
		rows, err := s.pool.Query(ctx, `SELECT member_id FROM members WHERE merged_into IS NULL AND member_id > $1
			ORDER BY member_id LIMIT $2`, after, o.Batch)
		if err == nil {
			ids, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		}
		if err != nil {
			return p, fmt.Errorf("next members: %w", err)
		}
		if len(ids) == 0 {
			break
		}
		n, changed, events, err := s.backfillBatch(ctx, facts, ids)
		if err != nil {
			return p, err
		}
		after = ids[len(ids)-1]
		p.Done += int64(n)
		p.Changed += int64(changed)
		p.Events += int64(events)
		p.Elapsed = time.Since(start)
		if o.Progress != nil {
			o.Progress(p)
		}
	}
	if _, err := s.pool.Exec(ctx, `UPDATE tag_backfills SET done = true, updated_at = now() WHERE catalog_version = $1`, c.Version); err != nil {
		return p, fmt.Errorf("finish backfill: %w", err)
	}
	p.Elapsed = time.Since(start)
	return p, nil
}

// backfillBatch rebuilds one batch of members in one transaction, with the
// progress row.
func (s *Service) backfillBatch(ctx context.Context, facts driver.Conn, ids []uuid.UUID) (n, changed, events int, err error) {
	c := s.Catalog()
	// Every member whose events now belong to a member of the batch: the
	// members merged into them, transitively.
	rows, err := s.pool.Query(ctx, `
		WITH RECURSIVE fold(member_id, root) AS (
		    SELECT member_id, member_id FROM members WHERE member_id = ANY($1)
		  UNION
		    SELECT m.member_id, f.root FROM members m JOIN fold f ON m.merged_into = f.member_id)
		SELECT member_id, root FROM fold`, ids)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("merged members: %w", err)
	}
	rootOf := map[string]uuid.UUID{}
	var origins []string
	for rows.Next() {
		var m, root uuid.UUID
		if err := rows.Scan(&m, &root); err != nil {
			rows.Close()
			return 0, 0, 0, err
		}
		rootOf[m.String()] = root
		origins = append(origins, m.String())
	}
	if err := rows.Err(); err != nil {
		return 0, 0, 0, err
	}
	built := map[uuid.UUID]*State{}
	for _, id := range ids {
		built[id] = &State{}
	}
	if err := ReadHistory(ctx, facts, origins, func(f Fact) {
		if root, ok := rootOf[f.Origin]; ok {
			built[root].Fold(f)
			events++
		}
	}); err != nil {
		return 0, 0, 0, err
	}
	err = postgres.RetryTx(ctx, s.pool, func(tx pgx.Tx) error {
		n, changed = 0, 0
		for _, id := range ids {
			m, err := s.lock(ctx, tx, id)
			if errors.Is(err, postgres.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if m.id != id { // merged since the batch was read
				continue
			}
			st := cloneState(built[id])
			st.Keep(m.state)
			m.state = st
			before := m.version
			if err := s.recompute(ctx, tx, m, nil, "backfill:"+c.Version, mcv1.Channel_CHANNEL_BACKOFFICE, ""); err != nil {
				return err
			}
			n++
			if m.version != before {
				changed++
			}
		}
		_, err := tx.Exec(ctx, `UPDATE tag_backfills SET last_member = $2, members = members + $3, changed = changed + $4, updated_at = now()
			WHERE catalog_version = $1`, c.Version, ids[len(ids)-1], n, changed)
		return err
	})
	return n, changed, events, err
}

func cloneState(s *State) *State {
	out := &State{Life: map[string]*Lifetime{}}
	for _, p := range s.Purchases {
		cp := *p
		out.Purchases = append(out.Purchases, &cp)
	}
	out.Acts = append(out.Acts, s.Acts...)
	for k, v := range s.Life {
		cp := *v
		out.Life[k] = &cp
	}
	return out
}

// ReadHistory streams the events of the given origin members from
// ClickHouse in time order, as facts.
func ReadHistory(ctx context.Context, facts driver.Conn, origins []string, fn func(Fact)) error {
	if len(origins) == 0 {
		return nil
	}
	marks := strings.TrimSuffix(strings.Repeat("?,", len(origins)), ",")
	args := make([]any, len(origins))
	for i, o := range origins {
		args[i] = o
	}
	rows, err := facts.Query(ctx, `
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
		var f Fact
		var coupons uint16
		var rating uint8
		var cats, brands []string
		var qty []int32
		var amounts []int64
		if err := rows.Scan(&f.EventID, &f.Kind, &f.Channel, &f.Store, &f.At, &f.Origin, &f.OrderID, &f.Amount, &f.Discount,
			&f.PointsRedeemed, &coupons, &rating, &cats, &brands, &qty, &amounts); err != nil {
			return fmt.Errorf("read history: %w", err)
		}
		f.Coupons, f.Rating = int(coupons), int(rating)
		if f.Kind == KindRefund { // facts store a refund's total as a negative amount
			f.Amount = -f.Amount
		}
		for i := range cats {
			f.Items = append(f.Items, Item{Category: cats[i], Brand: brands[i], Quantity: int64(qty[i]), Amount: amounts[i]})
		}
		fn(f)
	}
	return rows.Err()
}
