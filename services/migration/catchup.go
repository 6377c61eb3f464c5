package migration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/fault"

	"github.com/membercenter/membercenter/services/attributes"
	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/identity"
)

// Incremental catch-up (docs/migration.md, "Catch-up"): while the legacy
// system still runs, each change of one of its rows — from a dated delta
// file or from a Debezium change-data-capture topic — brings what the
// platform derived from that row to the row's new value. The legacy system
// is the system of record for its members meanwhile. Each change is
// applied once: the position of the last change applied to each legacy row
// is written in the transaction of the change's effect (legacy_changes),
// and a change at or before it is skipped.

// Change is one change of a legacy row.
type Change struct {
	// File and Line say where it was read: a delta file and its line, or
	// "topic/partition@offset" (Line 0) for a CDC record.
	File string
	Line int
	// Table is the legacy table: members, identifiers, lots, months,
	// coupons or orders (their columns are those of the CSV export).
	Table string
	// Op is c (insert), u (update), d (delete) or r (a snapshot's read).
	Op string
	// Position orders the legacy system's changes (compared element by
	// element): a delta's pos, PostgreSQL's lsn, MySQL's binlog file
	// number, pos and row, Oracle's scn.
	Position []int64
	// Before and After are the row's columns ("" for a null); nil when
	// the change has none (Before of an insert, After of a delete).
	Before, After map[string]string
}

func (c *Change) where() *RowError {
	return &RowError{File: c.File, Line: c.Line, LegacyID: c.row()["legacy_id"]}
}

// row is the row a change is about: After, or Before for a delete.
func (c *Change) row() map[string]string {
	if c.Op == "d" {
		return c.Before
	}
	return c.After
}

// keyColumns are each table's key columns (an identifier's scope may be
// empty) and the other columns a change of it needs.
var keyColumns = map[string]struct{ key, needs []string }{
	"members":     {key: []string{"legacy_id"}},
	"identifiers": {key: []string{"legacy_id", "type", "scope", "value"}},
	"lots":        {key: []string{"legacy_id", "ref"}},
	"months":      {key: []string{"legacy_id", "month"}},
	"coupons":     {key: []string{"code"}, needs: []string{"legacy_id"}},
	"orders":      {key: []string{"order_id"}, needs: []string{"legacy_id"}},
}

// key is the legacy row's key, its columns joined.
func (c *Change) key(row map[string]string) string {
	var parts []string
	for _, k := range keyColumns[c.Table].key {
		parts = append(parts, row[k])
	}
	return strings.Join(parts, "\x00")
}

// check refuses a change that names no table, operation, position or key.
func (c *Change) check() error {
	cols, ok := keyColumns[c.Table]
	switch {
	case !ok:
		return fmt.Errorf("unknown table %q (members, identifiers, lots, months, coupons, orders)", c.Table)
	case c.Op != "c" && c.Op != "u" && c.Op != "d" && c.Op != "r":
		return fmt.Errorf("op %q is not c, u, d or r", c.Op)
	case len(c.Position) == 0:
		return errors.New("no position")
	case c.row() == nil && c.Op == "d":
		return errors.New("a delete without its before row")
	case c.row() == nil:
		return errors.New("no after row")
	}
	for _, p := range c.Position {
		if p < 0 {
			return fmt.Errorf("position %v is negative", c.Position)
		}
	}
	for _, k := range append(cols.key, cols.needs...) {
		v, ok := c.row()[k]
		if (!ok || v == "") && k != "scope" {
			return fmt.Errorf("%s: missing key column %s", c.Table, k)
		}
		if !clean(v) || len(v) > 256 {
			return fmt.Errorf("%s: %s contains control or non-UTF-8 characters, or is longer than 256", c.Table, k)
		}
	}
	return nil
}

// split makes an update that changes the row's key a delete of the old
// row and an insert of the new one.
func (c *Change) split() []*Change {
	if c.Op != "u" || c.Before == nil || c.key(c.Before) == c.key(c.After) {
		return []*Change{c}
	}
	del, ins := *c, *c
	del.Op, del.After = "d", nil
	ins.Op, ins.Before = "c", nil
	return []*Change{&del, &ins}
}

// Outcome is what a change did.
type Outcome int

// Outcomes of a change.
const (
	Applied   Outcome = iota
	Stale             // at or before the last change applied to its row: skipped
	Imported          // a members row of a member unknown to the platform: imported whole
	OfErased          // of a member erased at their request: not brought back
	Deleted           // a deletion the catch-up reports and does not apply
	Tombstone         // a CDC tombstone (no value): nothing to do
)

