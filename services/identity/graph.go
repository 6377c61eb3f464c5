package identity

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/auth"
	"github.com/membercenter/membercenter/services/changes"
)

// WithActor records who is acting (an operator, a channel system) for the
// audit trail (auth.WithActor).
func WithActor(ctx context.Context, actor string) context.Context { return auth.WithActor(ctx, actor) }

// ActorHeader is the gRPC metadata key a caller may name itself with when
// channel authentication is off (auth.ActorHeader).
const ActorHeader = auth.ActorHeader

// actorFrom is the actor of the call (auth.Actor).
func actorFrom(ctx context.Context) string { return auth.Actor(ctx) }

// identitySummary is the before/after of an audit record: what identifiers
// a member held, by reference only, and its status.
type identitySummary struct {
	Status      string                `json:"status,omitempty"`
	MergedInto  string                `json:"merged_into,omitempty"`
	Identifiers []string              `json:"identifiers"`
	Points      *int64                `json:"points,omitempty"`
	refs        []*mcv1.IdentifierRef // for changes; not part of the JSON
}

func (s *Service) summary(ctx context.Context, q postgres.Querier, member uuid.UUID) (identitySummary, error) {
	m, err := postgres.GetMember(ctx, q, member)
	if err != nil {
		return identitySummary{}, err
	}
	rows, err := postgres.ListIdentifiers(ctx, q, member)
	if err != nil {
		return identitySummary{}, err
	}
	acct, err := postgres.GetAccount(ctx, q, member)
	if err != nil {
		return identitySummary{}, err
	}
	sum := identitySummary{Status: m.Status, Identifiers: []string{}, Points: &acct.Balance, refs: toRowRefs(rows)}
	if m.MergedInto != nil {
		sum.MergedInto = m.MergedInto.String()
	}
	for _, r := range rows {
		sum.Identifiers = append(sum.Identifiers, TypeName(mcv1.IdentifierType(r.Type))+":"+r.Masked)
	}
	return sum, nil
}

// summaries are the summaries of members a and b.
func (s *Service) summaries(ctx context.Context, q postgres.Querier, a, b uuid.UUID) (identitySummary, identitySummary, error) {
	sa, err := s.summary(ctx, q, a)
	if err != nil {
		return identitySummary{}, identitySummary{}, err
	}
	sb, err := s.summary(ctx, q, b)
	return sa, sb, err
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only plain structs and maps are marshalled here
	}
	return b
}

// auditEntry is one identity audit record and the change it announces.
type auditEntry struct {
	action  string
	kind    mcv1.IdentityChangeKind
	member  uuid.UUID
	other   *uuid.UUID
	refs    []*mcv1.IdentifierRef
	before  any
	after   any
	reason  string
	mergeID uuid.UUID
	// conflictID is set for conflict records.
	conflictID uuid.UUID
}

// audit appends the record and the member's IdentityChanged change in tx.
func (s *Service) audit(ctx context.Context, tx pgx.Tx, o origin, e auditEntry) (uuid.UUID, error) {
	id := uuid.Must(uuid.NewV7())
	before, after := mustJSON(e.before), mustJSON(e.after)
	if e.before == nil {
		before = json.RawMessage("{}")
	}
	if e.after == nil {
		after = json.RawMessage("{}")
	}
	if err := postgres.InsertAudit(ctx, tx, postgres.AuditRow{
		AuditID: id, At: s.now(), Action: e.action, Actor: o.actor, Channel: channelName(o.channel), CauseID: o.cause,
		MemberID: e.member, OtherMemberID: e.other, Identifiers: mustJSON(refsJSON(e.refs)),
		Before: before, After: after, Reason: e.reason,
	}); err != nil {
		return id, err
	}
	ch := &mcv1.IdentityChanged{Kind: e.kind, Identifiers: e.refs, Reason: e.reason, AuditId: id.String(), Actor: o.actor,
		Before: string(before), After: string(after)}
	if e.other != nil {
		ch.OtherMemberId = e.other.String()
	}
	if e.mergeID != uuid.Nil {
		ch.MergeId = e.mergeID.String()
	}
	if e.conflictID != uuid.Nil {
		ch.ConflictId = e.conflictID.String()
	}
	_, err := s.changes.Append(ctx, tx, e.member, &mcv1.MemberChange{
		CauseId: o.cause, Channel: o.channel, StoreId: o.store,
		Change: &mcv1.MemberChange_IdentityChanged{IdentityChanged: ch},
	})
	return id, err
}

func refsJSON(refs []*mcv1.IdentifierRef) []map[string]string {
	out := make([]map[string]string, len(refs))
	for i, r := range refs {
		out[i] = map[string]string{"type": TypeName(r.GetType()), "scope": r.GetScope(), "masked": r.GetMasked(), "hash": r.GetValueHash()}
	}
	return out
}

