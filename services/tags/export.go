package tags

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/google/uuid"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/fault"
)

// Columns are the ClickHouse profile columns of the catalogue's labels.
func (c *Catalog) Columns() []clickhouse.ProfileColumn {
	out := make([]clickhouse.ProfileColumn, len(c.Labels))
	for i, l := range c.Labels {
		out[i] = clickhouse.ProfileColumn{Name: l.ID, Type: l.Type}
	}
	return out
}

// Exporter copies members' current labels to ClickHouse's member_profiles:
// profile_exports, written in the transaction that changed the labels, says
// who is behind; a row leaves the queue only after its version is in
// ClickHouse, so nothing is lost, and a row written twice collapses
// (ReplacingMergeTree by version).
type Exporter struct {
	svc     *Service
	schema  ProfileSchema
	w       *clickhouse.Writer
	ensured string // catalogue version whose columns exist
}

// ProfileSchema fits member_profiles and the analyst views to a catalogue:
// a *clickhouse.Schema, which does so on one server or, sharded, on every
// node of the cluster.
type ProfileSchema interface {
	EnsureProfiles(ctx context.Context, cols []clickhouse.ProfileColumn) error
	EraseMembers(ctx context.Context, tables []string, members []string) error
}

var _ ProfileSchema = (*clickhouse.Schema)(nil)

// NewExporter returns an exporter writing to conn (on a sharded database,
// through its Distributed member_profiles), whose tables schema keeps up
// with the catalogue.
func (s *Service) NewExporter(conn driver.Conn, schema ProfileSchema) *Exporter {
	return &Exporter{svc: s, schema: schema, w: clickhouse.NewWriter(conn)}
}

// Ensure creates the profile table, its label columns and the analyst views
// for the catalogue in force.
func (e *Exporter) Ensure(ctx context.Context) error {
	c := e.svc.Catalog()
	if e.ensured == c.Version {
		return nil
	}
	// ClickHouse finishes a DDL statement whose client has gone, so a
	// shutdown does not interrupt it: it completes before Run returns.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err := e.schema.EnsureProfiles(ctx, c.Columns()); err != nil {
		return err
	}
	e.ensured = c.Version
	return nil
}

// Export drains up to batch queued members into ClickHouse and returns how
// many it wrote.
func (e *Exporter) Export(ctx context.Context, batch int) (int, error) {
	if err := e.Ensure(ctx); err != nil {
		return 0, err
	}
	cols := e.svc.Catalog().Columns()
	// No lock is held while ClickHouse inserts (a worker re-queuing the
	// member must not wait for it): rows are read, inserted, then dequeued
	// where the version is still the one exported. Two exporters may
	// export a member twice; its rows collapse by version.
	pending, err := postgres.PendingProfileExports(ctx, e.svc.pool, batch)
	if err != nil {
		return 0, err
	}
	out := make([]clickhouse.ProfileRow, 0, len(pending))
	ids := make([]uuid.UUID, 0, len(pending))
	versions := make([]int64, 0, len(pending))
	// Each member's labels are decoded straight into the columns' order.
	index := newColumnIndex(cols)
	slab := make([]any, len(pending)*len(cols))
	for i, p := range pending {
		// The row's version is the labels' version; the queue's may lag a
		// newer write (then the row is exported again under it).
		r := clickhouse.ProfileRow{MemberID: p.Member.String(), Version: uint64(p.Version), CatalogVersion: p.CatalogVersion,
			UpdatedAt: p.UpdatedAt.UTC(), Consent: consentOf(p.ConsentGranted, p.ConsentWithdrawn),
			Withheld: !Consented(mcv1.ConsentPurpose_CONSENT_PURPOSE_PROFILING, p.ConsentGranted, p.ConsentWithdrawn)}
		if p.MergedInto != nil {
			r.MergedInto = p.MergedInto.String()
		}
		r.Columns = slab[i*len(cols) : (i+1)*len(cols) : (i+1)*len(cols)]
		if err := index.labelColumns(p.LabelsPB, p.LabelsJSON, r.Columns); err != nil {
			return 0, fmt.Errorf("labels of %s: %w", p.Member, err)
		}
		out = append(out, r)
		ids, versions = append(ids, p.Member), append(versions, p.Version)
	}
	if len(out) == 0 {
		return 0, nil
	}
	if err := e.w.InsertProfiles(ctx, cols, out); err != nil {
		return 0, err
	}
	// A member erased while its row was on the way: the sink may have
	// deleted its rows before this insert (the erasure committed first, so
	// it shows here), and the row just written goes too.
	erased, err := postgres.ErasedAmong(ctx, e.svc.pool, ids)
	if err != nil {
		return 0, err
	}
	if len(erased) > 0 {
		if err := e.schema.EraseMembers(ctx, []string{clickhouse.ProfilesTable}, erased); err != nil {
			return 0, err
		}
	}
	if err := postgres.DequeueProfileExports(ctx, e.svc.pool, ids, versions); err != nil {
		return 0, err
	}
	return len(out), nil
}

// Linger is how often the exporter looks for label changes to export (and
// so how long they gather): each export is one ClickHouse insert, which
// writes a part of the wide profile table, so about one insert a second
// costs far less than one per change. Nothing notifies it: PostgreSQL
// serialises the commits of notifying transactions.
const Linger = time.Second

// ExportBatch is how many members one export takes at most.
const ExportBatch = 50000

// Run exports the members whose labels changed every Linger, until ctx
// ends; a backlog is drained without waiting. Neither a PostgreSQL nor a
// ClickHouse restart ends it: a failed export is retried with backoff (at
// most 5 s apart).
func (e *Exporter) Run(ctx context.Context) error {
	fault.Drain(ctx, e.svc.log, "profile export", ExportBatch, Linger, e.Export)
	return nil
}

// columnIndex places a member's labels in member_profiles' column order.
type columnIndex struct {
	ids []string       // the labels' ids in id order, as labels_pb lists them
	at  []int          // the column of ids[k]
	k   map[string]int // the k of an id
}

func newColumnIndex(cols []clickhouse.ProfileColumn) columnIndex {
	x := columnIndex{ids: make([]string, len(cols)), at: make([]int, len(cols)), k: make(map[string]int, len(cols))}
	order := make([]int, len(cols))
	for j := range order {
		order[j] = j
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(cols[a].Name, cols[b].Name) })
	for k, j := range order {
		x.ids[k], x.at[k], x.k[cols[j].Name] = cols[j].Name, j, k
	}
	return x
}

// labelColumns decodes labels as stored (labels_pb, or JSON in a row written
// before it) into out, each label's value at its column; a label that is
// not a column (no longer in the catalogue) is left out. labels_pb lists
// labels in id order, as ids does, so a label is mostly found by comparing
// its id with the next one expected.
func (x columnIndex) labelColumns(pb, legacy []byte, out []any) error {
	next := 0
	put := func(id string, v any) {
		k := next
		if k >= len(x.ids) || x.ids[k] != id {
			var ok bool
			if k, ok = x.k[id]; !ok {
				return
			}
		}
		out[x.at[k]], next = v, k+1
	}
	if pb != nil {
		return eachLabelPB(pb, put)
	}
	labels, err := decodeStoredLabels(nil, legacy)
	if err != nil {
		return err
	}
	for id, v := range labels {
		put(id, v)
	}
	return nil
}