// CatchUpReport is what a catch-up did.
type CatchUpReport struct {
	Files []string // delta files, in the order applied
	// Read counts changes (refused ones included).
	Read, Applied, Stale, Imported, Erased int
	// Deleted are deletions reported and not applied, with where they are.
	Deleted []*RowError
	// Refused changes, each with where it is and why; Conflicts counts
	// those refused because an identifier belongs to another member.
	Refused   []*RowError
	Conflicts int
	// Ignored identifiers (placeholders, over a limit).
	Ignored []string
	Took    time.Duration
}

// CatchUp applies a legacy system's changes to the platform.
type CatchUp struct {
	*Importer
	// Facts is ClickHouse, where orders go; nil refuses order changes.
	Facts driver.Conn

	mu  sync.Mutex
	rep CatchUpReport
}

// Report returns what the catch-up did so far.
func (cu *CatchUp) Report() CatchUpReport {
	cu.mu.Lock()
	defer cu.mu.Unlock()
	rep := cu.rep
	rep.Files = append([]string(nil), rep.Files...)
	rep.Deleted = append([]*RowError(nil), rep.Deleted...)
	rep.Refused = append([]*RowError(nil), rep.Refused...)
	rep.Ignored = append([]string(nil), rep.Ignored...)
	return rep
}

// record counts a change's outcome (or its refusal) in the report.
func (cu *CatchUp) record(c *Change, out Outcome, ignored []string, err error) {
	cu.mu.Lock()
	defer cu.mu.Unlock()
	cu.rep.Read++
	where := c.where()
	switch {
	case err != nil:
		where.Reason = err.Error()
		cu.rep.Refused = append(cu.rep.Refused, where)
		if errors.Is(err, errConflict) {
			cu.rep.Conflicts++
		}
	case out == Applied:
		cu.rep.Applied++
	case out == Stale:
		cu.rep.Stale++
	case out == Imported:
		cu.rep.Imported++
	case out == OfErased:
		cu.rep.Erased++
	case out == Deleted:
		where.Reason = fmt.Sprintf("%s row deleted in the legacy system: not applied (%s)", c.Table, deletedWhy[c.Table])
		cu.rep.Deleted = append(cu.rep.Deleted, where)
	}
	for _, g := range ignored {
		cu.rep.Ignored = append(cu.rep.Ignored, fmt.Sprintf("%s: %s", where, g))
	}
}

// deletedWhy says why a deletion of a table's row is not applied.
var deletedWhy = map[string]string{
	"members": "erasing a member is its own audited act: EraseMember",
	"coupons": "a migrated coupon stays as it is; revoke it on the platform if it must go",
	"orders":  "an order's facts stay; a refund is its own event",
}

// errConflict marks a change refused because a unique identifier belongs
// to another member.
var errConflict = errors.New("conflict")

// Apply applies one change, once, and counts it in the report: its effect
// and its position in one transaction, or nothing. A change the platform
// cannot take is returned as a data error (fault.IsData) and changes
// nothing; any other error is the platform's (retry).
func (cu *CatchUp) Apply(ctx context.Context, c *Change) (Outcome, error) {
	out, ignored, err := cu.apply(ctx, c)
	if err != nil && !refusal(err) && !errors.Is(err, benefits.ErrInvalid) {
		return 0, err
	}
	if err != nil {
		if errors.Is(err, errConflict) || errors.Is(err, identity.ErrImportConflict) {
			err = fmt.Errorf("%w: %w (never merged by a catch-up; resolve it in the legacy system or merge on the platform)", errConflict, err)
		}
		err = fault.Permanent(err)
	}
	cu.record(c, out, ignored, err)
	return out, err
}

