package profile

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/membercenter/membercenter/storage/clickhouse"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/auth"

	"github.com/membercenter/membercenter/services/attributes"
)

// ExportFormat names the version of the export document's shape.
const ExportFormat = "membercenter.member-data.v1"

// MemberData is the answer to a member's request for a copy of their data
// (docs/security.md#data-subject-requests).
type MemberData struct {
	// The member the id resolved to.
	MemberID   uuid.UUID
	ExportedAt time.Time
	// The JSON document.
	Document []byte
}

// exportDocument is the document's shape; encoding/json writes map keys
// sorted, so the same data gives the same bytes.
type exportDocument struct {
	Format     string                      `json:"format"`
	MemberID   string                      `json:"member_id"`
	ExportedAt string                      `json:"exported_at"`
	Members    []string                    `json:"members"`
	Postgres   map[string][]map[string]any `json:"postgres"`
	ClickHouse map[string][]map[string]any `json:"clickhouse"`
	// The columns whose stored bytes the document does not show, and why.
	Withheld []withheldColumn `json:"withheld"`
	// The tables about members the document leaves out, and why.
	LeftOut map[string]string `json:"left_out"`
}

type withheldColumn struct {
	Table  string `json:"table"`
	Column string `json:"column"`
	Reason string `json:"reason"`
}

// leftOut are the PostgreSQL tables that name members but are not
// exported.
var leftOut = map[string]string{
	"outbox": "the change stream: each row is a change already applied to the tables exported here (PII masked), " +
		"kept until the relay has delivered it to the channels",
	"operator_audit_exports": "a queue of operator_audit rows (exported here) waiting to be copied to ClickHouse",
}

// credentials are columns never exported, whatever the keys could open.
var credentials = map[string]string{
	"member_code_secrets.secret_cipher": "the secret the member's dynamic codes are derived from: a credential " +
		"(whoever holds it can show codes as the member), never exported",
}

// withheldReasons say why a binary column is shown by its length only.
var withheldReasons = map[string]string{
	"member_identifiers.value_hash":   "keyed hash the identifier is looked up by; the identifier itself is value",
	"member_identifiers.value_cipher": "the identifier encrypted; decrypted into value",
	"member_features.state":           "the tag engine's encoded working state; the labels it yields are member_label_sets",
	"member_features.state_tail":      "what the tag engine added to its working state since state was written; the labels it yields are member_label_sets",
	"member_features.labels_pb":       "encoded copy of the member's labels (the true ones also in member_label_sets)",
	"ingested_events.resolution":      "encoded copy of how the event was resolved to member_id",
}

// othersColumns name, per table (PostgreSQL's and ClickHouse's alike), the
// columns saying whom a row is about and the columns describing them. The
// export holds every row that involves one of its members, but a row about
// a member outside them — the other side of a merge undone since, or of a
// merge refused: its identifiers and points in the audit, the attributes
// it lent in the merge's snapshot — shows that member's id and nothing else
// of theirs (docs/security.md#data-subject-requests).
var othersColumns = map[string]struct {
	about []string
	// aboutOf, where no column says whom a row is about, reads it from
	// the row.
	aboutOf func(row map[string]any) []string
	columns []string
}{
	// An audit row of a merge, unmerge or refusal records both sides; the
	// reason of one the platform made names both sides' identifiers
	// (masked: "phone 137****5611 and phone 137****5612 seen together").
	"identity_audit": {about: []string{"member_id", "other_member_id"}, columns: []string{"identifiers", "before", "after", "reason"}},
	// A merge's snapshot is what the source brought: its account, and the
	// attributes it lent the target; its reason, as the audit's.
	"merges": {about: []string{"source_member_id"}, columns: []string{"snapshot", "reason"}},
	// A conflict lists the identifiers presented together, which pointed
	// at several members: some of them another member's (its reason names
	// them too).
	"identity_conflicts": {about: []string{"member_ids"}, columns: []string{"identifiers", "reason"}},
	// ClickHouse's copy of the change stream: the identity change of a
	// merge, unmerge, refusal or conflict names the other member and lists
	// the identifiers that moved (theirs) and both sides' summaries.
	"member_changes": {aboutOf: identityChangeOther, columns: []string{"payload"}},
}

// identityChangeOther is the other member an identity change in
// ClickHouse's member_changes names, if any.
func identityChangeOther(row map[string]any) []string {
	if t, _ := row["change_type"].(string); t != "identity_changed" {
		return nil
	}
	p, _ := row["payload"].(string)
	var c struct {
		IdentityChanged struct {
			OtherMemberID string `json:"otherMemberId"`
		} `json:"identityChanged"`
	}
	if err := json.Unmarshal([]byte(p), &c); err != nil || c.IdentityChanged.OtherMemberID == "" {
		return nil
	}
	return []string{c.IdentityChanged.OtherMemberID}
}

const othersReason = "what the row records of a member outside this export (the other side of a merge undone " +
	"since, or refused): withheld where the row is about that member, whose id alone is shown"