func channelName(c mcv1.Channel) string {
	if c == mcv1.Channel_CHANNEL_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(c.String(), "CHANNEL_"))
}

// recordResolution writes the audit and the change of what a resolution did
// to its member: created it, or linked identifiers to it.
func (s *Service) recordResolution(ctx context.Context, tx pgx.Tx, res *Result, o resolveOpts) error {
	if !res.Created && len(res.Linked) == 0 {
		return nil
	}
	if res.Created {
		id := uuid.Must(uuid.NewV7())
		after := map[string]any{"status": "active", "identifiers": refsJSON(Refs(res.Linked))}
		if err := postgres.InsertAudit(ctx, tx, postgres.AuditRow{
			AuditID: id, At: s.now(), Action: "create", Actor: o.actor, Channel: channelName(o.channel), CauseID: o.cause,
			MemberID: res.MemberID, Identifiers: mustJSON(refsJSON(Refs(res.Linked))), After: mustJSON(after),
			Reason: "no member held these identifiers",
		}); err != nil {
			return err
		}
		_, err := s.changes.AppendFirst(ctx, tx, res.MemberID, &mcv1.MemberChange{
			CauseId: o.cause, Channel: o.channel, StoreId: o.store,
			Change: &mcv1.MemberChange_MemberCreated{MemberCreated: &mcv1.MemberCreated{Identifiers: Refs(res.Linked), AuditId: id.String()}},
		})
		return err
	}
	_, err := s.audit(ctx, tx, o.origin, auditEntry{
		action: "link", kind: mcv1.IdentityChangeKind_IDENTITY_CHANGE_KIND_LINKED, member: res.MemberID,
		refs: Refs(res.Linked), reason: "seen together with a known identifier",
	})
	return err
}

// recordConflict stores a conflict for review and announces it.
func (s *Service) recordConflict(ctx context.Context, tx pgx.Tx, members []uuid.UUID, ids []Normalized, reason string, o origin) (uuid.UUID, error) {
	id := uuid.Must(uuid.NewV7())
	if err := postgres.InsertConflict(ctx, tx, postgres.ConflictRow{
		ConflictID: id, MemberIDs: members, Identifiers: mustJSON(refsJSON(Refs(ids))), Reason: reason,
		CauseID: o.cause, Channel: channelName(o.channel), CreatedAt: s.now(),
	}); err != nil {
		return id, err
	}
	others := members[1]
	_, err := s.audit(ctx, tx, o, auditEntry{
		action: "conflict", kind: mcv1.IdentityChangeKind_IDENTITY_CHANGE_KIND_CONFLICT_RECORDED, member: members[0],
		other: &others, refs: Refs(ids), reason: reason, conflictID: id,
		after: map[string]any{"conflict_id": id.String(), "members": members},
	})
	return id, err
}

// MemberData is what another service keeps per member (the loyalty
// programme's tier inputs, coupons, orders): merges and unmerges carry it
// along in the same transaction.
type MemberData interface {
	Merged(ctx context.Context, tx pgx.Tx, source, target uuid.UUID, at time.Time, cause string) error
	Unmerged(ctx context.Context, tx pgx.Tx, source, target uuid.UUID, origins []uuid.UUID, at time.Time, cause string) error
}

// AddMemberData registers a service whose member data merges follow.
func (s *Service) AddMemberData(d MemberData) { s.data = append(s.data, d) }

// mergeSnapshot is what a merge changed beyond moving rows.
type mergeSnapshot struct {
	// Attributes the target took from the source (absent on the target).
	Filled map[string]string `json:"filled,omitempty"`
	// The source's account when it was merged.
	Source accountJSON `json:"source_account"`
	// Members folded into the source before (they travel with it).
	Folded []uuid.UUID `json:"folded,omitempty"`
	// The last lot of the two members before the merge: those made after
	// it (whatever time they are dated: a purchase made before the merge
	// and applied after is dated at the merge) are what the unmerge gives
	// back as earned. nil in a merge recorded before it was kept.
	LastLot *int64 `json:"last_lot,omitempty"`
}

type accountJSON struct {
	Balance        int64 `json:"balance"`
	LifetimeEarned int64 `json:"lifetime_earned"`
}

// ErrMergeInvalid is returned for a merge of a member with itself or of a
// member that is not active.
var ErrMergeInvalid = errors.New("merge not possible")