func (cu *CatchUp) apply(ctx context.Context, c *Change) (Outcome, []string, error) {
	if err := c.check(); err != nil {
		return 0, nil, fault.Permanent(err)
	}
	now := cu.now()
	parts := c.split()
	var orders []*orderChange
	for _, p := range parts {
		if p.Table == "orders" && p.Op != "d" {
			o, err := cu.writeOrder(ctx, p, now)
			if err != nil {
				return 0, nil, err
			}
			orders = append(orders, o)
		}
	}
	var out Outcome
	var ignored []string
	err := postgres.RetryTx(ctx, cu.Pool, func(tx pgx.Tx) error {
		out, ignored = Stale, nil
		// The row's identifiers (before and after: an update of its key
		// is two parts) first, then the member, in the order every
		// resolution takes them: a Resolve bringing one of them waits for
		// this change, or this for it, never each for the other.
		if err := cu.Identity.LockIdentifiersOf(ctx, tx, rowIdentifiers(c)); err != nil {
			return err
		}
		for _, p := range parts {
			o, ig, err := cu.applyIn(ctx, tx, p, now)
			if err != nil {
				return err
			}
			out, ignored = o, append(ignored, ig...) // an update of a row's key: its insert's
		}
		return nil
	})
	if err != nil {
		return 0, nil, err
	}
	for _, o := range orders {
		if o != nil && out == Applied {
			// Features and labels from the whole history, as the import's
			// orders do; run again after a crash, it finds the same.
			if _, _, _, err := cu.Tags.RebuildFromHistory(ctx, cu.Facts, []uuid.UUID{o.owner}, o.cause); err != nil {
				return 0, nil, err
			}
		}
	}
	return out, ignored, nil
}

// rowKey is the keyed hash a legacy row's changes are recorded under.
func (cu *CatchUp) rowKey(c *Change) []byte {
	return attributes.LegacyRowKey(cu.Identity.PII(), cu.Source, c.Table, c.key(c.row()))
}

// cause names a change in the ledger and on the change stream: unique per
// row and position.
func (cu *CatchUp) cause(c *Change) string {
	pos := make([]string, len(c.Position))
	for i, p := range c.Position {
		pos[i] = fmt.Sprint(p)
	}
	return fmt.Sprintf("catchup:%s:%s:%s@%s", cu.Source, c.Table, hex.EncodeToString(cu.rowKey(c)[:8]), strings.Join(pos, "."))
}

// applyIn applies one change (not an update of a row's key) in tx.
func (cu *CatchUp) applyIn(ctx context.Context, tx pgx.Tx, c *Change, now time.Time) (Outcome, []string, error) {
	fresh, err := postgres.ClaimLegacyChange(ctx, tx, cu.Source, cu.rowKey(c), c.Position, now)
	if err != nil || !fresh {
		return Stale, nil, err
	}
	row := c.row()
	legacyID := row["legacy_id"]
	if err := postgres.LockLegacyID(ctx, tx, cu.Source, legacyID); err != nil {
		return 0, nil, err
	}
	prev, found, err := cu.findLegacy(ctx, tx, legacyID)
	switch {
	case err != nil:
		return 0, nil, err
	case found && prev.Erased:
		// Nothing of an erased member is recorded, its row key included.
		return OfErased, nil, postgres.ForgetLegacyChange(ctx, tx, cu.Source, cu.rowKey(c))
	case c.Op == "d" && deletedWhy[c.Table] != "":
		return Deleted, nil, nil
	case !found && c.Table == "members":
		return cu.importRow(ctx, tx, c, now)
	case !found:
		return 0, nil, fault.Permanent(fmt.Errorf("legacy member %s is not imported: its members row comes first (or import it)", legacyID))
	case c.Table == "orders":
		return Applied, nil, nil // written to ClickHouse before; labels rebuilt after
	}
	member := prev.MemberID
	if err := postgres.SetLegacyChangeMember(ctx, tx, cu.Source, cu.rowKey(c), member); err != nil {
		return 0, nil, err
	}
	locked, err := postgres.LockMembers(ctx, tx, member)
	if err != nil {
		return 0, nil, err
	}
	if m := locked[member]; m.Status != "active" {
		return 0, nil, fault.Permanent(fmt.Errorf("legacy member %s became member %s, which was merged into another since (%s): its changes are not applied; resolve it on the platform", legacyID, member, m.Status))
	}
	cause := cu.cause(c)
	var ignored []string
	switch c.Table {
	case "members":
		ignored, err = cu.memberRow(ctx, tx, member, c, cause, now)
	case "identifiers":
		ignored, err = cu.identifierRow(ctx, tx, member, c, cause)
	case "lots", "months", "coupons":
		err = cu.loyaltyRow(ctx, tx, member, c, cause, now)
	}
	if err == nil {
		err = cu.Profile.ComputeLabels(ctx, tx, member, cause)
	}
	if err != nil {
		return 0, nil, err
	}
	return Applied, ignored, nil
}

