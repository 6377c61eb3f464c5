// Package migration brings a retailer's members over from a legacy system
// (membercenter import, docs/migration.md): it reads a legacy export — JSON
// Lines, or CSV files — member by member, imports each member whole or not
// at all (identifiers, attributes, consents, points as lots, tier, coupons),
// skips what an earlier run imported, reports every refused record with its
// file, line and reason, and reconciles the platform against the source
// (import verify). While the legacy system still runs, its changes — dated
// delta files, a Debezium CDC topic — are applied by CatchUp, each once.
package migration

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	fastjson "github.com/segmentio/encoding/json"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/identity"
	"github.com/membercenter/membercenter/services/profile"
)

// Member is one legacy member as the source holds it, with where it came
// from.
type Member struct {
	File string // the file its main record is in
	Line int    // and the line (1-based; a CSV header is line 1)
	// LegacyID is the legacy system's id of the member; unique in a source.
	LegacyID    string
	CreatedAt   time.Time
	Identifiers []*mcv1.Identifier
	Attributes  map[string]string
	Consents    []profile.ImportedConsent
	Loyalty     benefits.Legacy
	// SHA256 of the member's source records, to tell a record that changed
	// since it was imported.
	SHA256 []byte

	// plan is its identifiers normalised and hashed (once per run), with
	// planErr refusing them.
	plan    *identity.ImportPlan
	planErr error
}

// RowError is a record the reader refuses: the file, the line and why.
type RowError struct {
	File     string
	Line     int
	LegacyID string // when known
	Reason   string
}

func (e *RowError) Error() string {
	id := e.LegacyID
	if len(id) > 128 { // refused for it: its reason says so, its start is enough to find it
		id = strings.ToValidUTF8(id[:128], "") + "…"
	}
	if e.Line == 0 { // a CDC record: File says where
		if id != "" {
			return fmt.Sprintf("%s: %s: %s", e.File, id, e.Reason)
		}
		return fmt.Sprintf("%s: %s", e.File, e.Reason)
	}
	if id != "" {
		return fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, id, e.Reason)
	}
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Reason)
}

// The JSON Lines format: members.jsonl, one member per line.
type jsonMember struct {
	LegacyID    string            `json:"legacy_id"`
	CreatedAt   string            `json:"created_at"`
	Identifiers []jsonIdentifier  `json:"identifiers"`
	Attributes  map[string]string `json:"attributes"`
	Consents    map[string]*bool  `json:"consents"` // null: undecided
	ConsentedAt string            `json:"consented_at"`
	Points      *struct {
		Lots []jsonLot `json:"lots"`
	} `json:"points"`
	Tier    *jsonTier    `json:"tier"`
	Coupons []jsonCoupon `json:"coupons"`
}

type jsonIdentifier struct {
	Type  string `json:"type"`
	Scope string `json:"scope"`
	Value string `json:"value"`
}

// identifier is id as the platform takes it (an unknown type is
// IDENTIFIER_TYPE_UNSPECIFIED, which normalisation refuses).
func (id jsonIdentifier) identifier() *mcv1.Identifier {
	return &mcv1.Identifier{Type: identifierTypes[id.Type], Scope: id.Scope, Value: id.Value}
}

type jsonLot struct {
	Ref       string `json:"ref"`
	Earned    int64  `json:"earned"`
	Remaining int64  `json:"remaining"`
	EarnedAt  string `json:"earned_at"`
	ExpiresAt string `json:"expires_at"`
}

type jsonTier struct {
	ID     string      `json:"id"`
	Since  string      `json:"since"`
	Months []jsonMonth `json:"months"`
}

type jsonMonth struct {
	Month  string `json:"month"` // 2025-10
	Spend  int64  `json:"spend"`
	Points int64  `json:"points"`
	Orders int64  `json:"orders"`
}

type jsonCoupon struct {
	Code       string `json:"code"`
	Template   string `json:"template"`
	State      string `json:"state"`
	ValidFrom  string `json:"valid_from"`
	ValidUntil string `json:"valid_until"`
	IssuedAt   string `json:"issued_at"`
}

// Source is a legacy export: a directory holding members.jsonl, or
// members.csv with lots.csv, months.csv and coupons.csv beside it (the
// last three optional).
type Source struct {
	Dir    string
	Format string // "jsonl" or "csv"
	// CSV: the per-member records of the side files, by legacy id, read
	// before the members file (a member's lots may be anywhere in lots.csv).
	lots    map[string][]sideRow[jsonLot]
	months  map[string][]sideRow[jsonMonth]
	coupons map[string][]sideRow[jsonCoupon]
	// sideErrs are side-file rows refused on their own (no legacy id, a
	// column that does not parse); the member of such a row is refused
	// whole (nothing is half-imported).
	sideErrs []*RowError
	sideBad  map[string]string // legacy id → its first refused side row
}

