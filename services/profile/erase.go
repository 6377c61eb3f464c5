package profile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/fault"

	"github.com/membercenter/membercenter/services/attributes"
	"github.com/membercenter/membercenter/services/changes"
	"github.com/membercenter/membercenter/services/facts"
)

// EraseMember erases a member at their request (PIPL art. 47): in one
// transaction, once per idempotency key, what identifies or describes the
// member and the members merged into it is deleted or blanked
// (postgres.EraseMembers), their data keys are queued for shredding, the
// erasure is recorded in the operator audit (who, why, what) and announced
// on the change stream (MemberErased), after every change of the member
// already queued. Once it has committed, their data keys are shredded, so
// every ciphertext of their PII anywhere is unreadable; a key left queued
// is shredded when the erasure is asked again, or by RunKeyShreds.
// ClickHouse follows when the change reaches the sink. actor is the
// authenticated caller.
func (s *Service) EraseMember(ctx context.Context, req *mcv1.EraseMemberRequest, ch mcv1.Channel, actor string) (*mcv1.EraseMemberResponse, error) {
	id, err := parseMember(req.GetMemberId())
	if err != nil {
		return nil, err
	}
	if req.GetReason() == "" || req.GetIdempotencyKey() == "" {
		return nil, fmt.Errorf("%w: reason and idempotency_key are required", ErrInvalid)
	}
	resp := &mcv1.EraseMemberResponse{}
	cause := "rpc:profile.EraseMember:" + req.GetIdempotencyKey()
	if s.sealer == nil {
		return nil, errors.New("erase: this process has no PII keys to shred the member's data keys with")
	}
	err = postgres.RetryTx(ctx, s.pool, func(tx pgx.Tx) error {
		_, err := changes.Idempotent(ctx, tx, "profile.EraseMember", req.GetIdempotencyKey(), req, resp, func() error {
			// A member a merge absorbed while this waited for its lock is
			// followed to the survivor, which holds the person's data now.
			var merged []uuid.UUID
			member, err := postgres.FollowingMerges(ctx, tx, id, func(member uuid.UUID) (err error) {
				merged, err = postgres.LockErasable(ctx, tx, member)
				return err
			})
			if err != nil {
				return err
			}
			all := append([]uuid.UUID{member}, merged...)
			// The keys are shredded once this commits, not before: the key
			// store commits on its own, and an attempt that failed (and was
			// retried after an unmerge, say) would have shredded the keys of
			// members it did not erase.
			keys, err := s.sealer.LiveKeys(ctx, all)
			if err != nil {
				return err
			}
			if err := postgres.QueueKeyShreds(ctx, tx, all, s.now()); err != nil {
				return err
			}
			rows, err := postgres.EraseMembers(ctx, tx, all)
			if err != nil {
				return err
			}
			if rows["outbox_others"], err = blankOthersChanges(ctx, tx, all); err != nil {
				return err
			}
			if rows["outbox_pending"], err = blankPendingChanges(ctx, tx, all); err != nil {
				return err
			}
			rows["member_keys"] = keys
			// A migrated member's legacy record stays, under a keyed hash
			// of its id and linked to no one, so that an import run again
			// does not bring the person back.
			legacy, err := postgres.LegacyRecordsOf(ctx, tx, all)
			if err != nil {
				return err
			}
			for _, l := range legacy {
				if err := postgres.MarkLegacyErased(ctx, tx, l.Source, l.LegacyID, attributes.ErasedLegacyID(s.sealer, l.Source, l.LegacyID)); err != nil {
					return err
				}
			}
			rows["legacy_members"] = int64(len(legacy))
			now := s.now()
			ids := make([]string, len(merged))
			for i, m := range merged {
				ids[i] = m.String()
			}
			if _, err := s.changes.Append(ctx, tx, member, &mcv1.MemberChange{CauseId: cause, Channel: ch, Actor: actor,
				Change: &mcv1.MemberChange_MemberErased{MemberErased: &mcv1.MemberErased{MergedMemberIds: ids}}}); err != nil {
				return err
			}
			detail, err := json.Marshal(map[string]any{"reason": req.GetReason(), "merged_member_ids": ids, "postgres_rows": rows})
			if err != nil {
				return err
			}
			if err := postgres.InsertOperatorAudit(ctx, tx, postgres.OperatorAudit{AuditID: uuid.Must(uuid.NewV7()), At: now,
				Actor: actor, Action: "member.erased", MemberID: member, CauseID: cause, Detail: detail}); err != nil {
				return err
			}
			resp.MemberId, resp.MergedMemberIds, resp.ErasedAt = member.String(), ids, timestamppb.New(now)
			resp.PostgresRows = maps.Clone(rows)
			resp.ClickhouseTables = slices.Clone(facts.ErasedTables)
			return nil
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	// Also when the answer is a recorded one: the first call may have
	// ended before it shredded.
	var erased []uuid.UUID
	for _, m := range append([]string{resp.GetMemberId()}, resp.GetMergedMemberIds()...) {
		id, err := uuid.Parse(m)
		if err != nil {
			return nil, fmt.Errorf("erase: the recorded answer names member %q: %w", m, err)
		}
		erased = append(erased, id)
	}
	if _, err := s.shredQueued(ctx, erased, len(erased)); err != nil {
		return nil, fault.Temporary(fmt.Errorf("the member is erased, and its data keys are queued for shredding: %w", err))
	}
	return resp, nil
}

// shredQueued shreds the data keys queued for shredding among members (all
// of them, when nil; up to limit) and takes them off the queue. It returns
// how many members it took off.
func (s *Service) shredQueued(ctx context.Context, members []uuid.UUID, limit int) (int, error) {
	queued, err := postgres.QueuedKeyShreds(ctx, s.pool, members, limit)
	if err != nil || len(queued) == 0 {
		return 0, err
	}
	if _, err := s.sealer.Shred(ctx, queued, s.now()); err != nil {
		return 0, err
	}
	return len(queued), postgres.KeyShredsDone(ctx, s.pool, queued)
}

// RunKeyShreds shreds, until ctx ends, the data keys that erasures queued
// and did not shred (their process ended between the erasure's commit and
// the shredding): a sweep every interval, in batches of keyShredBatch.
func (s *Service) RunKeyShreds(ctx context.Context, log *slog.Logger, interval time.Duration) error {
	if s.sealer == nil {
		return nil
	}
	fault.Drain(ctx, log, "shredding erased members' data keys", keyShredBatch, interval, func(ctx context.Context, batch int) (int, error) {
		return s.shredQueued(ctx, nil, batch)
	})
	return nil
}

// keyShredBatch is how many members' keys a sweep shreds at a time.
const keyShredBatch = 500

// blankOthersChanges blanks what other members' changes still in the
// outbox hold of the erased members: the identity change of a merge
// undone since, of an unmerge, a refused merge or a conflict with one of
// them lists the identifiers that moved (theirs: keyed hashes, masked
// values) and both sides' summaries. The change stays, naming the erased
// member by its id alone, as the audit record it announces does
// (postgres.EraseMembers). It returns how many changes it blanked.
func blankOthersChanges(ctx context.Context, tx pgx.Tx, erased []uuid.UUID) (int64, error) {
	rows, err := postgres.OthersOutboxNaming(ctx, tx, erased)
	if err != nil {
		return 0, err
	}
	names := make(map[string]bool, len(erased))
	for _, m := range erased {
		names[m.String()] = true
	}
	return rewriteChanges(ctx, tx, rows, func(c *mcv1.MemberChange) *mcv1.MemberChange {
		if !names[c.GetIdentityChanged().GetOtherMemberId()] {
			return nil // names them otherwise (a cause id, say), holds nothing of theirs
		}
		return facts.BlankIdentity(c)
	})
}

// blankPendingChanges blanks what the members' changes left in the outbox
// after postgres.EraseMembers deleted those published (those waiting for
// the relay, and any it published since) say of them: the identifiers a
// creation or an identity change lists, the attributes, the labels, the
// consents. They still go out, in order and gap-free, before the erasure's
// own change, and stay in the outbox for its retention once published: as
// they are blanked, they hold nothing that identifies or describes the
// member. Points, tiers, benefits and coupons stay, as the ledger does. It
// returns how many changes it blanked.
func blankPendingChanges(ctx context.Context, tx pgx.Tx, erased []uuid.UUID) (int64, error) {
	rows, err := postgres.OutboxOf(ctx, tx, erased)
	if err != nil {
		return 0, err
	}
	return rewriteChanges(ctx, tx, rows, func(c *mcv1.MemberChange) *mcv1.MemberChange {
		switch x := c.GetChange().(type) {
		case *mcv1.MemberChange_MemberCreated:
			x.MemberCreated.Identifiers = nil
		case *mcv1.MemberChange_IdentityChanged:
			return facts.BlankIdentity(c)
		case *mcv1.MemberChange_AttributesChanged:
			x.AttributesChanged.Attributes = nil
		case *mcv1.MemberChange_LabelsChanged:
			x.LabelsChanged.Labels = nil
		case *mcv1.MemberChange_ConsentChanged:
			x.ConsentChanged.Purpose, x.ConsentChanged.Granted = mcv1.ConsentPurpose_CONSENT_PURPOSE_UNSPECIFIED, false
		default:
			return nil
		}
		return c
	})
}

// rewriteChanges replaces the payload of each outbox row with what blank
// makes of its change (nil: the row stays as it is) and returns how many
// it replaced.
func rewriteChanges(ctx context.Context, tx pgx.Tx, rows []postgres.OutboxRow, blank func(*mcv1.MemberChange) *mcv1.MemberChange) (int64, error) {
	var n int64
	for _, r := range rows {
		c := &mcv1.MemberChange{}
		if err := proto.Unmarshal(r.Payload, c); err != nil {
			return n, fmt.Errorf("erase: outbox change %d: %w", r.OutboxID, err)
		}
		if c = blank(c); c == nil {
			continue
		}
		b, err := proto.Marshal(c)
		if err != nil {
			return n, fmt.Errorf("erase: outbox change %d: %w", r.OutboxID, err)
		}
		if err := postgres.SetOutboxPayload(ctx, tx, r.MemberID, r.OutboxID, b); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}