// rowIdentifiers are the identifiers a change of a members or identifiers
// row links or unlinks (its rows before and after).
func rowIdentifiers(c *Change) []*mcv1.Identifier {
	var out []*mcv1.Identifier
	for _, row := range []map[string]string{c.Before, c.After} {
		if row == nil {
			continue
		}
		switch c.Table {
		case "members":
			for _, id := range identifiersOfColumns(row) {
				out = append(out, id.identifier())
			}
		case "identifiers":
			if id, ok := identifierOfRow(row); ok {
				out = append(out, id)
			}
		}
	}
	return out
}

// identifierOfRow is the identifier a row of the identifiers table holds
// (type, scope, value); false when its type is none the platform knows.
func identifierOfRow(row map[string]string) (*mcv1.Identifier, bool) {
	t, ok := identifierTypes[row["type"]]
	return &mcv1.Identifier{Type: t, Scope: row["scope"], Value: row["value"]}, ok
}

// memberOfRow reads a members row as the import reads a members.csv line.
func memberOfRow(c *Change, row map[string]string) (*Member, error) {
	j, err := memberOfColumns(row)
	if err != nil {
		return nil, fault.Permanent(err)
	}
	m, rerr := toMember(j, c.File, c.Line)
	if rerr != nil {
		return nil, fault.Permanent(errors.New(rerr.Reason))
	}
	return m, nil
}

// importRow imports a member the platform does not know, whole, as the
// import does.
func (cu *CatchUp) importRow(ctx context.Context, tx pgx.Tx, c *Change, now time.Time) (Outcome, []string, error) {
	m, err := memberOfRow(c, c.After)
	if err != nil {
		return 0, nil, err
	}
	keys := make([]string, 0, len(c.After))
	for k := range c.After {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	sum := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(sum, "%q=%q;", k, c.After[k])
	}
	m.SHA256 = sum.Sum(nil)
	ms := []*Member{m}
	results := make([]imported, 1)
	ready, skip := cu.checkProfiles(ms, results, now)
	if !skip[0] {
		if err := cu.importIn(ctx, tx, ms, ready, skip, results, true, now); err != nil && !errors.Is(err, errRedo) {
			return 0, nil, err
		}
	}
	if results[0].err != nil {
		return 0, nil, results[0].err
	}
	prev, found, err := cu.findLegacy(ctx, tx, m.LegacyID)
	if err == nil && found {
		err = postgres.SetLegacyChangeMember(ctx, tx, cu.Source, cu.rowKey(c), prev.MemberID)
	}
	if err != nil {
		return 0, nil, err
	}
	return Imported, results[0].ignored, nil
}

// memberRow applies a members row to a known member: identifiers of its
// columns (the before row's that are gone unlinked), attributes (an empty
// column removes one), consents, the tier when the row has the column.
func (cu *CatchUp) memberRow(ctx context.Context, tx pgx.Tx, member uuid.UUID, c *Change, cause string, now time.Time) ([]string, error) {
	m, err := memberOfRow(c, c.After)
	if err != nil {
		return nil, err
	}
	var gone []*mcv1.Identifier
	if c.Before != nil {
		kept := map[string]bool{}
		for _, id := range identifiersOfColumns(c.After) {
			kept[id.Type+"\x00"+id.Scope+"\x00"+id.Value] = true
		}
		for _, id := range identifiersOfColumns(c.Before) {
			if !kept[id.Type+"\x00"+id.Scope+"\x00"+id.Value] {
				gone = append(gone, id.identifier())
			}
		}
	}
	ignored, err := cu.identifiers(ctx, tx, member, m.Identifiers, gone, cause)
	if err != nil {
		return nil, err
	}
	attrs := map[string]string{}
	for k, v := range c.After {
		if !memberColumns[k] && !strings.HasPrefix(k, "consent_") {
			attrs[k] = v
		}
	}
	if err := cu.Profile.CatchUpProfile(ctx, tx, member, attrs, m.Consents, cause); err != nil {
		return nil, err
	}
	if _, ok := c.After["tier"]; ok {
		d := benefits.LegacyDelta{SetTier: true}
		d.Tier, d.TierSince = m.Loyalty.Tier, m.Loyalty.TierSince
		if err := cu.Benefits.CatchUpLegacy(ctx, tx, member, d, cause, now); err != nil {
			return nil, err
		}
	}
	return ignored, nil
}