// withholdOthers withholds what row records of a member outside members.
func withholdOthers(table string, row map[string]any, members map[string]bool) {
	o, ok := othersColumns[table]
	if !ok {
		return
	}
	var about []string
	for _, c := range o.about {
		switch v := row[c].(type) {
		case string:
			about = append(about, v)
		case []any: // an array column (identity_conflicts.member_ids)
			for _, m := range v {
				if m, ok := m.(string); ok {
					about = append(about, m)
				}
			}
		}
	}
	if o.aboutOf != nil {
		about = append(about, o.aboutOf(row)...)
	}
	outside := false
	for _, m := range about {
		if m != "" && !members[m] {
			outside = true
		}
	}
	if !outside {
		return
	}
	for _, c := range o.columns {
		if _, ok := row[c]; ok {
			row[c] = "<withheld>"
		}
	}
}

// sealedColumns are the binary columns opened for the export: the column
// holding the ciphertext, the one holding the hash bound to it, and the
// column the raw value goes to.
var sealedColumns = map[string]struct{ cipher, hash, key, value string }{
	"member_identifiers": {cipher: "value_cipher", hash: "value_hash", key: "key_id", value: "value"},
}

// ExportMemberData gathers everything the platform holds about the member
// id resolves to and the members merged into it: the PostgreSQL rows that
// name them, read in one repeatable-read transaction (one consistent
// state), with identifiers and PII attributes decrypted; then the ClickHouse
// rows that name them. ClickHouse is part of the answer: without it the
// export fails rather than answering with part of the data.
func (s *Service) ExportMemberData(ctx context.Context, id uuid.UUID) (*MemberData, error) {
	if s.facts == nil {
		return nil, fmt.Errorf("export member data: %w", ErrNoFacts)
	}
	if s.sealer == nil {
		return nil, errors.New("export member data: this process has no PII keys to decrypt the member's data with")
	}
	doc := exportDocument{Format: ExportFormat, Postgres: map[string][]map[string]any{}, Withheld: []withheldColumn{}, LeftOut: map[string]string{}}
	var canonical uuid.UUID
	var members []uuid.UUID
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var err error
		if canonical, err = postgres.CanonicalMember(ctx, tx, id); err != nil {
			return err
		}
		if members, err = postgres.MergedMembers(ctx, tx, canonical); err != nil {
			return err
		}
		tables, err := postgres.MemberTables(ctx, tx)
		if err != nil {
			return err
		}
		isMember := make(map[string]bool, len(members))
		for _, m := range members {
			isMember[m.String()] = true
		}
		for _, t := range tables {
			if why, ok := leftOut[t.Name]; ok {
				doc.LeftOut[t.Name] = why
				continue
			}
			raw, err := postgres.MemberRows(ctx, tx, t, members)
			if err != nil {
				return err
			}
			rows, err := s.exportRows(ctx, t, raw, isMember)
			if err != nil {
				return fmt.Errorf("export %s: %w", t.Name, err)
			}
			doc.Postgres[t.Name] = rows
			for _, c := range t.Bytea {
				doc.Withheld = append(doc.Withheld, withheldColumn{Table: t.Name, Column: c, Reason: withheldReason(t.Name, c)})
			}
			for _, c := range othersColumns[t.Name].columns {
				doc.Withheld = append(doc.Withheld, withheldColumn{Table: t.Name, Column: c, Reason: othersReason})
			}
		}
		return nil
	})
	if err != nil {
		return nil, s.erasedMeanwhile(ctx, id, members, err)
	}
	ids := make([]string, len(members))
	isMember := make(map[string]bool, len(members))
	for i, m := range members {
		ids[i] = m.String()
		isMember[ids[i]] = true
	}
	if doc.ClickHouse, err = clickhouse.MemberRows(ctx, s.facts, ids); err != nil {
		return nil, fmt.Errorf("export member data: %w", err)
	}
	for table, rows := range doc.ClickHouse {
		for _, r := range rows {
			withholdOthers(table, r, isMember)
			for k, v := range r {
				if r[k], err = s.open(ctx, v); err != nil {
					return nil, s.erasedMeanwhile(ctx, id, members, fmt.Errorf("export clickhouse %s.%s: %w", table, k, err))
				}
			}
		}
	}
	at := s.now().UTC()
	doc.MemberID, doc.ExportedAt, doc.Members = canonical.String(), at.Format(time.RFC3339Nano), ids
	b, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("export member data: %w", err)
	}
	// Who read the member's data, and when, is recorded before the
	// document is given: an export that cannot be audited is not made.
	detail, err := json.Marshal(map[string]any{"members": ids, "postgres_tables": len(doc.Postgres), "clickhouse_tables": len(doc.ClickHouse)})
	if err != nil {
		return nil, err
	}
	if err := postgres.InsertOperatorAudit(ctx, s.pool, postgres.OperatorAudit{AuditID: uuid.Must(uuid.NewV7()), At: at,
		Actor: auth.Actor(ctx), Action: "member.exported", MemberID: canonical,
		CauseID: "rpc:profile.ExportMemberData:" + at.Format(time.RFC3339Nano), Detail: detail}); err != nil {
		return nil, fmt.Errorf("export member data: audit: %w", err)
	}
	return &MemberData{MemberID: canonical, ExportedAt: at, Document: b}, nil
}

