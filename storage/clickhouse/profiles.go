package clickhouse

import (
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Label value types, as the catalogue names them.
const (
	LabelBool   = "bool"
	LabelEnum   = "enum"
	LabelNumber = "number"
)

// ProfilesTable is the table of current label values, one row per member
// (the newest version wins) and one Nullable column per catalogue label.
const ProfilesTable = "member_profiles"

// ProfileColumn is the column of one catalogue label in member_profiles.
type ProfileColumn struct {
	// Name is the label id, ^[a-z][a-z0-9_]{0,62}$.
	Name string
	// Type is the label's value type: "bool", "enum" or "number".
	Type string
}

// SQLType is the ClickHouse type of the column: absent values are NULL.
func (c ProfileColumn) SQLType() (string, error) {
	switch c.Type {
	case LabelBool:
		return "Nullable(UInt8)", nil
	case LabelEnum:
		return "Nullable(String)", nil
	case LabelNumber:
		return "Nullable(Float64)", nil
	}
	return "", fmt.Errorf("label %q: value type %q is not bool, enum or number", c.Name, c.Type)
}

var labelColumnName = regexp.MustCompile(`^[a-z][a-z0-9_]{0,62}$`)

// keywordLabelIDs are ids ClickHouse 18.16 writes unquoted into a view's
// stored definition and then cannot parse back (found by creating the views
// with every SQL keyword as a label id): such a view breaks SHOW CREATE and
// the server's next start.
var keywordLabelIDs = map[string]bool{"not": true, "distinct": true, "interval": true}

// CheckLabelID reports whether id can name a member_profiles column: it
// must match ^[a-z][a-z0-9_]{0,62}$, must not be one of the table's fixed
// columns, and must not be a keyword ClickHouse 18.16 cannot read back in a
// view ("not", "distinct", "interval"). Catalogue loaders should refuse
// such ids up front; EnsureProfiles refuses them too.
func CheckLabelID(id string) error {
	if !labelColumnName.MatchString(id) {
		return fmt.Errorf("label %q: id must match %s", id, labelColumnName)
	}
	for _, f := range profileFixed {
		if f.name == id {
			return fmt.Errorf("label %q: id is a fixed column of %s", id, ProfilesTable)
		}
	}
	if keywordLabelIDs[id] {
		return fmt.Errorf("label %q: id is a SQL keyword ClickHouse views cannot use unquoted", id)
	}
	return nil
}

// profileFixed are member_profiles' columns that are not labels. A column
// with a default was added after the table's first release: a table
// without it gets it (ALTER ... ADD COLUMN with the default).
var profileFixed = []struct{ name, typ, def string }{
	{"member_id", "String", ""},
	{"version", "UInt64", ""},
	{"updated_at", "DateTime", ""},
	{"catalog_version", "String", ""},
	{"behavioural_withheld", "UInt8", ""},
	{ConsentMarketing, "UInt8", "1"},
	{ConsentProfiling, "UInt8", "1"},
	{ConsentThirdParty, "UInt8", "0"},
	{ConsentAnalytics, "UInt8", "1"},
	{MergedInto, "String", "''"},
}

// MergedInto is member_profiles' column that names, in the row of a member
// merged into another, the member it was merged into; it is empty in a
// member's own row. A merged id stands for its survivor, whose row holds
// its labels: segments and the analyst views leave such rows out
// (IsMember), and an unmerge writes the member's own row again.
const MergedInto = "merged_into"

// IsMember is the condition of a member_profiles row that is a member's own
// (not one of an id merged into another).
const IsMember = MergedInto + " = ''"

// forAnalytics is the condition of the rows the analyst views read: members
// who consent to analytics.
const forAnalytics = ConsentAnalytics + " = 1 AND " + IsMember

// The consent columns of member_profiles: 1 when the member consents to
// the purpose (by decision or by default), 0 otherwise. A use of profiles
// for a purpose filters on its column (segment.Query.For); the analyst
// views keep the members who consent to analytics.
const (
	ConsentMarketing  = "consent_marketing"
	ConsentProfiling  = "consent_profiling"
	ConsentThirdParty = "consent_third_party"
	ConsentAnalytics  = "consent_analytics"
)

// Consent is a member's consent per purpose, as member_profiles holds it.
// Its zero value is a member who never decided: consenting to marketing,
// profiling and analytics, not to third-party sharing. Profiling is
// ProfileRow.Withheld: consent_profiling is the complement of
// behavioural_withheld.
type Consent struct {
	// Withdrawn: no consent to the purpose.
	NoMarketing, NoAnalytics bool
	// Granted: consent to sharing with third parties.
	ThirdParty bool
}

// validateProfileColumns checks names and types and that no label shadows a
// fixed column or another label.
func validateProfileColumns(cols []ProfileColumn) error {
	var errs []error
	seen := map[string]bool{}
	for _, c := range cols {
		if err := CheckLabelID(c.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		if seen[c.Name] {
			errs = append(errs, fmt.Errorf("label %q: listed twice", c.Name))
		}
		seen[c.Name] = true
		if _, err := c.SQLType(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// quoteIdent quotes a validated column name: a label id such as "select"
// or "from" is a keyword.
func quoteIdent(name string) string { return "`" + name + "`" }

// EnsureProfiles makes member_profiles hold a column for every label in
// cols and (re)creates the analyst views over it (docs/analytics.md), in
// the database conn reaches, laid out for one server (Schema.EnsureProfiles
// serves a cluster). Run it after Migrate, whenever a catalogue is loaded;
// running it again is a no-op apart from recreating the views.
//
// Columns are only ever added. A label that left the catalogue keeps its
// column (and its history): rows written afterwards hold NULL there, and the
// views, which follow the catalogue, stop showing it. An existing column
// whose type differs from the label's type is refused: changing a label's
// type needs a new label id (or a manual migration of the column).
func EnsureProfiles(ctx context.Context, conn driver.Conn, cols []ProfileColumn) error {
	if err := validateProfileColumns(cols); err != nil {
		return fmt.Errorf("member_profiles columns: %w", err)
	}
	return ensureProfiles(ctx, []driver.Conn{conn}, layout{}, cols)
}

// ensureProfiles runs EnsureProfiles on every node, one step at a time
// across all of them: sharded, the local tables get their columns before
// any Distributed table shows them.
func ensureProfiles(ctx context.Context, nodes []driver.Conn, l layout, cols []ProfileColumn) error {
	for _, conn := range nodes {
		if err := checkLayout(ctx, conn, l); err != nil {
			return err
		}
	}
	var defs []string
	for _, f := range profileFixed {
		defs = append(defs, fixedDef(f.name, f.typ, f.def))
	}
	for _, c := range cols {
		t, _ := c.SQLType()
		defs = append(defs, quoteIdent(c.Name)+" "+t)
	}
	table := ProfilesTable
	if l.sharded() {
		table += LocalSuffix
	}
	// No partitioning: the table holds one small row per member and is
	// replaced in place; FINAL merges across the whole table anyway.
	create := "CREATE TABLE IF NOT EXISTS " + table + " (\n    " + strings.Join(defs, ",\n    ") +
		"\n) ENGINE = ReplacingMergeTree(version)\nORDER BY member_id"
	for _, conn := range nodes {
		if err := ensureProfileTable(ctx, conn, table, create, cols); err != nil {
			return err
		}
	}
	if l.sharded() {
		for _, conn := range nodes {
			if err := ensureProfileTable(ctx, conn, ProfilesTable, l.distributed(ProfilesTable), cols); err != nil {
				return err
			}
		}
	}
	for _, conn := range nodes {
		if err := ensureViews(ctx, conn, cols); err != nil {
			return err
		}
	}
	return nil
}

// fixedDef is a fixed column's definition.
func fixedDef(name, typ, def string) string {
	if def == "" {
		return quoteIdent(name) + " " + typ
	}
	return quoteIdent(name) + " " + typ + " DEFAULT " + def
}

// ensureProfileTable creates table with create if missing and adds the
// fixed and label columns it lacks.
func ensureProfileTable(ctx context.Context, conn driver.Conn, table, create string, cols []ProfileColumn) error {
	if err := conn.Exec(ctx, create); err != nil {
		return fmt.Errorf("create %s: %w", table, err)
	}
	missing, err := missingProfileColumns(ctx, conn, table, cols)
	if err != nil {
		return err
	}
	if len(missing) == 0 {
		return nil
	}
	adds := make([]string, len(missing))
	for i, c := range missing {
		adds[i] = "ADD COLUMN " + c
	}
	// 18.16 has no ADD COLUMN IF NOT EXISTS: when another process added
	// the same columns first, the ALTER fails and the re-read below
	// decides.
	alterErr := conn.Exec(ctx, "ALTER TABLE "+table+" "+strings.Join(adds, ", "))
	still, err := missingProfileColumns(ctx, conn, table, cols)
	if err != nil {
		return err
	}
	if len(still) > 0 {
		return fmt.Errorf("add %d columns to %s: %w", len(still), table, alterErr)
	}
	return nil
}

// missingProfileColumns reads member_profiles' columns, refuses type
// conflicts, and returns the definitions of the columns not there yet: the
// fixed columns added since the table's first release, then the labels'.
func missingProfileColumns(ctx context.Context, conn driver.Conn, table string, cols []ProfileColumn) ([]string, error) {
	have, err := tableColumns(ctx, conn, table)
	if err != nil {
		return nil, err
	}
	var errs []error
	var missing []string
	for _, f := range profileFixed {
		t, ok := have[f.name]
		if !ok && f.def != "" {
			missing = append(missing, fixedDef(f.name, f.typ, f.def))
			continue
		}
		if !ok || t != f.typ {
			errs = append(errs, fmt.Errorf("%s.%s is %q, want %s (a table of that name that member center did not create?)",
				table, f.name, t, f.typ))
		}
	}
	for _, c := range cols {
		want, _ := c.SQLType()
		got, ok := have[c.Name]
		switch {
		case !ok:
			missing = append(missing, quoteIdent(c.Name)+" "+want)
		case got != want:
			errs = append(errs, fmt.Errorf("label %q is %s in the catalogue but %s.%s is %s: a label's type cannot change under the same id",
				c.Name, c.Type, table, c.Name, got))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return missing, nil
}

func tableColumns(ctx context.Context, conn driver.Conn, table string) (map[string]string, error) {
	rows, err := conn.Query(ctx, `SELECT name, type FROM system.columns
		WHERE database = currentDatabase() AND table = '`+table+`'`)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", table, err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			return nil, fmt.Errorf("read columns of %s: %w", table, err)
		}
		out[name] = typ
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", table, err)
	}
	return out, nil
}

// Fixed label ids the views rely on.
const (
	labelRScore         = "rfm_r_score"
	labelFScore         = "rfm_f_score"
	labelMScore         = "rfm_m_score"
	labelLifecycleStage = "lifecycle_stage"
	labelLTV            = "ltv_365d"
)

// LifecycleStages are the lifecycle_stage values in funnel order.
var LifecycleStages = []string{
	"potential", "new", "first_experience", "growing", "deeply_engaged",
	"loyal", "at_risk", "dormant", "lost", "win_back",
}

// ProfileViews are the analyst views EnsureProfiles manages.
var ProfileViews = []string{"current_profiles", "label_distribution", "rfm_matrix", "lifecycle_funnel", "daily_kpis"}

// ensureViews drops and recreates every view, so each follows the
// catalogue; a view whose labels are missing from it is dropped and not
// recreated. Between the drop and the create a query of the view fails:
// catalogue loads are rare and the window is one round trip.
func ensureViews(ctx context.Context, conn driver.Conn, cols []ProfileColumn) error {
	typ := map[string]string{}
	for _, c := range cols {
		typ[c.Name] = c.Type
	}
	views := map[string]string{
		"current_profiles": "SELECT * FROM " + ProfilesTable + " FINAL WHERE " + forAnalytics,
		"daily_kpis":       dailyKPIsView(typ[labelLTV] == LabelNumber),
	}
	if len(cols) > 0 {
		views["label_distribution"] = labelDistributionView(cols)
	}
	if typ[labelRScore] == LabelNumber && typ[labelFScore] == LabelNumber {
		views["rfm_matrix"] = rfmMatrixView(typ[labelMScore] == LabelNumber, typ[labelLTV] == LabelNumber)
	}
	if typ[labelLifecycleStage] == LabelEnum {
		views["lifecycle_funnel"] = lifecycleFunnelView()
	}
	engines, err := tableEngines(ctx, conn, ProfileViews)
	if err != nil {
		return err
	}
	for _, name := range ProfileViews {
		if e, ok := engines[name]; ok && e != "View" {
			return fmt.Errorf("%s exists and is a %s, not a view: refusing to replace it", name, e)
		}
	}
	for _, name := range ProfileViews {
		// DROP TABLE drops views on every ClickHouse release; DROP VIEW
		// is newer than 18.16.
		if err := conn.Exec(ctx, "DROP TABLE IF EXISTS "+name); err != nil {
			return fmt.Errorf("drop view %s: %w", name, err)
		}
		q, ok := views[name]
		if !ok {
			continue
		}
		// IF NOT EXISTS: two processes loading the same catalogue at once
		// both succeed.
		if err := conn.Exec(ctx, "CREATE VIEW IF NOT EXISTS "+name+" AS\n"+q); err != nil {
			return fmt.Errorf("create view %s: %w", name, err)
		}
		// 18.16 stores the view's query re-formatted, identifiers unquoted,
		// and re-parses it on SHOW CREATE and at start: a definition it
		// cannot read back would stop the server from loading the database.
		if err := readBack(ctx, conn, name); err != nil {
			_ = conn.Exec(ctx, "DROP TABLE IF EXISTS "+name)
			return fmt.Errorf("view %s: ClickHouse cannot read back its stored definition (a label id that is a SQL keyword?): %w", name, err)
		}
	}
	return nil
}

func readBack(ctx context.Context, conn driver.Conn, name string) error {
	rows, err := conn.Query(ctx, "SHOW CREATE TABLE "+name)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
	}
	return rows.Err()
}

// ProfilesNotMade reports whether the database is the platform's (its
// facts tables are migrated) and has no member_profiles yet: the tag
// stage's first catalogue makes it, and until then no member has a
// profile. A database without the facts tables is not the platform's (a
// wrong database configured), and is not taken for one without profiles.
func ProfilesNotMade(ctx context.Context, conn driver.Conn) (bool, error) {
	made, err := tableEngines(ctx, conn, []string{ProfilesTable, "member_events"})
	if err != nil {
		return false, err
	}
	_, profiles := made[ProfilesTable]
	_, facts := made["member_events"]
	return facts && !profiles, nil
}

func tableEngines(ctx context.Context, conn driver.Conn, names []string) (map[string]string, error) {
	rows, err := conn.Query(ctx, `SELECT name, engine FROM system.tables
		WHERE database = currentDatabase() AND has(['`+strings.Join(names, "','")+`'], name)`)
	if err != nil {
		return nil, fmt.Errorf("read tables: %w", err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var name, engine string
		if err := rows.Scan(&name, &engine); err != nil {
			return nil, fmt.Errorf("read tables: %w", err)
		}
		out[name] = engine
	}
	return out, rows.Err()
}

// labelDistributionView counts the current profiles per value of every
// label column: one small GROUP BY per label, unioned. Values are text:
// "true"/"false", the enum value, the number as toString prints it; NULL
// when absent.
//
// One branch per label rather than one arrayJoin over an array of
// (label, value) tuples: FINAL on 18.16 copies every column it reads row by
// row, so a single pass over 250 Nullable columns of 1M members takes ~17 s
// before any counting (44 s in all with the arrayJoin), while 250 branches
// reading three columns each take ~12 s on two cores.
func labelDistributionView(cols []ProfileColumn) string {
	parts := make([]string, len(cols))
	for i, c := range cols {
		col := quoteIdent(c.Name)
		var v string
		switch c.Type {
		case LabelBool:
			v = "if(" + col + " = 1, 'true', 'false')"
		case LabelEnum:
			v = col
		case LabelNumber:
			v = "toString(" + col + ")"
		}
		parts[i] = "    SELECT '" + c.Name + "' AS label_id, CAST(" + v + " AS Nullable(String)) AS value, count() AS members\n" +
			"    FROM " + ProfilesTable + " FINAL\n    WHERE " + forAnalytics + "\n    GROUP BY value"
	}
	return "SELECT label_id, value, members\nFROM (\n" + strings.Join(parts, "\n    UNION ALL\n") + "\n)"
}

func rfmMatrixView(haveM, haveLTV bool) string {
	m, ltv := "CAST(NULL AS Nullable(Float64))", "CAST(NULL AS Nullable(Float64))"
	if haveM {
		m = "avg(" + quoteIdent(labelMScore) + ")"
	}
	if haveLTV {
		ltv = "avg(" + quoteIdent(labelLTV) + ")"
	}
	return `SELECT
    assumeNotNull(` + quoteIdent(labelRScore) + `) AS r_score,
    assumeNotNull(` + quoteIdent(labelFScore) + `) AS f_score,
    count() AS members,
    ` + m + ` AS avg_m_score,
    ` + ltv + ` AS avg_ltv_365d
FROM ` + ProfilesTable + ` FINAL
WHERE isNotNull(` + quoteIdent(labelRScore) + `) AND isNotNull(` + quoteIdent(labelFScore) + `) AND ` + forAnalytics + `
GROUP BY r_score, f_score`
}

func lifecycleFunnelView() string {
	stages := "['" + strings.Join(LifecycleStages, "', '") + "']"
	col := quoteIdent(labelLifecycleStage)
	// The fixed stages are unioned in with zero members so that every
	// stage has a row; values outside the model sort last.
	return `SELECT
    stage,
    toUInt8(if(indexOf(` + stages + `, stage) = 0, 99, indexOf(` + stages + `, stage))) AS stage_order,
    members,
    members / nullIf((SELECT count() FROM ` + ProfilesTable + ` FINAL WHERE isNotNull(` + col + `) AND ` + forAnalytics + `), 0) AS share
FROM (
    SELECT stage, sum(n) AS members
    FROM (
        SELECT assumeNotNull(` + col + `) AS stage, count() AS n
        FROM ` + ProfilesTable + ` FINAL
        WHERE isNotNull(` + col + `) AND ` + forAnalytics + `
        GROUP BY stage
        UNION ALL
        SELECT arrayJoin(` + stages + `) AS stage, toUInt64(0) AS n
    )
    GROUP BY stage
)`
}

// dailyKPIsView computes the seed plan's daily KPIs from the facts tables;
// docs/analytics.md defines every column. Three parts are unioned and summed
// per day: the creation cohort of the day (new members, 7-day conversion,
// 30-day retention, LTV index), the day's buyers and orders, and the day's
// points movements. Written for 18.16: one JOIN per SELECT, USING, explicit
// strictness.
func dailyKPIsView(haveLTV bool) string {
	cohort := `            SELECT member_id, created_at, first_purchase_at, active_days
            FROM (
                SELECT member_id, min(occurred_at) AS created_at
                FROM member_changes FINAL
                WHERE change_type = 'member_created'
                GROUP BY member_id
            ) ALL LEFT JOIN (
                SELECT member_id,
                    minIf(occurred_at, event_type = 'transaction') AS first_purchase_at,
                    groupUniqArrayIf(toDate(occurred_at), event_type != 'sign_up') AS active_days
                FROM member_events FINAL
                GROUP BY member_id
            ) USING member_id`
	ltvCols := `            toFloat64(0) AS ltv_sum,
            toUInt64(0) AS ltv_members,`
	ltvIndex := "CAST(NULL AS Nullable(Float64))"
	if haveLTV {
		cohort = `            SELECT member_id, created_at, first_purchase_at, active_days, ltv
            FROM (
` + cohort + `
            ) ALL LEFT JOIN (
                SELECT member_id, ` + quoteIdent(labelLTV) + ` AS ltv FROM ` + ProfilesTable + ` FINAL
            ) USING member_id`
		ltvCols = `            sum(ifNull(ltv, 0)) AS ltv_sum,
            countIf(isNotNull(ltv)) AS ltv_members,`
		ltvIndex = `if(ltv_members = 0, NULL,
        (ltv_sum / ltv_members) / nullIf((SELECT avg(` + quoteIdent(labelLTV) + `) FROM ` + ProfilesTable + ` FINAL), 0))`
	}
	return `SELECT
    day,
    new_members,
    converted_members_7d,
    if(new_members = 0 OR day + 7 >= today(), NULL, converted_members_7d / new_members) AS member_conversion_rate,
    retained_members_30d,
    if(new_members = 0 OR day + 30 >= today(), NULL, retained_members_30d / new_members) AS retention_30d,
    buyers,
    first_time_buyers,
    repeat_buyers,
    if(buyers = 0, NULL, repeat_buyers / buyers) AS repurchase_rate,
    orders,
    revenue_minor,
    if(orders = 0, NULL, revenue_minor / orders) AS average_order_value_minor,
    ` + ltvIndex + ` AS ltv_index,
    points_earned,
    points_redeemed,
    if(points_earned <= 0, NULL, points_redeemed / points_earned) AS benefit_usage_efficiency
FROM (
    SELECT day,
        sum(new_members) AS new_members,
        sum(converted_members_7d) AS converted_members_7d,
        sum(retained_members_30d) AS retained_members_30d,
        sum(ltv_sum) AS ltv_sum,
        sum(ltv_members) AS ltv_members,
        sum(buyers) AS buyers,
        sum(first_time_buyers) AS first_time_buyers,
        sum(repeat_buyers) AS repeat_buyers,
        sum(orders) AS orders,
        sum(revenue_minor) AS revenue_minor,
        sum(points_earned) AS points_earned,
        sum(points_redeemed) AS points_redeemed
    FROM (
        SELECT
            toDate(created_at) AS day,
            count() AS new_members,
            countIf(first_purchase_at > toDateTime(0) AND first_purchase_at <= created_at + 604800) AS converted_members_7d,
            countIf(arrayExists(d -> d > toDate(created_at) AND d <= toDate(created_at) + 30, active_days)) AS retained_members_30d,
` + ltvCols + `
            toUInt64(0) AS buyers,
            toUInt64(0) AS first_time_buyers,
            toUInt64(0) AS repeat_buyers,
            toUInt64(0) AS orders,
            toInt64(0) AS revenue_minor,
            toInt64(0) AS points_earned,
            toInt64(0) AS points_redeemed
        FROM (
` + cohort + `
        )
        GROUP BY day
        UNION ALL
        SELECT
            day,
            toUInt64(0), toUInt64(0), toUInt64(0), toFloat64(0), toUInt64(0),
            count(), countIf(day = first_day), countIf(day > first_day),
            sum(day_orders), sum(day_revenue),
            toInt64(0), toInt64(0)
        FROM (
            SELECT member_id,
                groupArray(day) AS days, groupArray(n) AS ns, groupArray(amount) AS amounts,
                min(day) AS first_day
            FROM (
                SELECT member_id, toDate(occurred_at) AS day, count() AS n, sum(amount_minor) AS amount
                FROM member_events FINAL
                WHERE event_type = 'transaction'
                GROUP BY member_id, day
            )
            GROUP BY member_id
        )
        ARRAY JOIN days AS day, ns AS day_orders, amounts AS day_revenue
        GROUP BY day
        UNION ALL
        SELECT
            toDate(occurred_at) AS day,
            toUInt64(0), toUInt64(0), toUInt64(0), toFloat64(0), toUInt64(0),
            toUInt64(0), toUInt64(0), toUInt64(0), toUInt64(0), toInt64(0),
            sumIf(points_delta, points_kind = 'earn'), -sumIf(points_delta, points_kind = 'redeem')
        FROM member_changes FINAL
        WHERE change_type = 'points_changed'
        GROUP BY day
    )
    GROUP BY day
)`
}

// ProfileRow is one version of a member's current labels.
type ProfileRow struct {
	MemberID string
	// Version orders a member's rows: the highest wins (ReplacingMergeTree).
	Version        uint64
	UpdatedAt      time.Time
	CatalogVersion string
	// Withheld is set when the member withdrew profiling consent: their
	// behavioural labels are absent.
	Withheld bool
	// Consent is the member's consent per purpose.
	Consent Consent
	// MergedInto is the member this one was merged into (empty for a
	// member): the row is no member's (MergedInto, the column).
	MergedInto string
	// Values by label id: bool for bool labels, string for enum labels,
	// float64 (or a Go integer) for number labels. A missing key, a nil
	// value or a NaN number is stored as NULL (absent). Keys that are not
	// among the columns written are ignored: a member's stored labels may
	// still hold a label that has left the catalogue.
	Values map[string]any
	// Columns, when not nil, are the label values in the order of the
	// columns written, and Values is not read: a writer that decodes
	// labels straight into that order saves a map a row.
	Columns []any
}

// value is the row's value of label column j, named name.
func (r *ProfileRow) value(j int, name string) any {
	if r.Columns != nil {
		return r.Columns[j]
	}
	return r.Values[name]
}

// InsertProfiles writes rows as one batch into member_profiles, setting the
// columns of cols (run EnsureProfiles with them first). Label columns not in
// cols get NULL in these rows.
func (w *Writer) InsertProfiles(ctx context.Context, cols []ProfileColumn, rows []ProfileRow) error {
	if len(rows) == 0 {
		return nil
	}
	if err := validateProfileColumns(cols); err != nil {
		return fmt.Errorf("member_profiles columns: %w", err)
	}
	names := make([]string, 0, len(profileFixed)+len(cols))
	for _, f := range profileFixed {
		names = append(names, quoteIdent(f.name))
	}
	for _, c := range cols {
		names = append(names, quoteIdent(c.Name))
	}
	// The batch is built a column at a time, each column one typed slice
	// (a row at a time, every value went through an interface and the
	// driver's row path: most of the exporter's insert). Every value is
	// checked before the batch is opened: a bad one fails the call with the
	// member and label named, and nothing is written.
	for _, r := range rows {
		if r.Columns != nil && len(r.Columns) != len(cols) {
			return fmt.Errorf("profile of member %s: %d label values for %d columns", r.MemberID, len(r.Columns), len(cols))
		}
	}
	// The fixed columns, in profileFixed's order, then the labels'.
	columns := []column[ProfileRow]{
		col(func(r *ProfileRow) string { return r.MemberID }),
		col(func(r *ProfileRow) uint64 { return r.Version }),
		col(func(r *ProfileRow) time.Time { return r.UpdatedAt.UTC() }),
		col(func(r *ProfileRow) string { return r.CatalogVersion }),
		col(func(r *ProfileRow) uint8 { return flag(r.Withheld) }),
		col(func(r *ProfileRow) uint8 { return flag(!r.Consent.NoMarketing) }),
		col(func(r *ProfileRow) uint8 { return flag(!r.Withheld) }),
		col(func(r *ProfileRow) uint8 { return flag(r.Consent.ThirdParty) }),
		col(func(r *ProfileRow) uint8 { return flag(!r.Consent.NoAnalytics) }),
		col(func(r *ProfileRow) string { return r.MergedInto }),
	}
	for j, c := range cols {
		v, err := profileColumn(j, c, rows)
		if err != nil {
			return err
		}
		columns = append(columns, func([]ProfileRow) any { return v })
	}
	return insertColumns(ctx, w.conn, ProfilesTable, "INSERT INTO "+ProfilesTable+" ("+strings.Join(names, ", ")+")", rows, columns...)
}

// profileColumn is the values of label column c, the j-th, in rows, as the
// slice of pointers its Nullable column takes (nil is NULL), the values
// themselves in one array.
func profileColumn(j int, c ProfileColumn, rows []ProfileRow) (any, error) {
	switch c.Type {
	case LabelBool:
		return nullables(j, c, rows, func(v any) (uint8, bool, bool) {
			x, ok := v.(bool)
			return flag(x), true, ok
		})
	case LabelEnum:
		return nullables(j, c, rows, func(v any) (string, bool, bool) {
			x, ok := v.(string)
			return x, true, ok
		})
	default: // LabelNumber (validateProfileColumns refused any other)
		return nullables(j, c, rows, func(v any) (float64, bool, bool) {
			f, ok := number(v)
			return f, !math.IsNaN(f), ok
		})
	}
}

// nullables converts the rows' values of c (column j) with conv, which
// tells whether a value is one (a NaN number is NULL) and whether it is of
// the column's type; a missing or nil value is NULL.
func nullables[T any](j int, c ProfileColumn, rows []ProfileRow, conv func(any) (T, bool, bool)) ([]*T, error) {
	vals := make([]T, len(rows))
	out := make([]*T, len(rows))
	for i := range rows {
		r := &rows[i]
		v := r.value(j, c.Name)
		if v == nil {
			continue
		}
		x, some, ok := conv(v)
		if !ok && c.Type == LabelNumber {
			return nil, fmt.Errorf("profile of member %s: label %q is a number, got %T", r.MemberID, c.Name, v)
		}
		if !ok {
			want := map[string]string{LabelBool: "bool", LabelEnum: "string"}[c.Type]
			return nil, fmt.Errorf("profile of member %s: label %q is %s: want a Go %s, got %T", r.MemberID, c.Name, c.Type, want, v)
		}
		if some {
			vals[i] = x
			out[i] = &vals[i]
		}
	}
	return out, nil
}

// number is a number label's value as float64, and whether v is a number.
func number(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case float32:
		return float64(x), true
	case int:
		return float64(x), true
	case int32:
		return float64(x), true
	case int64:
		return float64(x), true
	case uint32:
		return float64(x), true
	case uint64:
		return float64(x), true
	}
	return 0, false
}

func flag(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}