type sideRow[T any] struct {
	line int
	v    T
	raw  []string
}

// Open finds the export's format in dir.
func Open(dir string) (*Source, error) {
	s := &Source{Dir: dir}
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("the export %s: %w", dir, err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("the export %s is a file: name the directory that holds members.jsonl or members.csv", dir)
	}
	jsonl, csv := exists(filepath.Join(dir, "members.jsonl")), exists(filepath.Join(dir, "members.csv"))
	switch {
	case jsonl && csv:
		// Which one the legacy system meant is not ours to guess.
		return nil, fmt.Errorf("%s holds both members.jsonl and members.csv: keep the export of one format", dir)
	case jsonl:
		s.Format = "jsonl"
	case csv:
		s.Format = "csv"
	default:
		return nil, fmt.Errorf("%s holds neither members.jsonl nor members.csv (docs/migration.md)", dir)
	}
	return s, nil
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// Each calls fn with every member of the source in file order, or with the
// RowError of a record that cannot be read; fn's error stops the walk.
func (s *Source) Each(fn func(*Member, *RowError) error) error {
	if s.Format == "jsonl" {
		return s.eachJSONL(fn)
	}
	return s.eachCSV(fn)
}

// CountMembers counts the source's member records (refused ones
// included) without reading them, for a progress bar: the non-blank lines
// of members.jsonl, the records of members.csv.
func (s *Source) CountMembers() (int, error) {
	n := 0
	count := func(int, string) error { n++; return nil }
	if s.Format == "jsonl" {
		err := eachJSONLine(filepath.Join(s.Dir, "members.jsonl"), count)
		return n, err
	}
	err := readCSV(filepath.Join(s.Dir, "members.csv"), nil, func(int, map[string]string, []string) error { n++; return nil },
		func(int, string, string) error { n++; return nil })
	return n, err
}

func (s *Source) eachJSONL(fn func(*Member, *RowError) error) error {
	name := "members.jsonl"
	seen := map[string]int{}
	return eachJSONLine(filepath.Join(s.Dir, name), func(line int, text string) error {
		var j jsonMember
		if derr := decodeStrict(text, &j); derr != nil {
			return fn(nil, &RowError{File: name, Line: line, Reason: "not a member record: " + derr.Error()})
		}
		m, rerr := toMember(j, name, line)
		if rerr == nil {
			rerr = duplicate(seen, m, name, line)
		}
		if rerr != nil {
			return fn(nil, rerr)
		}
		sum := sha256.Sum256([]byte(text))
		m.SHA256 = sum[:]
		return fn(m, nil)
	})
}

// eachJSONLine calls fn with every non-blank line of a JSON Lines file and
// its number.
func eachJSONLine(path string, fn func(line int, text string) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	for line := 1; ; line++ {
		b, err := r.ReadBytes('\n')
		if len(b) == 0 && errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("%s:%d: %w", filepath.Base(path), line, err)
		}
		if line == 1 {
			b = bytes.TrimPrefix(b, []byte("\ufeff")) // a byte order mark, as in CSV
		}
		if text := strings.TrimSpace(string(b)); text != "" {
			if ferr := fn(line, text); ferr != nil {
				return ferr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
	}
}

// decodeStrict decodes one JSON object of known fields, and nothing after it.
// segmentio's parser (about three times encoding/json's speed on these
// lines, which a million-member export has tens of millions of) reads the
// good ones; a line it refuses is decoded again by encoding/json, whose
// error is the reason the report gives.
func decodeStrict(text string, v any) error {
	if utf8.ValidString(text) {
		if rest, err := fastjson.Parse([]byte(text), v, fastjson.DisallowUnknownFields); err == nil && len(bytes.TrimSpace(rest)) == 0 {
			return nil
		}
		reflect.ValueOf(v).Elem().SetZero() // what the refused parse left
	}
	return decodeStd(text, v)
}

// decodeStd is decodeStrict by encoding/json alone: the reference for the
// reasons a refused line is given. A line holding a byte that is no UTF-8
// is refused: encoding/json would read it as U+FFFD, and the member would
// be imported with it.
func decodeStd(text string, v any) error {
	if !utf8.ValidString(text) {
		return errors.New("the line holds bytes that are not UTF-8")
	}
	dec := json.NewDecoder(strings.NewReader(text))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		// In the export's terms, not Go's ("… into Go struct field
		// jsonLot.points.lots.earned of type int64").
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) && ute.Field != "" {
			return fmt.Errorf("%s: %s where %s is wanted", ute.Field, ute.Value, jsonKind(ute.Type))
		}
		return err
	}
	if dec.More() {
		return errors.New("more after the record")
	}
	return nil
}

// jsonKind names what a field of type t holds, as an export's author
// would say it.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		// 1e3 and 99999999999999999999 are numbers, but not these.
		return "a whole number of at most 19 digits, without a fraction or an exponent"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Pointer:
		return jsonKind(t.Elem())
	}
	return t.String()
}