// merge folds source into target in tx: identifiers, lots and balance move
// to the target with their origin kept, missing attributes are filled in, the
// source points at the target. A merge that merge protection refuses is
// recorded (audit and change) and returned as refused, with nothing moved.
func (s *Service) merge(ctx context.Context, tx pgx.Tx, source, target uuid.UUID, reason string, o origin) (uuid.UUID, *RuleError, error) {
	if source == target {
		return uuid.Nil, nil, fmt.Errorf("%w: a member cannot be merged into itself", ErrMergeInvalid)
	}
	ms, err := postgres.LockMembers(ctx, tx, source, target)
	if err != nil {
		return uuid.Nil, nil, err
	}
	src, dst := ms[source], ms[target]
	for _, m := range []postgres.MemberRow{src, dst} {
		if err := erasedNotFound(m.MemberID, m.Status); err != nil {
			return uuid.Nil, nil, err
		}
		if m.Status != "active" {
			return uuid.Nil, nil, fmt.Errorf("%w: member %s was merged into %s; merge its survivor instead", ErrMemberInactive, m.MemberID, m.MergedInto)
		}
	}
	before, srcBefore, err := s.summaries(ctx, tx, target, source)
	if err != nil {
		return uuid.Nil, nil, err
	}
	var refusal *RuleError
	switch total := len(before.Identifiers) + len(srcBefore.Identifiers); {
	case total > s.rules.Limits.MaxIdentifiers:
		refusal = &RuleError{Rule: "limits.max_identifiers", Detail: fmt.Sprintf("merged member would hold %d identifiers (limit %d)", total, s.rules.Limits.MaxIdentifiers)}
	case src.MergeCount+dst.MergeCount+1 > s.rules.Limits.MaxMerges:
		refusal = &RuleError{Rule: "limits.max_merges", Detail: fmt.Sprintf("merged member would fold %d merges (limit %d)", src.MergeCount+dst.MergeCount+1, s.rules.Limits.MaxMerges)}
	}
	if refusal != nil {
		_, err := s.audit(ctx, tx, o, auditEntry{
			action: "merge_refused", kind: mcv1.IdentityChangeKind_IDENTITY_CHANGE_KIND_MERGE_REFUSED, member: target, other: &source,
			refs: srcBefore.refs, before: before, after: before, reason: reason + ": " + refusal.Error(),
		})
		return uuid.Nil, refusal, err
	}

	mergeID := uuid.Must(uuid.NewV7())
	now := s.now()
	folded, err := postgres.FoldedInto(ctx, tx, source)
	if err != nil {
		return uuid.Nil, nil, err
	}
	if _, err := postgres.MoveIdentifiers(ctx, tx, source, target, nil); err != nil {
		return uuid.Nil, nil, err
	}
	lastLot, err := postgres.LastLotOf(ctx, tx, source, target)
	if err != nil {
		return uuid.Nil, nil, err
	}
	if err := postgres.MoveLots(ctx, tx, source, target, nil); err != nil {
		return uuid.Nil, nil, err
	}
	srcAcct, err := postgres.GetAccount(ctx, tx, source)
	if err != nil {
		return uuid.Nil, nil, err
	}
	dstAcct, err := postgres.GetAccount(ctx, tx, target)
	if err != nil {
		return uuid.Nil, nil, err
	}
	moved := srcAcct.Balance
	if err := s.transfer(ctx, tx, source, target, source, moved, "merge:"+mergeID.String(),
		fmt.Sprintf("merge %s: points of %s move to %s", mergeID, source, target), now); err != nil {
		return uuid.Nil, nil, err
	}
	if err := postgres.SetAccount(ctx, tx, postgres.Account{MemberID: source, LifetimeEarned: srcAcct.LifetimeEarned}); err != nil {
		return uuid.Nil, nil, err
	}
	if err := postgres.SetAccount(ctx, tx, postgres.Account{MemberID: target, Balance: dstAcct.Balance + srcAcct.Balance,
		LifetimeEarned: dstAcct.LifetimeEarned + srcAcct.LifetimeEarned}); err != nil {
		return uuid.Nil, nil, err
	}
	filled := map[string]string{}
	attrs := dst.Attributes
	if attrs == nil {
		attrs = map[string]string{}
	}
	for k, v := range src.Attributes {
		if _, ok := attrs[k]; !ok {
			attrs[k], filled[k] = v, v
		}
	}
	if len(filled) > 0 {
		if err := postgres.SetAttributes(ctx, tx, target, attrs); err != nil {
			return uuid.Nil, nil, err
		}
	}
	if err := postgres.SetMergedInto(ctx, tx, source, &target); err != nil {
		return uuid.Nil, nil, err
	}
	for _, d := range s.data {
		if err := d.Merged(ctx, tx, source, target, now, "merge:"+mergeID.String()); err != nil {
			return uuid.Nil, nil, err
		}
	}
	if err := postgres.AddMergeCount(ctx, tx, target, src.MergeCount+1); err != nil {
		return uuid.Nil, nil, err
	}
	snap := mergeSnapshot{Filled: filled, Source: accountJSON{srcAcct.Balance, srcAcct.LifetimeEarned}, Folded: folded, LastLot: &lastLot}
	if err := postgres.InsertMerge(ctx, tx, postgres.MergeRow{MergeID: mergeID, Source: source, Target: target, Reason: reason,
		CauseID: o.cause, Actor: o.actor, Channel: channelName(o.channel), MergedAt: now, Snapshot: mustJSON(snap)}); err != nil {
		return uuid.Nil, nil, err
	}
	after, err := s.summary(ctx, tx, target)
	if err != nil {
		return uuid.Nil, nil, err
	}
	if _, err := s.audit(ctx, tx, o, auditEntry{action: "merge", kind: mcv1.IdentityChangeKind_IDENTITY_CHANGE_KIND_MERGED,
		member: target, other: &source, refs: srcBefore.refs, before: map[string]any{"target": before, "source": srcBefore},
		after: after, reason: reason, mergeID: mergeID}); err != nil {
		return uuid.Nil, nil, err
	}
	if _, err := s.audit(ctx, tx, o, auditEntry{action: "merged_into", kind: mcv1.IdentityChangeKind_IDENTITY_CHANGE_KIND_MERGED,
		member: source, other: &target, refs: srcBefore.refs, before: srcBefore,
		after: identitySummary{Status: "merged", MergedInto: target.String(), Identifiers: []string{}}, reason: reason, mergeID: mergeID}); err != nil {
		return uuid.Nil, nil, err
	}
	return mergeID, nil, s.pointsMoved(ctx, tx, o, source, target, moved, mergeID)
}