// identifierRow links (insert, update, read) or unlinks (delete) a row of
// the identifiers table: legacy_id, type, scope, value.
func (cu *CatchUp) identifierRow(ctx context.Context, tx pgx.Tx, member uuid.UUID, c *Change, cause string) ([]string, error) {
	row := c.row()
	id, ok := identifierOfRow(row)
	if !ok {
		return nil, fault.Permanent(fmt.Errorf("type %q is not one of phone, email, wechat_unionid, miniprogram_openid, member_card, crm_id", row["type"]))
	}
	if c.Op == "d" {
		if id.Type == mcv1.IdentifierType_IDENTIFIER_TYPE_CRM_ID && id.Value == row["legacy_id"] {
			return nil, nil // the legacy id finds the member while it lives
		}
		return cu.identifiers(ctx, tx, member, nil, []*mcv1.Identifier{id}, cause)
	}
	return cu.identifiers(ctx, tx, member, []*mcv1.Identifier{id}, nil, cause)
}

func (cu *CatchUp) identifiers(ctx context.Context, tx pgx.Tx, member uuid.UUID, add, remove []*mcv1.Identifier, cause string) ([]string, error) {
	ign, err := cu.Identity.CatchUpIdentifiers(ctx, tx, member, add, remove, cause)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, g := range ign {
		out = append(out, fmt.Sprintf("%s %s ignored (%s)", identity.TypeName(g.Identifier.Type), g.Identifier.Masked, g.Rule))
	}
	return out, nil
}

// loyaltyRow applies a lots, months or coupons row.
func (cu *CatchUp) loyaltyRow(ctx context.Context, tx pgx.Tx, member uuid.UUID, c *Change, cause string, now time.Time) error {
	row := c.row()
	var d benefits.LegacyDelta
	bad := func(err error) error { return fault.Permanent(fmt.Errorf("%s: %w", c.Table, err)) }
	switch c.Table {
	case "lots":
		if c.Op == "d" {
			d.GoneLots = []string{row["ref"]}
			break
		}
		j, err := lotOfColumns(row)
		if err != nil {
			return bad(err)
		}
		lot, err := toLot(j)
		if err != nil {
			return bad(err)
		}
		d.Lots = []benefits.LegacyLot{lot}
	case "months":
		j, err := monthOfColumns(row)
		if err != nil {
			return bad(err)
		}
		if c.Op == "d" {
			j.Spend, j.Points, j.Orders = 0, 0, 0
		}
		mo, err := toMonth(j)
		if err != nil {
			return bad(err)
		}
		d.Months = []benefits.LegacyMonth{mo}
	case "coupons":
		cp, err := toCoupon(couponOfColumns(row))
		if err != nil {
			return bad(err)
		}
		d.Coupons = []benefits.LegacyCoupon{cp}
	}
	return cu.Benefits.CatchUpLegacy(ctx, tx, member, d, cause, now)
}

// orderChange is an order written to ClickHouse, whose owner's labels are
// rebuilt once its position is stored.
type orderChange struct {
	owner uuid.UUID
	cause string
}

// writeOrder writes an order change's fact to ClickHouse (the same event
// id as the import's: written again, ClickHouse keeps one row) unless the
// change is stale or its member is not there to take it (applyIn says
// which, in the transaction that stores the position).
func (cu *CatchUp) writeOrder(ctx context.Context, c *Change, now time.Time) (*orderChange, error) {
	j, err := orderOfColumns(c.After)
	if err != nil {
		return nil, fault.Permanent(fmt.Errorf("orders: %w", err))
	}
	o, rerr := checkOrder(j, c.File, c.Line)
	if rerr != nil {
		return nil, fault.Permanent(fmt.Errorf("orders: %s", rerr.Reason))
	}
	if err := cu.checkOrder(o, now); err != nil {
		return nil, fault.Permanent(fmt.Errorf("orders: %w", err))
	}
	if cu.Facts == nil {
		return nil, fault.Permanent(errors.New("orders: no ClickHouse to write the order to"))
	}
	stale, err := postgres.LegacyChangeStale(ctx, cu.Pool, cu.Source, cu.rowKey(c), c.Position)
	if err != nil || stale {
		return nil, err
	}
	l, found, err := cu.findLegacy(ctx, cu.Pool, o.LegacyID)
	if err != nil || !found || l.Erased {
		return nil, err // refused or counted by applyIn
	}
	owner, err := postgres.CanonicalMember(ctx, cu.Pool, l.MemberID)
	if err != nil {
		return nil, err
	}
	if err := clickhouse.NewWriter(cu.Facts).InsertEvents(ctx, []clickhouse.EventRow{cu.orderRow(o, owner, l.MemberID, now)}); err != nil {
		return nil, err
	}
	return &orderChange{owner: owner, cause: cu.cause(c)}, nil
}