// duplicate refuses a legacy id seen before in the source.
func duplicate(seen map[string]int, m *Member, file string, line int) *RowError {
	if first, ok := seen[m.LegacyID]; ok {
		return &RowError{File: file, Line: line, LegacyID: m.LegacyID, Reason: fmt.Sprintf("legacy_id also on line %d", first)}
	}
	seen[m.LegacyID] = line
	return nil
}

// identifierTypes are the names a source may give identifier types.
var identifierTypes = map[string]mcv1.IdentifierType{
	"phone": mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, "email": mcv1.IdentifierType_IDENTIFIER_TYPE_EMAIL,
	"wechat_unionid": mcv1.IdentifierType_IDENTIFIER_TYPE_WECHAT_UNIONID, "miniprogram_openid": mcv1.IdentifierType_IDENTIFIER_TYPE_MINIPROGRAM_OPENID,
	"member_card": mcv1.IdentifierType_IDENTIFIER_TYPE_MEMBER_CARD, "crm_id": mcv1.IdentifierType_IDENTIFIER_TYPE_CRM_ID,
}

// consentPurposes are the names a source may give consent purposes.
var consentPurposes = map[string]mcv1.ConsentPurpose{
	"marketing": mcv1.ConsentPurpose_CONSENT_PURPOSE_MARKETING, "profiling": mcv1.ConsentPurpose_CONSENT_PURPOSE_PROFILING,
	"third_party_sharing": mcv1.ConsentPurpose_CONSENT_PURPOSE_THIRD_PARTY_SHARING, "analytics": mcv1.ConsentPurpose_CONSENT_PURPOSE_ANALYTICS,
}

// maxIdentifierRunes is the longest identifier value the API takes
// (identity.proto's max_len).
const maxIdentifierRunes = 256

// toMember checks a record and converts it; the error names the field.
func toMember(j jsonMember, file string, line int) (*Member, *RowError) {
	bad := func(format string, args ...any) *RowError {
		return &RowError{File: file, Line: line, LegacyID: j.LegacyID, Reason: fmt.Sprintf(format, args...)}
	}
	if strings.TrimSpace(j.LegacyID) == "" {
		return nil, bad("legacy_id is required")
	}
	if len(j.LegacyID) > 128 {
		return nil, bad("legacy_id is longer than 128 characters")
	}
	if f := unclean(j); f != "" {
		return nil, bad("%s: contains control or non-UTF-8 characters", f)
	}
	m := &Member{File: file, Line: line, LegacyID: j.LegacyID, Attributes: j.Attributes}
	var err error
	if m.CreatedAt, err = parseTime(j.CreatedAt); err != nil || m.CreatedAt.IsZero() {
		return nil, bad("created_at: %q is not a time like 2021-03-04T10:00:00+08:00", j.CreatedAt)
	}
	for i, id := range j.Identifiers {
		t, ok := identifierTypes[id.Type]
		if !ok {
			return nil, bad("identifiers[%d].type %q is not one of phone, email, wechat_unionid, miniprogram_openid, member_card, crm_id", i, id.Type)
		}
		if strings.TrimSpace(id.Value) == "" {
			continue // an empty column, not an identifier
		}
		if n := utf8.RuneCountInString(id.Value); n > maxIdentifierRunes {
			return nil, bad("identifiers[%d].value has %d characters, at most %d (no channel could present a longer one)", i, n, maxIdentifierRunes)
		}
		m.Identifiers = append(m.Identifiers, &mcv1.Identifier{Type: t, Scope: id.Scope, Value: id.Value})
	}
	if len(m.Identifiers) == 0 {
		return nil, bad("no identifier: a member needs at least one (phone, email, …)")
	}
	// The legacy id finds the member as a CRM id too, unless the record
	// names one.
	hasCRM := false
	for _, id := range m.Identifiers {
		hasCRM = hasCRM || id.Type == mcv1.IdentifierType_IDENTIFIER_TYPE_CRM_ID
	}
	if !hasCRM {
		m.Identifiers = append(m.Identifiers, &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_CRM_ID, Value: j.LegacyID})
	}
	decided := m.CreatedAt
	if j.ConsentedAt != "" {
		if decided, err = parseTime(j.ConsentedAt); err != nil {
			return nil, bad("consented_at: %q is not a time", j.ConsentedAt)
		}
	}
	purposes := make([]string, 0, len(j.Consents))
	for p := range j.Consents {
		purposes = append(purposes, p)
	}
	sort.Strings(purposes)
	for _, p := range purposes {
		cp, ok := consentPurposes[p]
		if !ok {
			return nil, bad("consents.%s is not one of marketing, profiling, third_party_sharing, analytics", p)
		}
		if j.Consents[p] == nil {
			continue // undecided
		}
		m.Consents = append(m.Consents, profile.ImportedConsent{Purpose: cp, Granted: *j.Consents[p], DecidedAt: decided})
	}
	if j.Points != nil {
		for i, l := range j.Points.Lots {
			lot, err := toLot(l)
			if err != nil {
				return nil, bad("points.lots[%d].%v", i, err)
			}
			m.Loyalty.Lots = append(m.Loyalty.Lots, lot)
		}
	}
	if j.Tier != nil {
		m.Loyalty.Tier = j.Tier.ID
		if j.Tier.Since != "" {
			if m.Loyalty.TierSince, err = parseTime(j.Tier.Since); err != nil {
				return nil, bad("tier.since: %q is not a time", j.Tier.Since)
			}
		}
		for i, mo := range j.Tier.Months {
			lm, err := toMonth(mo)
			if err != nil {
				return nil, bad("tier.months[%d].%v", i, err)
			}
			m.Loyalty.Months = append(m.Loyalty.Months, lm)
		}
	}
	for i, c := range j.Coupons {
		lc, err := toCoupon(c)
		if err != nil {
			return nil, bad("coupons[%d].%v", i, err)
		}
		m.Loyalty.Coupons = append(m.Loyalty.Coupons, lc)
	}
	return m, nil
}