// transfer writes the balanced ledger transaction of points moving between
// two members' accounts.
func (s *Service) transfer(ctx context.Context, tx pgx.Tx, from, to, attributed uuid.UUID, points int64, cause, reason string, at time.Time) error {
	if points == 0 {
		return nil
	}
	return postgres.InsertLedgerTransaction(ctx, tx, postgres.LedgerTransaction{
		TransactionID: uuid.Must(uuid.NewV7()), MemberID: to, OriginMemberID: attributed, Kind: "transfer", Reason: reason,
		CauseID: cause, CreatedAt: at,
		Entries: []postgres.LedgerEntry{
			{Account: postgres.MemberAccount(from), MemberID: &from, Delta: -points},
			{Account: postgres.MemberAccount(to), MemberID: &to, Delta: points},
		},
	})
}

// pointsMoved announces the balance change of both members of a merge or
// unmerge.
func (s *Service) pointsMoved(ctx context.Context, tx pgx.Tx, o origin, from, to uuid.UUID, points int64, mergeID uuid.UUID) error {
	if points == 0 {
		return nil
	}
	for _, m := range []struct {
		id    uuid.UUID
		delta int64
	}{{from, -points}, {to, points}} {
		acct, err := postgres.GetAccount(ctx, tx, m.id)
		if err != nil {
			return err
		}
		if _, err := s.changes.Append(ctx, tx, m.id, &mcv1.MemberChange{
			CauseId: o.cause, Channel: o.channel, StoreId: o.store,
			Change: &mcv1.MemberChange_PointsChanged{PointsChanged: &mcv1.PointsChanged{
				Kind: mcv1.LedgerEntryKind_LEDGER_ENTRY_KIND_TRANSFER, Delta: m.delta, Balance: acct.Balance,
				Reason: "identity merge " + mergeID.String(),
			}},
		}); err != nil {
			return err
		}
	}
	return nil
}

// ErrAlreadyUnmerged is returned for a merge that was undone before.
var ErrAlreadyUnmerged = errors.New("merge was already undone")

