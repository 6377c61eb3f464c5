package migration

import (
	"context"
	"fmt"
	"hash/maphash"
	"sort"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/facts"
)

// OrdersReport is what an import of order history did.
type OrdersReport struct {
	Read, Written int
	Amount        int64 // minor units written
	Lines         int   // basket lines written
	// Members whose features and labels were rebuilt from their history,
	// and how long that took (of Took).
	Rebuilt     int
	RebuildTook time.Duration
	// Labelled: imported members without orders whose labels were left to
	// this run (Options.LabelsByOrders), computed.
	Labelled int
	// OfErased: orders of members erased at their request since their
	// import, left out.
	OfErased int
	Refused  []*RowError
	Took     time.Duration
}

// orderBatch is how many orders go to ClickHouse in one insert;
// rebuildBatch how many members' features one rebuild reads and writes
// at once, and rebuildWorkers how many rebuilds run at once.
const (
	orderBatch     = 10_000
	rebuildBatch   = 500
	rebuildWorkers = 2
)

// OrderEventID is the event id an imported order has in ClickHouse: one
// per source and order, so an import run again writes the same rows (which
// ClickHouse collapses) and never counts an order twice.
func OrderEventID(source, orderID string) string { return "legacy:" + source + ":" + orderID }

// ImportOrders writes the order history of src's imported members to
// ClickHouse's member_events (the facts analysts and the label engine read)
// and rebuilds those members' features and labels from their history with
// the tag engine. Orders earn nothing: points, tier and coupons came with
// the members (Run); the tier inputs are the members' months. An order of a
// member that was not imported (refused, or not in the export) is refused
// at its line. With dryRun, orders are read and checked (against the
// members a dry run of Run accepted) and nothing is written. Running it
// again changes nothing.
func (im *Importer) ImportOrders(ctx context.Context, src *Source, conn driver.Conn, dryRun bool, accepted map[string]bool, progress func(read int)) (OrdersReport, error) {
	start := time.Now()
	var rep OrdersReport
	members, err := postgres.LegacyMembersOf(ctx, im.Pool, im.Source)
	if err != nil {
		return rep, err
	}
	now := im.now
	w := clickhouse.NewWriter(conn)
	touched := map[uuid.UUID]bool{}
	var rows []clickhouse.EventRow
	// One insert to ClickHouse in flight while the next orders are read.
	writes, wctx := errgroup.WithContext(ctx)
	inserts := make(chan []clickhouse.EventRow)
	writes.Go(func() error {
		for batch := range inserts {
			if err := w.InsertEvents(wctx, batch); err != nil {
				return err // wctx ends: the reader stops at its next flush
			}
		}
		return nil
	})
	flush := func() error {
		if len(rows) == 0 || dryRun {
			rows = rows[:0]
			return nil
		}
		select {
		case inserts <- rows:
		case <-wctx.Done():
			return context.Cause(wctx)
		}
		rows = make([]clickhouse.EventRow, 0, orderBatch)
		return nil
	}
	seen := newOrderIDs()
	erased := map[string]bool{}
	// A member merged since lives on in another (they are few: found in
	// one statement, each followed to its survivor).
	canonical := map[uuid.UUID]uuid.UUID{}
	if !dryRun {
		merged, err := postgres.MergedLegacyMembers(ctx, im.Pool, im.Source)
		if err != nil {
			return rep, err
		}
		for _, m := range merged {
			if canonical[m], err = postgres.CanonicalMember(ctx, im.Pool, m); err != nil {
				return rep, err
			}
		}
	}
	err = src.EachOrder(func(o *Order, rerr *RowError) error {
		rep.Read++
		if progress != nil {
			progress(rep.Read)
		}
		if rerr != nil {
			rep.Refused = append(rep.Refused, rerr)
			return nil
		}
		if err := im.checkOrder(o, now()); err != nil {
			rep.Refused = append(rep.Refused, &RowError{File: o.File, Line: o.Line, LegacyID: o.LegacyID, Reason: err.Error()})
			return nil
		}
		member, ok := members[o.LegacyID]
		if dryRun && accepted[o.LegacyID] {
			member, ok = uuid.Nil, true
		}
		if !ok {
			gone, err := im.erasedSince(ctx, o.LegacyID, erased)
			if err != nil {
				return err
			}
			if gone {
				rep.OfErased++
				return nil
			}
			rep.Refused = append(rep.Refused, &RowError{File: o.File, Line: o.Line, LegacyID: o.LegacyID, Reason: "no imported member with this legacy_id"})
			return nil
		}
		if first, dup := seen.line(o.OrderID); dup {
			rep.Refused = append(rep.Refused, &RowError{File: o.File, Line: o.Line, LegacyID: o.LegacyID, Reason: fmt.Sprintf("order_id also on line %d", first)})
			return nil
		}
		seen.add(o.OrderID, o.Line)
		owner := member
		if c, ok := canonical[member]; ok {
			owner = c
		}
		rows = append(rows, im.orderRow(o, owner, member, now()))
		rep.Written++
		rep.Amount += o.Total
		rep.Lines += len(o.Items)
		touched[owner] = true
		if len(rows) >= orderBatch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	close(inserts)
	if werr := writes.Wait(); err == nil {
		err = werr
	}
	if err != nil || dryRun {
		if dryRun {
			rep.Written, rep.Amount, rep.Lines = 0, 0, 0
		}
		rep.Took = time.Since(start)
		return rep, err
	}
	// The members were just loaded in bulk: the rebuild's statements are
	// planned on fresh statistics.
	if err := postgres.AnalyzeMembers(ctx, im.Pool); err != nil {
		return rep, err
	}
	ids := make([]uuid.UUID, 0, len(touched))
	for m := range touched {
		ids = append(ids, m)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i].String() < ids[j].String() })
	// Batches of members rebuilt at once: one reading its history from
	// ClickHouse while another writes to PostgreSQL.
	rebuilding := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(rebuildWorkers)
	var mu sync.Mutex
	for len(ids) > 0 {
		n := min(len(ids), rebuildBatch)
		batch := ids[:n]
		ids = ids[n:]
		g.Go(func() error {
			done, _, _, err := im.Tags.RebuildFromHistory(gctx, conn, batch, "import:"+im.Source+":orders")
			mu.Lock()
			rep.Rebuilt += done
			mu.Unlock()
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return rep, err
	}
	// Members the import left to this run without orders to rebuild from.
	rest, err := postgres.LegacyMembersWithoutFeatures(ctx, im.Pool, im.Source)
	if err != nil {
		return rep, err
	}
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(rebuildWorkers)
	for len(rest) > 0 {
		n := min(len(rest), rebuildBatch)
		batch := rest[:n]
		rest = rest[n:]
		g.Go(func() error {
			ids, causes := make([]uuid.UUID, len(batch)), make([]string, len(batch))
			for i, l := range batch {
				ids[i], causes[i] = l.MemberID, "import:"+im.Source+":"+l.LegacyID
			}
			err := postgres.RetryTx(gctx, im.Pool, func(tx pgx.Tx) error {
				return im.Profile.ComputeLabelsBatch(gctx, tx, ids, causes)
			})
			mu.Lock()
			if err == nil {
				rep.Labelled += len(batch)
			}
			mu.Unlock()
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return rep, err
	}
	rep.RebuildTook = time.Since(rebuilding)
	sort.SliceStable(rep.Refused, func(i, j int) bool { return rep.Refused[i].Line < rep.Refused[j].Line })
	rep.Took = time.Since(start)
	return rep, nil
}

// orderRow is an order of member's history as ClickHouse's member_events
// holds it, under owner (the member it lives on in since a merge).
func (im *Importer) orderRow(o *Order, owner, member uuid.UUID, now time.Time) clickhouse.EventRow {
	ch := o.Channel
	if ch == "" {
		ch = "pos"
	}
	cur := o.Currency
	if cur == "" {
		cur = "CNY"
	}
	var items []clickhouse.ItemRow
	for _, l := range o.Items {
		items = append(items, clickhouse.ItemRow{SKU: l.SKU, Category: l.Category, Brand: l.Brand, Quantity: l.Quantity, AmountMinor: l.Amount})
	}
	return clickhouse.EventRow{EventID: OrderEventID(im.Source, o.OrderID), MemberID: owner.String(),
		OriginMemberID: member.String(), EventType: facts.KindTransaction, Channel: ch, StoreID: o.StoreID,
		OccurredAt: o.At, IngestedAt: now, OrderID: o.OrderID, Currency: cur, AmountMinor: o.Total, DiscountMinor: o.Discount,
		Items: items}
}

// OrderTotals is what an order history adds up to: the orders, their
// amount and their basket lines.
type OrderTotals struct {
	Orders uint64
	Amount int64
	Lines  uint64
}

func (t OrderTotals) String() string {
	return fmt.Sprintf("%d (amount %d, %d lines)", t.Orders, t.Amount, t.Lines)
}

// VerifyOrders reconciles the order history: the orders the source holds
// for imported members against the imported orders ClickHouse holds, in
// count, amount and lines.
func (im *Importer) VerifyOrders(ctx context.Context, src *Source, conn driver.Conn) (source, stored OrderTotals, err error) {
	members, err := postgres.LegacyMembersOf(ctx, im.Pool, im.Source)
	if err != nil {
		return source, stored, err
	}
	seen := newOrderIDs()
	erased := map[string]bool{}
	now := im.now
	err = src.EachOrder(func(o *Order, rerr *RowError) error {
		if rerr != nil || im.checkOrder(o, now()) != nil {
			return nil
		}
		if _, dup := seen.line(o.OrderID); dup {
			return nil
		}
		_, ok := members[o.LegacyID]
		if !ok {
			// An erased member's orders stay in ClickHouse under its
			// pseudonymous id: they count on both sides.
			if ok, err = im.erasedSince(ctx, o.LegacyID, erased); err != nil {
				return err
			}
		}
		if ok {
			seen.add(o.OrderID, o.Line)
			source.Orders++
			source.Amount += o.Total
			source.Lines += uint64(len(o.Items))
		}
		return nil
	})
	if err != nil {
		return source, stored, err
	}
	stored.Orders, stored.Amount, stored.Lines, err = clickhouse.CountEventsWithPrefix(ctx, conn, OrderEventID(im.Source, ""))
	return source, stored, err
}

// checkOrder refuses an order the platform would not take from a channel
// (the programme's currency and amounts) or at a time no legacy record may
// carry (legacyTime). Verify leaves out
// what it refuses, as the import does.
func (im *Importer) checkOrder(o *Order, now time.Time) error {
	if err := legacyTime("at", o.At, now); err != nil {
		return err
	}
	lines := make([]int64, len(o.Items))
	for i, l := range o.Items {
		lines[i] = l.Amount
	}
	return im.Benefits.CheckOrderMoney(o.Currency, o.Total, o.Discount, lines)
}

// orderIDs remembers the order ids seen and the line of each by a 128-bit
// hash of the id (two seeded hashes) rather than by the string: an export's
// ten million orders then leave no ten million pointers for the garbage
// collector to scan while the file is read.
type orderIDs struct {
	s1, s2 maphash.Seed
	lines  map[[2]uint64]int
}

func newOrderIDs() *orderIDs {
	return &orderIDs{s1: maphash.MakeSeed(), s2: maphash.MakeSeed(), lines: map[[2]uint64]int{}}
}

func (o *orderIDs) key(id string) [2]uint64 {
	return [2]uint64{maphash.String(o.s1, id), maphash.String(o.s2, id)}
}

// line is the line id was first seen on.
func (o *orderIDs) line(id string) (int, bool) {
	l, ok := o.lines[o.key(id)]
	return l, ok
}

func (o *orderIDs) add(id string, line int) { o.lines[o.key(id)] = line }