// clean reports whether a value is text a database stores: valid UTF-8
// without control characters.
func clean(v string) bool {
	return utf8.ValidString(v) && strings.IndexFunc(v, func(r rune) bool { return unicode.IsControl(r) }) < 0
}

// unclean names the first field of a record that is not clean text
// (attributes are the schema's to check, naming the attribute).
func unclean(j jsonMember) string {
	if !clean(j.LegacyID) {
		return "legacy_id"
	}
	for i, id := range j.Identifiers {
		if !clean(id.Scope) || !clean(id.Value) {
			return fmt.Sprintf("identifiers[%d]", i)
		}
	}
	if j.Tier != nil && !clean(j.Tier.ID) {
		return "tier.id"
	}
	if j.Points != nil {
		for i, l := range j.Points.Lots {
			if !clean(l.Ref) || len(l.Ref) > 128 {
				return fmt.Sprintf("points.lots[%d].ref (at most 128 characters)", i)
			}
		}
	}
	for i, c := range j.Coupons {
		if !clean(c.Code) || !clean(c.Template) || !clean(c.State) || len(c.Code) > 64 {
			return fmt.Sprintf("coupons[%d] (a code of at most 64 characters)", i)
		}
	}
	for k := range j.Consents {
		if !clean(k) {
			return "consents"
		}
	}
	return ""
}

func toLot(l jsonLot) (benefits.LegacyLot, error) {
	lot := benefits.LegacyLot{Ref: l.Ref, Earned: l.Earned, Remaining: l.Remaining}
	var err error
	if lot.EarnedAt, err = parseTime(l.EarnedAt); err != nil || lot.EarnedAt.IsZero() {
		return lot, fmt.Errorf("earned_at: %q is not a time", l.EarnedAt)
	}
	if lot.ExpiresAt, err = parseTime(l.ExpiresAt); err != nil {
		return lot, fmt.Errorf("expires_at: %q is not a time", l.ExpiresAt)
	}
	return lot, nil
}

func toMonth(mo jsonMonth) (benefits.LegacyMonth, error) {
	t, err := time.Parse("2006-01", mo.Month)
	if err != nil {
		return benefits.LegacyMonth{}, fmt.Errorf("month: %q is not a month like 2025-10", mo.Month)
	}
	return benefits.LegacyMonth{Year: t.Year(), Month: t.Month(), Spend: mo.Spend, Points: mo.Points, Orders: mo.Orders}, nil
}

func toCoupon(c jsonCoupon) (benefits.LegacyCoupon, error) {
	lc := benefits.LegacyCoupon{Code: c.Code, Template: c.Template, State: c.State}
	var err error
	for _, f := range []struct {
		name, v string
		t       *time.Time
	}{{"valid_from", c.ValidFrom, &lc.ValidFrom}, {"valid_until", c.ValidUntil, &lc.ValidUntil}, {"issued_at", c.IssuedAt, &lc.IssuedAt}} {
		if *f.t, err = parseTime(f.v); err != nil {
			return lc, fmt.Errorf("%s: %q is not a time", f.name, f.v)
		}
	}
	return lc, nil
}

// parseTime reads RFC 3339 or a date (midnight UTC); "" is the zero time.
func parseTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Parse(time.DateOnly, s)
}

// The CSV format: members.csv has the columns legacy_id, created_at, the
// identifier columns (phone, email, wechat_unionid, miniprogram_openid with
// miniprogram_appid, member_card, crm_id), tier, tier_since, consent_<purpose>
// (true/false) and consented_at; every other column is an attribute.
// lots.csv: legacy_id, ref, earned, remaining, earned_at, expires_at.
// months.csv: legacy_id, month, spend, points, orders. coupons.csv:
// legacy_id, code, template, state, valid_from, valid_until, issued_at.
var memberColumns = map[string]bool{"legacy_id": true, "created_at": true, "phone": true, "email": true,
	"wechat_unionid": true, "miniprogram_openid": true, "miniprogram_appid": true, "member_card": true, "crm_id": true,
	"tier": true, "tier_since": true, "consented_at": true}