// erasedMeanwhile is err, or NotFound when it is a ciphertext that no
// longer opens because the member was erased since the export read its
// rows (an erasure committed and shredded the key); a key shredded for a
// member that is not erased stays the error it is.
func (s *Service) erasedMeanwhile(ctx context.Context, id uuid.UUID, members []uuid.UUID, err error) error {
	if !errors.Is(err, postgres.ErrKeyShredded) || len(members) == 0 {
		return err
	}
	if erased, lerr := postgres.ErasedAmong(ctx, s.pool, members); lerr != nil || len(erased) == 0 {
		return err
	}
	return fmt.Errorf("member %s was erased while its data was being exported: %w", id, postgres.ErrNotFound)
}

// exportRows are a table's rows as the document shows them: identifier
// ciphertexts decrypted, sealed attribute values opened, every binary
// column shown by its length only (or as withheld, for a credential), and
// what a row records of a member outside members withheld.
func (s *Service) exportRows(ctx context.Context, t postgres.MemberTable, raw []json.RawMessage, members map[string]bool) ([]map[string]any, error) {
	out := make([]map[string]any, 0, len(raw))
	sealed, hasSealed := sealedColumns[t.Name]
	for _, r := range raw {
		dec := json.NewDecoder(bytes.NewReader(r))
		dec.UseNumber()
		var row map[string]any
		if err := dec.Decode(&row); err != nil {
			return nil, err
		}
		withholdOthers(t.Name, row, members)
		if hasSealed {
			if err := s.openColumn(ctx, row, sealed.cipher, sealed.hash, sealed.key, sealed.value); err != nil {
				return nil, err
			}
		}
		for k, v := range row {
			var err error
			if row[k], err = s.open(ctx, v); err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
		}
		for _, c := range t.Bytea {
			row[c] = byteaPlaceholder(t.Name, c, row[c])
		}
		out = append(out, row)
	}
	return out, nil
}

// openColumn decrypts a row's ciphertext (bound to its hash, under its
// key id) into the value column. A row without a ciphertext (an
// identifier kept only as a keyed hash, a member card say) gets none: the
// platform cannot recover it, and the row's masked form is what it has.
func (s *Service) openColumn(ctx context.Context, row map[string]any, cipherCol, hashCol, keyCol, valueCol string) error {
	ct, ok1 := bytea(row[cipherCol])
	h, ok2 := bytea(row[hashCol])
	kid, _ := row[keyCol].(string)
	if !ok1 || !ok2 || kid == "" {
		return nil
	}
	v, err := s.sealer.Reveal(ctx, ct, kid, h)
	if err != nil {
		return fmt.Errorf("%s: %w", cipherCol, err)
	}
	row[valueCol] = v
	return nil
}

// open replaces every sealed attribute value in v (a JSON value, however
// nested: members.attributes, a merge's snapshot) with the raw value.
func (s *Service) open(ctx context.Context, v any) (any, error) {
	switch x := v.(type) {
	case string:
		if !attributes.Sealed(x) {
			return x, nil
		}
		return attributes.Open(ctx, s.sealer, x)
	case map[string]any:
		for k, e := range x {
			var err error
			if x[k], err = s.open(ctx, e); err != nil {
				return nil, err
			}
		}
	case []any:
		for i, e := range x {
			var err error
			if x[i], err = s.open(ctx, e); err != nil {
				return nil, err
			}
		}
	}
	return v, nil
}

// bytea decodes a bytea value as row_to_json writes it ("\x" and hex).
func bytea(v any) ([]byte, bool) {
	s, ok := v.(string)
	if !ok || !strings.HasPrefix(s, `\x`) {
		return nil, false
	}
	b, err := hex.DecodeString(s[2:])
	return b, err == nil
}

// byteaPlaceholder is what the document shows of a binary column: its
// length, or that it is withheld.
func byteaPlaceholder(table, column string, v any) any {
	if v == nil {
		return nil
	}
	if _, ok := credentials[table+"."+column]; ok {
		return "<withheld>"
	}
	if s, ok := v.(string); ok && strings.HasPrefix(s, `\x`) {
		return fmt.Sprintf("<%d bytes>", (len(s)-2)/2)
	}
	return "<binary>"
}

func withheldReason(table, column string) string {
	if why, ok := credentials[table+"."+column]; ok {
		return why
	}
	if why, ok := withheldReasons[table+"."+column]; ok {
		return why
	}
	return "binary (a hash, ciphertext or encoded state), shown by its length"
}