// unmerge splits a merge: everything that came from the source member — its
// identifiers, its lots and the points left in them, what was linked or
// earned since through its identifiers, the members folded into it before —
// goes back to it; attributes it lent the target are taken back.
func (s *Service) unmerge(ctx context.Context, tx pgx.Tx, mergeID uuid.UUID, reason string, o origin) ([]uuid.UUID, error) {
	m, err := postgres.GetMergeForUpdate(ctx, tx, mergeID)
	if err != nil {
		return nil, err
	}
	if m.UnmergedAt != nil {
		return nil, fmt.Errorf("%w: merge %s was undone at %s", ErrAlreadyUnmerged, mergeID, m.UnmergedAt.Format(time.RFC3339))
	}
	ms, err := postgres.LockMembers(ctx, tx, m.Source, m.Target)
	if err != nil {
		return nil, err
	}
	src, dst := ms[m.Source], ms[m.Target]
	if dst.Status == "erased" {
		// Erasure takes the survivor and every member merged into it.
		return nil, fmt.Errorf("merge %s: its members were erased: %w", mergeID, postgres.ErrNotFound)
	}
	if dst.Status != "active" {
		return nil, &RuleError{Rule: "unmerge.order", Detail: fmt.Sprintf("member %s was merged into %s afterwards; undo that merge first", m.Target, dst.MergedInto)}
	}
	if src.MergedInto == nil || *src.MergedInto != m.Target {
		return nil, fmt.Errorf("%w: member %s is not merged into %s", ErrMergeInvalid, m.Source, m.Target)
	}
	var snap mergeSnapshot
	if err := json.Unmarshal(m.Snapshot, &snap); err != nil {
		return nil, fmt.Errorf("merge %s snapshot: %w", mergeID, err)
	}
	before, err := s.summary(ctx, tx, m.Target)
	if err != nil {
		return nil, err
	}
	// Everything attributed to the source or to members folded into it.
	origins := append([]uuid.UUID{m.Source}, snap.Folded...)
	if _, err := postgres.MoveIdentifiers(ctx, tx, m.Target, m.Source, origins); err != nil {
		return nil, err
	}
	now := s.now()
	afterLot := int64(-1) // a merge recorded before the last lot was: by time
	if snap.LastLot != nil {
		afterLot = *snap.LastLot
	}
	avail, pending, earnedSince, err := postgres.LotTotals(ctx, tx, m.Target, origins, now, m.MergedAt, afterLot)
	if err != nil {
		return nil, err
	}
	if err := postgres.MoveLots(ctx, tx, m.Target, m.Source, origins); err != nil {
		return nil, err
	}
	dstAcct, err := postgres.GetAccount(ctx, tx, m.Target)
	if err != nil {
		return nil, err
	}
	back := avail + pending
	if err := s.transfer(ctx, tx, m.Target, m.Source, m.Source, back, "unmerge:"+mergeID.String(),
		fmt.Sprintf("unmerge %s: points of %s return from %s", mergeID, m.Source, m.Target), now); err != nil {
		return nil, err
	}
	lifetime := snap.Source.LifetimeEarned + earnedSince
	if err := postgres.SetAccount(ctx, tx, postgres.Account{MemberID: m.Source, Balance: back, LifetimeEarned: lifetime}); err != nil {
		return nil, err
	}
	if err := postgres.SetAccount(ctx, tx, postgres.Account{MemberID: m.Target, Balance: dstAcct.Balance - back,
		LifetimeEarned: dstAcct.LifetimeEarned - lifetime}); err != nil {
		return nil, err
	}
	if len(snap.Filled) > 0 {
		attrs := dst.Attributes
		for k, v := range snap.Filled {
			if attrs[k] == v {
				delete(attrs, k)
			}
		}
		if err := postgres.SetAttributes(ctx, tx, m.Target, attrs); err != nil {
			return nil, err
		}
	}
	if err := postgres.SetMergedInto(ctx, tx, m.Source, nil); err != nil {
		return nil, err
	}
	for _, d := range s.data {
		if err := d.Unmerged(ctx, tx, m.Source, m.Target, origins, now, "unmerge:"+mergeID.String()); err != nil {
			return nil, err
		}
	}
	if err := postgres.AddMergeCount(ctx, tx, m.Target, -(src.MergeCount + 1)); err != nil {
		return nil, err
	}
	if err := postgres.MarkUnmerged(ctx, tx, mergeID, reason, now); err != nil {
		return nil, err
	}
	after, restored, err := s.summaries(ctx, tx, m.Target, m.Source)
	if err != nil {
		return nil, err
	}
	source, target := m.Source, m.Target
	if _, err := s.audit(ctx, tx, o, auditEntry{action: "unmerge", kind: mcv1.IdentityChangeKind_IDENTITY_CHANGE_KIND_UNMERGED,
		member: target, other: &source, refs: restored.refs, before: before, after: after, reason: reason, mergeID: mergeID}); err != nil {
		return nil, err
	}
	if _, err := s.audit(ctx, tx, o, auditEntry{action: "unmerged_from", kind: mcv1.IdentityChangeKind_IDENTITY_CHANGE_KIND_UNMERGED,
		member: source, other: &target, refs: restored.refs, after: restored, reason: reason, mergeID: mergeID}); err != nil {
		return nil, err
	}
	if err := s.pointsMoved(ctx, tx, o, target, source, back, mergeID); err != nil {
		return nil, err
	}
	return []uuid.UUID{source, target}, nil
}

// runRefusable runs fn in a transaction; when fn reports a refusal, the
// transaction still commits (the refusal's audit record is kept) and the
// refusal is returned.
func (s *Service) runRefusable(ctx context.Context, fn func(tx pgx.Tx) (refusal error, err error)) error {
	var refused error
	err := postgres.RetryTx(ctx, s.pool, func(tx pgx.Tx) error {
		r, err := fn(tx)
		refused = r
		return err
	})
	if err != nil {
		return err
	}
	return refused
}