func (s *Source) eachCSV(fn func(*Member, *RowError) error) error {
	if err := s.readSides(); err != nil {
		return err
	}
	s.sideBad = map[string]string{}
	// A side record whose member cannot be told would leave its member
	// half-imported: the whole source is refused until it is fixed.
	for _, e := range s.sideErrs {
		if e.LegacyID == "" {
			return fmt.Errorf("%w (no member can be told, so nothing is imported until it is fixed)", e)
		}
	}
	for _, e := range s.sideErrs {
		if _, ok := s.sideBad[e.LegacyID]; !ok && e.LegacyID != "" {
			s.sideBad[e.LegacyID] = fmt.Sprintf("%s:%d", e.File, e.Line)
		}
		if err := fn(nil, e); err != nil {
			return err
		}
	}
	name := "members.csv"
	seen := map[string]int{}
	used := map[string]bool{}
	err := readCSV(filepath.Join(s.Dir, name), []string{"legacy_id", "created_at"}, func(line int, col map[string]string, raw []string) error {
		j, cerr := memberOfColumns(col)
		var rerr *RowError
		if cerr != nil {
			rerr = &RowError{File: name, Line: line, LegacyID: j.LegacyID, Reason: cerr.Error()}
		}
		used[j.LegacyID] = true
		sum := sha256.New()
		fmt.Fprintf(sum, "%q", raw)
		if where, ok := s.sideBad[j.LegacyID]; ok && rerr == nil {
			rerr = &RowError{File: name, Line: line, LegacyID: j.LegacyID, Reason: "a record of the member was refused (" + where + "): the member is not imported"}
		}
		if rerr == nil {
			s.attachSides(&j, sum)
		}
		var m *Member
		if rerr == nil {
			m, rerr = toMember(j, name, line)
		}
		if rerr == nil {
			rerr = duplicate(seen, m, name, line)
		}
		if rerr != nil {
			return fn(nil, rerr)
		}
		m.SHA256 = sum.Sum(nil)
		return fn(m, nil)
	}, func(line int, id, reason string) error {
		return fn(nil, &RowError{File: name, Line: line, LegacyID: id, Reason: reason})
	})
	if err != nil {
		return err
	}
	// Side records of no member are refused, each at its line.
	for _, side := range []struct {
		file string
		ids  map[string][]int
	}{{"lots.csv", lines(s.lots)}, {"months.csv", lines(s.months)}, {"coupons.csv", lines(s.coupons)}} {
		ids := make([]string, 0, len(side.ids))
		for id := range side.ids {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			if used[id] {
				continue
			}
			for _, l := range side.ids[id] {
				if err := fn(nil, &RowError{File: side.file, Line: l, LegacyID: id, Reason: "no member with this legacy_id in members.csv"}); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// memberOfColumns is the member record a members row's columns make (a
// members.csv line, a catch-up's members row): identifier columns,
// consent_<purpose>, tier, and every other column an attribute (an empty
// one left out). The error names a consent column that is not a boolean.
func memberOfColumns(col map[string]string) (jsonMember, error) {
	j := jsonMember{LegacyID: col["legacy_id"], CreatedAt: col["created_at"], ConsentedAt: col["consented_at"],
		Attributes: map[string]string{}, Consents: map[string]*bool{}}
	j.Identifiers = identifiersOfColumns(col)
	var bad error
	keys := make([]string, 0, len(col))
	for k := range col {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := col[k]
		switch {
		case memberColumns[k]:
		case strings.HasPrefix(k, "consent_"):
			if v == "" {
				continue
			}
			b, err := strconv.ParseBool(v)
			if err != nil && bad == nil {
				bad = fmt.Errorf("%s: %q is not true or false", k, v)
			}
			j.Consents[strings.TrimPrefix(k, "consent_")] = &b
		default:
			if v != "" {
				j.Attributes[k] = v
			}
		}
	}
	if col["tier"] != "" || col["tier_since"] != "" {
		j.Tier = &jsonTier{ID: col["tier"], Since: col["tier_since"]}
	}
	return j, bad
}

// identifiersOfColumns are the identifiers of a members row's columns.
func identifiersOfColumns(col map[string]string) []jsonIdentifier {
	var ids []jsonIdentifier
	for _, t := range []string{"phone", "email", "wechat_unionid", "member_card", "crm_id"} {
		if v := col[t]; v != "" {
			ids = append(ids, jsonIdentifier{Type: t, Value: v})
		}
	}
	if v := col["miniprogram_openid"]; v != "" {
		ids = append(ids, jsonIdentifier{Type: "miniprogram_openid", Scope: col["miniprogram_appid"], Value: v})
	}
	return ids
}

// wholeNumbers reads the named columns as integers (empty: 0); the error
// names the first that is not one.
func wholeNumbers(col map[string]string, names ...string) ([]int64, error) {
	out := make([]int64, len(names))
	for i, k := range names {
		if col[k] == "" {
			continue
		}
		n, err := strconv.ParseInt(col[k], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not a whole number", k, col[k])
		}
		out[i] = n
	}
	return out, nil
}

// lotOfColumns, monthOfColumns and couponOfColumns read a lots.csv,
// months.csv or coupons.csv row (or a catch-up's row of those tables).
func lotOfColumns(col map[string]string) (jsonLot, error) {
	n, err := wholeNumbers(col, "earned", "remaining")
	if err != nil {
		return jsonLot{}, err
	}
	return jsonLot{Ref: col["ref"], Earned: n[0], Remaining: n[1], EarnedAt: col["earned_at"], ExpiresAt: col["expires_at"]}, nil
}

func monthOfColumns(col map[string]string) (jsonMonth, error) {
	n, err := wholeNumbers(col, "spend", "points", "orders")
	if err != nil {
		return jsonMonth{}, err
	}
	return jsonMonth{Month: col["month"], Spend: n[0], Points: n[1], Orders: n[2]}, nil
}

func couponOfColumns(col map[string]string) jsonCoupon {
	return jsonCoupon{Code: col["code"], Template: col["template"], State: col["state"], ValidFrom: col["valid_from"],
		ValidUntil: col["valid_until"], IssuedAt: col["issued_at"]}
}

func lines[T any](m map[string][]sideRow[T]) map[string][]int {
	out := map[string][]int{}
	for id, rs := range m {
		for _, r := range rs {
			out[id] = append(out[id], r.line)
		}
	}
	return out
}

// attachSides adds a member's lots, months and coupons to j, and their
// rows to the member's hash.
func (s *Source) attachSides(j *jsonMember, sum io.Writer) {
	if ls := s.lots[j.LegacyID]; len(ls) > 0 {
		j.Points = &struct {
			Lots []jsonLot `json:"lots"`
		}{}
		for _, l := range ls {
			j.Points.Lots = append(j.Points.Lots, l.v)
			fmt.Fprintf(sum, "%q", l.raw)
		}
	}
	if ms := s.months[j.LegacyID]; len(ms) > 0 {
		if j.Tier == nil {
			j.Tier = &jsonTier{}
		}
		for _, m := range ms {
			j.Tier.Months = append(j.Tier.Months, m.v)
			fmt.Fprintf(sum, "%q", m.raw)
		}
	}
	for _, c := range s.coupons[j.LegacyID] {
		j.Coupons = append(j.Coupons, c.v)
		fmt.Fprintf(sum, "%q", c.raw)
	}
}

// readSides reads lots.csv, months.csv and coupons.csv when present.
func (s *Source) readSides() error {
	s.lots, s.months, s.coupons = map[string][]sideRow[jsonLot]{}, map[string][]sideRow[jsonMonth]{}, map[string][]sideRow[jsonCoupon]{}
	s.sideErrs = nil
	side := func(file string, required []string, add func(line int, col map[string]string, raw []string) error) error {
		p := filepath.Join(s.Dir, file)
		if !exists(p) {
			return nil
		}
		return readCSV(p, append([]string{"legacy_id"}, required...), func(line int, col map[string]string, raw []string) error {
			if col["legacy_id"] == "" {
				s.sideErrs = append(s.sideErrs, &RowError{File: file, Line: line, Reason: "legacy_id is required"})
				return nil
			}
			if err := add(line, col, raw); err != nil {
				s.sideErrs = append(s.sideErrs, &RowError{File: file, Line: line, LegacyID: col["legacy_id"], Reason: err.Error()})
			}
			return nil
		}, func(line int, id, reason string) error {
			s.sideErrs = append(s.sideErrs, &RowError{File: file, Line: line, LegacyID: id, Reason: reason})
			return nil
		})
	}
	if err := side("lots.csv", []string{"earned", "remaining", "earned_at"}, keepSide(s.lots, lotOfColumns)); err != nil {
		return err
	}
	if err := side("months.csv", []string{"month"}, keepSide(s.months, monthOfColumns)); err != nil {
		return err
	}
	return side("coupons.csv", []string{"code", "template", "state"}, keepSide(s.coupons, func(col map[string]string) (jsonCoupon, error) {
		return couponOfColumns(col), nil
	}))
}

// keepSide adds a side file's row, as of reads it, to the rows of its
// legacy id in m; a row of cannot read is refused with of's error.
func keepSide[T any](m map[string][]sideRow[T], of func(col map[string]string) (T, error)) func(line int, col map[string]string, raw []string) error {
	return func(line int, col map[string]string, raw []string) error {
		v, err := of(col)
		if err != nil {
			return err
		}
		m[col["legacy_id"]] = append(m[col["legacy_id"]], sideRow[T]{line, v, raw})
		return nil
	}
}

// readCSV reads a CSV file with a header line naming its columns (required
// ones must be there) and calls fn for each record with its line number.
func readCSV(path string, required []string, fn func(line int, col map[string]string, raw []string) error, bad func(line int, legacyID, reason string) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r := csv.NewReader(bufio.NewReaderSize(f, 1<<20))
	r.FieldsPerRecord = -1
	header, err := r.Read()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%s is empty: it needs a header line naming its columns", filepath.Base(path))
		}
		return fmt.Errorf("%s: header: %w", filepath.Base(path), err)
	}
	seen := map[string]bool{}
	for i := range header {
		header[i] = strings.TrimSpace(strings.TrimPrefix(header[i], "\ufeff"))
		if seen[header[i]] {
			return fmt.Errorf("%s: header: column %s is named twice (one of its values would be lost)", filepath.Base(path), header[i])
		}
		seen[header[i]] = true
	}
	for _, want := range required {
		found := false
		for _, h := range header {
			found = found || h == want
		}
		if !found {
			return fmt.Errorf("%s: no %s column (columns: %s)", filepath.Base(path), want, strings.Join(header, ", "))
		}
	}
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		line, _ := r.FieldPos(0)
		if err != nil {
			var perr *csv.ParseError
			if errors.As(err, &perr) && (errors.Is(perr.Err, csv.ErrQuote) || perr.Line > perr.StartLine) {
				// A quote left open swallows the lines after it: what they
				// hold cannot be told, so the file is refused whole.
				return fmt.Errorf("%s:%d: %w (the lines after it cannot be read; nothing is imported until it is fixed)", filepath.Base(path), perr.StartLine, err)
			}
			if errors.As(err, &perr) {
				if ferr := bad(perr.StartLine, "", "not a CSV record: "+perr.Err.Error()); ferr != nil {
					return ferr
				}
				continue
			}
			return fmt.Errorf("%s: %w", filepath.Base(path), err)
		}
		if len(rec) != len(header) {
			id := ""
			for i, h := range header {
				if h == "legacy_id" && i < len(rec) {
					id = strings.TrimSpace(rec[i])
				}
			}
			if ferr := bad(line, id, fmt.Sprintf("%d fields, the header has %d", len(rec), len(header))); ferr != nil {
				return ferr
			}
			continue
		}
		col := make(map[string]string, len(header))
		for i, h := range header {
			col[h] = strings.TrimSpace(rec[i])
		}
		if err := fn(line, col, rec); err != nil {
			return err
		}
	}
}

// Order is one order of a legacy member's history.
type Order struct {
	File     string
	Line     int
	LegacyID string
	OrderID  string
	At       time.Time
	Channel  string // pos, app, miniprogram, web
	StoreID  string
	Currency string
	Total    int64 // minor units, what was paid before discounts
	Discount int64
	Items    []OrderLine // the basket; none when the export has no lines
}

// OrderLine is one line of a legacy order's basket: what the labels that
// read categories and brands learn from.
type OrderLine struct {
	SKU, Category, Brand string
	Quantity             int32
	Amount               int64 // minor units, after the line's discounts
}

type jsonOrder struct {
	LegacyID string          `json:"legacy_id"`
	OrderID  string          `json:"order_id"`
	At       string          `json:"at"`
	Channel  string          `json:"channel"`
	StoreID  string          `json:"store_id"`
	Currency string          `json:"currency"`
	Total    int64           `json:"total"`
	Discount int64           `json:"discount"`
	Items    []jsonOrderLine `json:"items"`
}

type jsonOrderLine struct {
	SKU      string `json:"sku"`
	Category string `json:"category"`
	Brand    string `json:"brand"`
	Quantity int64  `json:"quantity"`
	Amount   int64  `json:"amount"`
}

// The limits of a basket line are a channel event's (events.proto).
const (
	maxOrderLines    = 500
	maxLineQuantity  = 100_000
	maxLineFieldSize = 64
)

var orderChannels = map[string]bool{"pos": true, "app": true, "miniprogram": true, "web": true}

// HasOrders reports whether the source holds an order history
// (orders.jsonl or orders.csv).
func (s *Source) HasOrders() bool {
	return exists(filepath.Join(s.Dir, "orders."+s.Format))
}

// EachOrder calls fn with every order of the source's order history in file
// order, or with the RowError of one that cannot be read.
func (s *Source) EachOrder(fn func(*Order, *RowError) error) error {
	name := "orders." + s.Format
	check := func(j jsonOrder, line int) (*Order, *RowError) { return checkOrder(j, name, line) }
	path := filepath.Join(s.Dir, name)
	if s.Format == "csv" {
		return readCSV(path, []string{"legacy_id", "order_id", "at", "total"}, func(line int, col map[string]string, _ []string) error {
			j, err := orderOfColumns(col)
			if err != nil {
				return fn(nil, &RowError{File: name, Line: line, LegacyID: j.LegacyID, Reason: err.Error()})
			}
			return fn(check(j, line))
		}, func(line int, id, reason string) error {
			return fn(nil, &RowError{File: name, Line: line, LegacyID: id, Reason: reason})
		})
	}
	return eachJSONLine(path, func(line int, text string) error {
		var j jsonOrder
		if derr := decodeStrict(text, &j); derr != nil {
			return fn(nil, &RowError{File: name, Line: line, Reason: "not an order record: " + derr.Error()})
		}
		return fn(check(j, line))
	})
}

// orderOfColumns reads an orders.csv row (or a catch-up's orders row).
func orderOfColumns(col map[string]string) (jsonOrder, error) {
	j := jsonOrder{LegacyID: col["legacy_id"], OrderID: col["order_id"], At: col["at"], Channel: col["channel"],
		StoreID: col["store_id"], Currency: col["currency"]}
	n, err := wholeNumbers(col, "total", "discount")
	if err != nil {
		return j, err
	}
	j.Total, j.Discount = n[0], n[1]
	if items := strings.TrimSpace(col["items"]); items != "" {
		if err := decodeStrict(items, &j.Items); err != nil {
			return j, fmt.Errorf("items: not a JSON array of lines: %w", err)
		}
	}
	return j, nil
}

// checkOrder checks an order record and converts it; the error names the
// field.
func checkOrder(j jsonOrder, name string, line int) (*Order, *RowError) {
	bad := func(format string, args ...any) *RowError {
		return &RowError{File: name, Line: line, LegacyID: j.LegacyID, Reason: fmt.Sprintf(format, args...)}
	}
	switch {
	case j.LegacyID == "":
		return nil, bad("legacy_id is required")
	case !clean(j.LegacyID) || !clean(j.OrderID) || !clean(j.StoreID) || !clean(j.Currency) || len(j.StoreID) > 64:
		return nil, bad("contains control or non-UTF-8 characters, or a store_id longer than 64")
	case j.OrderID == "" || len(j.OrderID) > 128:
		return nil, bad("order_id is required (at most 128 characters)")
	case j.Total < 0 || j.Discount < 0:
		return nil, bad("total and discount are not negative")
	case j.Channel != "" && !orderChannels[j.Channel]:
		return nil, bad("channel %q is not one of pos, app, miniprogram, web", j.Channel)
	case len(j.Currency) != 0 && len(j.Currency) != 3:
		return nil, bad("currency %q is not a three-letter code", j.Currency)
	}
	at, err := parseTime(j.At)
	if err != nil || at.IsZero() {
		return nil, bad("at: %q is not a time", j.At)
	}
	lines, reason := checkOrderLines(j.Items)
	if reason != "" {
		return nil, bad("%s", reason)
	}
	return &Order{File: name, Line: line, LegacyID: j.LegacyID, OrderID: j.OrderID, At: at, Channel: j.Channel,
		StoreID: j.StoreID, Currency: j.Currency, Total: j.Total, Discount: j.Discount, Items: lines}, nil
}

// checkOrderLines checks a basket under a channel event's limits and
// converts it; a refusal names the line and field.
func checkOrderLines(items []jsonOrderLine) ([]OrderLine, string) {
	if len(items) > maxOrderLines {
		return nil, fmt.Sprintf("items: %d lines, at most %d", len(items), maxOrderLines)
	}
	var lines []OrderLine
	for i, it := range items {
		switch {
		case it.SKU == "" || len(it.SKU) > maxLineFieldSize:
			return nil, fmt.Sprintf("items[%d].sku is required (at most %d bytes)", i, maxLineFieldSize)
		case len(it.Category) > maxLineFieldSize || len(it.Brand) > maxLineFieldSize:
			return nil, fmt.Sprintf("items[%d]: category and brand are at most %d bytes", i, maxLineFieldSize)
		case !clean(it.SKU) || !clean(it.Category) || !clean(it.Brand):
			return nil, fmt.Sprintf("items[%d]: contains control or non-UTF-8 characters", i)
		case it.Quantity < 1 || it.Quantity > maxLineQuantity:
			return nil, fmt.Sprintf("items[%d].quantity %d is not from 1 to %d", i, it.Quantity, maxLineQuantity)
		case it.Amount < 0:
			return nil, fmt.Sprintf("items[%d].amount is not negative", i)
		}
		lines = append(lines, OrderLine{SKU: it.SKU, Category: it.Category, Brand: it.Brand, Quantity: int32(it.Quantity), Amount: it.Amount})
	}
	return lines, ""
}