// Merge folds source into target on an operator's decision.
func (s *Service) Merge(ctx context.Context, req *mcv1.MergeRequest) (*mcv1.MergeResponse, error) {
	source, target := uuid.MustParse(req.GetSourceMemberId()), uuid.MustParse(req.GetTargetMemberId())
	resp := &mcv1.MergeResponse{}
	err := s.runRefusableOnce(ctx, "identity.Merge", req.GetIdempotencyKey(), req, resp, func(tx pgx.Tx) (*RuleError, error) {
		id, refused, err := s.merge(ctx, tx, source, target, req.GetReason(), origin{
			actor: actorFrom(ctx), channel: mcv1.Channel_CHANNEL_BACKOFFICE, cause: "rpc:Merge:" + req.GetIdempotencyKey()})
		if err != nil {
			return nil, err
		}
		if refused != nil {
			return refused, nil
		}
		resp.MergeId = id.String()
		return nil, nil
	})
	if err != nil {
		return nil, err
	}
	m, err := s.Member(ctx, target)
	if err != nil {
		return nil, err
	}
	resp.Member = m
	return resp, nil
}

// runRefusableOnce is runRefusable once per idempotency key of scope: a
// retry gets resp as first answered; a refused request's answer is not
// kept, so that its key can be used again.
func (s *Service) runRefusableOnce(ctx context.Context, scope, key string, req, resp proto.Message, fn func(tx pgx.Tx) (*RuleError, error)) error {
	return s.runRefusable(ctx, func(tx pgx.Tx) (error, error) {
		proto.Reset(resp)
		var refusal error
		_, err := changes.Idempotent(ctx, tx, scope, key, req, resp, func() error {
			refused, err := fn(tx)
			if refused != nil {
				refusal = refused
			}
			return err
		})
		if refusal != nil {
			return refusal, errDropIdempotency(tx, ctx, scope, key)
		}
		return nil, err
	})
}

// errDropIdempotency forgets the stored answer of a refused request, so a
// retry is judged again rather than answered "merged".
func errDropIdempotency(tx pgx.Tx, ctx context.Context, scope, key string) error {
	return postgres.DeleteIdempotentResponse(ctx, tx, scope, key)
}

// Unmerge splits a merge back into its two members.
func (s *Service) Unmerge(ctx context.Context, req *mcv1.UnmergeRequest) (*mcv1.UnmergeResponse, error) {
	mergeID, err := uuid.Parse(req.GetMergeId())
	if err != nil {
		return nil, fmt.Errorf("merge_id %q: %w", req.GetMergeId(), ErrBadID)
	}
	resp := &mcv1.UnmergeResponse{}
	var members []uuid.UUID
	err = postgres.RetryTx(ctx, s.pool, func(tx pgx.Tx) error {
		resp.Reset()
		_, err := changes.Idempotent(ctx, tx, "identity.Unmerge", req.GetIdempotencyKey(), req, resp, func() error {
			var err error
			members, err = s.unmerge(ctx, tx, mergeID, req.GetReason(), origin{
				actor: actorFrom(ctx), channel: mcv1.Channel_CHANNEL_BACKOFFICE, cause: "rpc:Unmerge:" + req.GetIdempotencyKey()})
			return err
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	if members == nil { // replayed answer: report the members as they are now
		m, err := postgres.GetMergeForUpdate(ctx, s.pool, mergeID)
		if err != nil {
			return nil, err
		}
		members = []uuid.UUID{m.Source, m.Target}
	}
	for _, id := range members {
		m, err := s.Member(ctx, id)
		if err != nil {
			return nil, err
		}
		resp.Members = append(resp.Members, m)
	}
	return resp, nil
}

// erasedNotFound is ErrNotFound for an erased member, as every read
// answers: its row stays as a pseudonym of the records kept, but it is no
// one, not a member "merged into" nobody.
func erasedNotFound(id uuid.UUID, status string) error {
	if status == "erased" {
		return fmt.Errorf("member %s: %w", id, postgres.ErrNotFound)
	}
	return nil
}

// ErrBadID is returned for an id that is not a UUID.
var ErrBadID = errors.New("malformed id")

// activeMember returns the member, refusing one that was merged away; an
// erased one is not found.
func activeMember(ctx context.Context, q postgres.Querier, id uuid.UUID) (postgres.MemberRow, error) {
	m, err := postgres.GetMember(ctx, q, id)
	if err != nil {
		return m, err
	}
	if err := erasedNotFound(id, m.Status); err != nil {
		return m, err
	}
	if m.Status != "active" {
		return m, fmt.Errorf("%w: %s was merged into %s; use that member", ErrMemberInactive, id, m.MergedInto)
	}
	return m, nil
}

// Link attaches an identifier to a member under the identity rules.
func (s *Service) Link(ctx context.Context, req *mcv1.LinkRequest) (*mcv1.LinkResponse, error) {
	resp := &mcv1.LinkResponse{}
	m, err := s.onIdentifier(ctx, "Link", req, resp, req.GetMemberId(), req.GetIdentifier(),
		func(tx pgx.Tx, member uuid.UUID, n Normalized, o origin) error {
			if s.rules.Blocked(n.Type, n.Value) {
				return &RuleError{Rule: TypeName(n.Type) + ".blocked", Detail: fmt.Sprintf("%s %s is a placeholder value, not a shopper's", TypeName(n.Type), n.Masked)}
			}
			found, err := postgres.FindIdentifiers(ctx, tx, []postgres.IdentifierKey{keyOf(n)}) // locked by onIdentifier
			if err != nil {
				return err
			}
			for _, f := range found {
				if f.MemberID == member {
					return nil // already linked: nothing to do
				}
				if f.Unique {
					// Which member holds it is not the caller's to learn
					// here (a member's own app may link); an operator finds
					// it with FindByIdentifier.
					return &RuleError{Rule: TypeName(n.Type) + ".unique",
						Detail: fmt.Sprintf("%s %s belongs to another member; merge the members instead", TypeName(n.Type), n.Masked)}
				}
			}
			res := Result{MemberID: member, Origin: member}
			if err := s.linkMissing(ctx, tx, &res, []Normalized{n}, map[string][]postgres.IdentifierRow{}, s.now(), resolveOpts{origin: o, strict: true}); err != nil {
				return err
			}
			_, err = s.audit(ctx, tx, o, auditEntry{action: "link", kind: mcv1.IdentityChangeKind_IDENTITY_CHANGE_KIND_LINKED,
				member: member, refs: Refs(res.Linked), reason: cmp.Or(req.GetReason(), "linked by "+o.actor)})
			return err
		})
	resp.Member = m
	return resp, err
}

// Unlink detaches an identifier from a member.
func (s *Service) Unlink(ctx context.Context, req *mcv1.UnlinkRequest) (*mcv1.UnlinkResponse, error) {
	resp := &mcv1.UnlinkResponse{}
	m, err := s.onIdentifier(ctx, "Unlink", req, resp, req.GetMemberId(), req.GetIdentifier(),
		func(tx pgx.Tx, member uuid.UUID, n Normalized, o origin) error {
			before, err := s.summary(ctx, tx, member)
			if err != nil {
				return err
			}
			ok, err := postgres.DeleteIdentifier(ctx, tx, member, keyOf(n))
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("member %s does not hold %s %s: %w", member, TypeName(n.Type), n.Masked, postgres.ErrNotFound)
			}
			after, err := s.summary(ctx, tx, member)
			if err != nil {
				return err
			}
			_, err = s.audit(ctx, tx, o, auditEntry{action: "unlink", kind: mcv1.IdentityChangeKind_IDENTITY_CHANGE_KIND_UNLINKED,
				member: member, refs: Refs([]Normalized{n}), before: before, after: after, reason: cmp.Or(req.GetReason(), "unlinked by "+o.actor)})
			return err
		})
	resp.Member = m
	return resp, err
}

// identifierRequest is a Link or Unlink request.
type identifierRequest interface {
	proto.Message
	GetIdempotencyKey() string
}

// onIdentifier runs change on one identifier of one active member, locked,
// once per idempotency key (a retry gets the first answer in resp), and
// returns the member as it is after.
func (s *Service) onIdentifier(ctx context.Context, rpc string, req identifierRequest, resp proto.Message, memberID string,
	id *mcv1.Identifier, change func(tx pgx.Tx, member uuid.UUID, n Normalized, o origin) error) (*mcv1.Member, error) {
	member := uuid.MustParse(memberID)
	n, err := s.NormalizeOne(id, "identifier")
	if err != nil {
		return nil, err
	}
	err = postgres.RetryTx(ctx, s.pool, func(tx pgx.Tx) error {
		proto.Reset(resp)
		_, err := changes.Idempotent(ctx, tx, "identity."+rpc, req.GetIdempotencyKey(), req, resp, func() error {
			o := origin{actor: actorFrom(ctx), channel: mcv1.Channel_CHANNEL_BACKOFFICE, cause: "rpc:" + rpc + ":" + req.GetIdempotencyKey()}
			// The identifier first, then the member, as a resolution takes
			// them: a Resolve bringing the member's identifiers with this
			// one never waits for this call in the opposite order.
			if err := postgres.LockIdentifiers(ctx, tx, []postgres.IdentifierKey{keyOf(n)}); err != nil {
				return err
			}
			if _, err := postgres.LockMembers(ctx, tx, member); err != nil {
				return err
			}
			if _, err := activeMember(ctx, tx, member); err != nil {
				return err
			}
			return change(tx, member, n, o)
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	return s.Member(ctx, member)
}

// ListConflicts pages through conflicts waiting for review, oldest first.
func (s *Service) ListConflicts(ctx context.Context, req *mcv1.ListConflictsRequest) (*mcv1.ListConflictsResponse, error) {
	var afterAt time.Time
	var afterID uuid.UUID
	if t := req.GetPageToken(); t != "" {
		at, id, ok := strings.Cut(t, ".")
		nanos, err1 := strconv.ParseInt(at, 10, 64)
		parsed, err2 := uuid.Parse(id)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("page_token %q: %w", t, ErrBadID)
		}
		afterAt, afterID = time.Unix(0, nanos), parsed
	}
	size := int(req.GetPageSize())
	if size == 0 {
		size = 50
	}
	rows, err := postgres.ListOpenConflicts(ctx, s.pool, afterAt, afterID, size+1)
	if err != nil {
		return nil, err
	}
	resp := &mcv1.ListConflictsResponse{}
	if len(rows) > size {
		rows = rows[:size]
		last := rows[size-1]
		resp.NextPageToken = fmt.Sprintf("%d.%s", last.CreatedAt.UnixNano(), last.ConflictID)
	}
	for _, c := range rows {
		resp.Conflicts = append(resp.Conflicts, toProtoConflict(c))
	}
	return resp, nil
}

// ResolveConflict settles a conflict: merge every member into the first, or
// keep them apart. Either way the decision is audited.
func (s *Service) ResolveConflict(ctx context.Context, req *mcv1.ResolveConflictRequest) (*mcv1.ResolveConflictResponse, error) {
	id, err := uuid.Parse(req.GetConflictId())
	if err != nil {
		return nil, fmt.Errorf("conflict_id %q: %w", req.GetConflictId(), ErrBadID)
	}
	resp := &mcv1.ResolveConflictResponse{}
	err = s.runRefusableOnce(ctx, "identity.ResolveConflict", req.GetIdempotencyKey(), req, resp, func(tx pgx.Tx) (*RuleError, error) {
		o := origin{actor: actorFrom(ctx), channel: mcv1.Channel_CHANNEL_BACKOFFICE, cause: "rpc:ResolveConflict:" + req.GetIdempotencyKey()}
		c, err := postgres.GetConflictForUpdate(ctx, tx, id)
		if err != nil {
			return nil, err
		}
		if c.ResolvedAt != nil {
			return nil, &RuleError{Rule: "conflict.resolved", Detail: fmt.Sprintf("conflict %s was settled (%s) at %s", id, *c.Resolution, c.ResolvedAt.Format(time.RFC3339))}
		}
		target, err := postgres.CanonicalMember(ctx, tx, c.MemberIDs[0])
		if err != nil {
			return nil, err
		}
		resolution := "kept_apart"
		if req.GetMerge() {
			resolution = "merged"
			for _, other := range c.MemberIDs[1:] {
				src, err := postgres.CanonicalMember(ctx, tx, other)
				if err != nil {
					return nil, err
				}
				if src == target {
					continue
				}
				if _, refused, err := s.merge(ctx, tx, src, target, req.GetReason(), o); err != nil || refused != nil {
					return refused, err
				}
			}
		}
		if err := postgres.ResolveConflictRow(ctx, tx, id, resolution, &target, s.now()); err != nil {
			return nil, err
		}
		_, err = s.audit(ctx, tx, o, auditEntry{action: "conflict_" + resolution, kind: mcv1.IdentityChangeKind_IDENTITY_CHANGE_KIND_CONFLICT_RECORDED,
			member: target, reason: req.GetReason(), conflictID: id, after: map[string]any{"resolution": resolution}})
		resp.MemberId = target.String()
		return nil, err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// Graph returns a member's identifiers and merge history.
func (s *Service) Graph(ctx context.Context, member uuid.UUID) (*mcv1.GetIdentityGraphResponse, error) {
	// An erased member is not found, as by every other read.
	if row, err := postgres.GetMember(ctx, s.pool, member); err != nil {
		return nil, err
	} else if row.Status == "erased" {
		return nil, fmt.Errorf("member %s: %w", member, postgres.ErrNotFound)
	}
	m, err := s.Member(ctx, member)
	if err != nil {
		return nil, err
	}
	merges, err := postgres.ListMerges(ctx, s.pool, member)
	if err != nil {
		return nil, err
	}
	resp := &mcv1.GetIdentityGraphResponse{Member: m}
	for _, mr := range merges {
		resp.Merges = append(resp.Merges, toProtoMerge(mr))
	}
	return resp, nil
}
