package benefits

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/changes"
)

// Maker–checker: an Adjust larger than the programme's
// limits.adjust_approval_points is not applied. Its request is recorded as
// a pending approval (with the operator who made it, the maker) and
// answered with the approval's id; a second operator (the checker) approves
// or rejects it with DecideAdjustment. Every step is written to the
// append-only operator audit in the transaction that makes its effect.
//
// Exactly once. An approval and its application are one transaction: the
// decision's idempotency key is locked, then the member's row (as every
// writer of a member locks it first), then the approval's row, which must
// still be pending; the approval is marked decided, audited and (approved)
// applied with the engine and persisted like any Adjust, and the decision's
// answer stored under its key, all in one commit. So there is no moment
// where an approval exists without its application or the reverse: a crash
// anywhere loses both, and the retry (same key) finds the approval pending
// and does it all. Two decisions of one approval (an approve and a reject,
// two approves with different keys) are serialised by the member's row
// lock and then the approval's: the second sees the first's state and is
// refused with ErrDecided, so exactly one wins. As a second guard, the
// application's ledger transaction has the cause "approval:<id>", and
// ledger_transactions' unique (cause_id, kind) refuses a second one.

const (
	adjustScope = "benefits.Adjust"
	decideScope = "benefits.DecideAdjustment"
)

// Operator audit actions.
const (
	auditAdjustApplied   = "adjust.applied"
	auditAdjustRequested = "adjust.requested"
	auditAdjustApproved  = "adjust.approved"
	auditAdjustRejected  = "adjust.rejected"
	auditCouponIssued    = "coupon.issued"
)

// approvalSpace names the approval ids derived from Adjust idempotency keys.
var approvalSpace = uuid.MustParse("b9fdafc4-ca28-41d0-9e7e-2f98dc1592a5")

// approvalID is the id of the approval an Adjust with key asks for: one
// key, one approval, whoever retries it.
func approvalID(key string) uuid.UUID {
	return uuid.NewSHA1(approvalSpace, []byte(adjustScope+"\x00"+key))
}

// needsApproval says whether an adjustment of points waits for a second
// operator under p.
func (p *Program) needsApproval(points int64) bool {
	t := p.Limits.AdjustApprovalPoints
	return t > 0 && (points > t || points < -t)
}

// requestApproval records the Adjust req by actor as a pending approval,
// once per idempotency key (the key Adjust itself uses: a retry gets the
// first answer, whichever path gave it), and answers with the approval's
// id and the member's balance, which it leaves alone.
func (s *Service) requestApproval(ctx context.Context, req *mcv1.AdjustRequest, actor string) (*mcv1.AdjustResponse, error) {
	member, err := parseMember(req.GetMemberId())
	if err != nil {
		return nil, err
	}
	if _, err := s.adjustOp(req); err != nil {
		return nil, err
	}
	key := req.GetIdempotencyKey()
	var resp *mcv1.AdjustResponse
	err = s.retryRaces(ctx, func() error {
		return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			resp = &mcv1.AdjustResponse{}
			_, err := changes.Idempotent(ctx, tx, adjustScope, key, req, resp, func() error {
				m, err := postgres.CanonicalMember(ctx, tx, member)
				if err != nil {
					return err
				}
				now := s.now()
				// Recorded for the member asked for, as a direct Adjust's
				// origin is: a merged member's approval is listed under it,
				// applied to whom it is merged into when decided, and goes
				// back with it if it is unmerged.
				a := postgres.Approval{ApprovalID: approvalID(key), MemberID: member, Points: req.GetPoints(), Reason: req.GetReason(),
					Maker: actor, RequestedAt: now, RequestKey: key}
				if err := postgres.InsertApproval(ctx, tx, a); err != nil {
					return err
				}
				if err := postgres.InsertOperatorAudit(ctx, tx, operatorAudit(now, actor, auditAdjustRequested, m, "rpc:"+adjustScope+":"+key,
					approvalDetail{ApprovalID: a.ApprovalID.String(), Points: a.Points, Reason: a.Reason})); err != nil {
					return err
				}
				st, err := s.load(ctx, tx, m, false, now)
				if err != nil {
					return err
				}
				resp.Balance, _, _ = st.Balance(now)
				resp.ApprovalId, resp.Pending = a.ApprovalID.String(), true
				return nil
			})
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// decide approves or rejects the approval req names on behalf of checker,
// once per req's idempotency key.
func (s *Service) decide(ctx context.Context, req *mcv1.DecideAdjustmentRequest, checker string) (*mcv1.DecideAdjustmentResponse, error) {
	id, err := uuid.Parse(req.GetApprovalId())
	if err != nil {
		return nil, fmt.Errorf("approval_id %q: %w", req.GetApprovalId(), ErrInvalid)
	}
	var resp *mcv1.DecideAdjustmentResponse
	err = s.retryRaces(ctx, func() error {
		return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			resp = &mcv1.DecideAdjustmentResponse{}
			_, err := changes.Idempotent(ctx, tx, decideScope, req.GetIdempotencyKey(), req, resp, func() error {
				return s.decideIn(ctx, tx, id, req, checker, resp)
			})
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// decideIn makes the decision in tx (see the exactly-once argument above).
func (s *Service) decideIn(ctx context.Context, tx pgx.Tx, id uuid.UUID, req *mcv1.DecideAdjustmentRequest, checker string,
	resp *mcv1.DecideAdjustmentResponse) error {
	// Read first without a lock, to learn the member (and refuse early);
	// lock the member, then the approval, and check again.
	a, err := postgres.GetApproval(ctx, tx, id, false)
	if err != nil {
		return err
	}
	if err := decidable(a, checker); err != nil {
		return err
	}
	now := s.now()
	m, err := postgres.CanonicalMember(ctx, tx, a.MemberID)
	if err != nil {
		return err
	}
	st, err := s.load(ctx, tx, m, true, now)
	if err != nil {
		return err
	}
	if a, err = postgres.GetApproval(ctx, tx, id, true); err != nil {
		return err
	}
	if err := decidable(a, checker); err != nil {
		return err
	}
	state, action, pstate := "rejected", auditAdjustRejected, mcv1.AdjustmentState_ADJUSTMENT_STATE_REJECTED
	if req.GetApprove() {
		state, action, pstate = "approved", auditAdjustApproved, mcv1.AdjustmentState_ADJUSTMENT_STATE_APPROVED
	}
	if err := postgres.DecideApproval(ctx, tx, id, state, checker, req.GetNote(), now); err != nil {
		return err
	}
	if err := postgres.InsertOperatorAudit(ctx, tx, operatorAudit(now, checker, action, m, "rpc:"+decideScope+":"+req.GetIdempotencyKey(),
		approvalDetail{ApprovalID: id.String(), Points: a.Points, Reason: a.Reason, Maker: a.Maker, Note: req.GetNote()})); err != nil {
		return err
	}
	if req.GetApprove() {
		// Applied as the maker's adjustment, approved by the checker: its
		// changes and its adjust.applied record name both.
		op := Op{Kind: OpAdjust, At: now, Points: a.Points, Reason: a.Reason, Cause: "approval:" + id.String(), Origin: a.MemberID.String(),
			Actor: a.Maker, Approver: checker, ApprovalID: id.String()}
		fx, err := Engine{P: s.program()}.Apply(st, op)
		if err != nil {
			return fmt.Errorf("apply approved adjustment %s (it stays pending): %w", id, err)
		}
		if err := s.persist(ctx, tx, st, fx, op, mcv1.Channel_CHANNEL_BACKOFFICE, ""); err != nil {
			return err
		}
	}
	resp.State = pstate
	resp.Balance, _, _ = st.Balance(now)
	return nil
}

// decidable refuses a decision by the approval's own maker, and one on an
// approval already decided.
func decidable(a postgres.Approval, checker string) error {
	if a.State != "pending" {
		return fmt.Errorf("adjustment approval %s is already %s (by %s at %s): %w", a.ApprovalID, a.State, a.Checker,
			a.DecidedAt.UTC().Format("2006-01-02T15:04:05Z"), ErrDecided)
	}
	if a.Maker == checker {
		return fmt.Errorf("adjustment approval %s was requested by %s, who may not also decide it: %w", a.ApprovalID, a.Maker, ErrSameOperator)
	}
	return nil
}

// approvalDetail is the detail of an operator audit record of an
// adjustment.
type approvalDetail struct {
	ApprovalID string `json:"approval_id,omitempty"`
	Points     int64  `json:"points"`
	Reason     string `json:"reason"`
	Maker      string `json:"maker,omitempty"`
	Approver   string `json:"approver,omitempty"`
	Note       string `json:"note,omitempty"`
}

// couponDetail is the detail of an operator audit record of an issued
// coupon: its template, its code and the cause the coupon records
// ("issued: " and the operator's reason).
type couponDetail struct {
	Template string `json:"template"`
	Code     string `json:"code"`
	Cause    string `json:"cause"`
}

// operatorAudit is the operator audit record of an action on member.
func operatorAudit(at time.Time, actor, action string, member uuid.UUID, cause string, d any) postgres.OperatorAudit {
	b, _ := json.Marshal(d) // strings and numbers always marshal
	return postgres.OperatorAudit{AuditID: uuid.Must(uuid.NewV7()), At: at, Actor: actor, Action: action, MemberID: member, CauseID: cause, Detail: b}
}

// operatorAudits are the operator audit records of op, an operator's
// action (op.Actor is set) that had the effects fx on member: an
// adjustment's application, or one record per coupon an issue gave the
// member. A coupon a benefit gave on the way (another template, or
// another cause) is the programme's doing, not the operator's.
func operatorAudits(fx *Effects, op Op, member uuid.UUID) []postgres.OperatorAudit {
	if op.Kind != OpIssueCoupon {
		return []postgres.OperatorAudit{operatorAudit(fx.At, op.Actor, auditAdjustApplied, member, op.Cause,
			approvalDetail{ApprovalID: op.ApprovalID, Points: op.Points, Reason: op.Reason, Approver: op.Approver})}
	}
	var out []postgres.OperatorAudit
	for _, c := range fx.Issued {
		if c.Template == op.Template && c.Cause == op.Reason {
			out = append(out, operatorAudit(fx.At, op.Actor, auditCouponIssued, member, op.Cause,
				couponDetail{Template: c.Template, Code: c.Code, Cause: c.Cause}))
		}
	}
	return out
}

// listApprovals lists approvals as req asks.
func (s *Service) listApprovals(ctx context.Context, req *mcv1.ListAdjustmentApprovalsRequest) (*mcv1.ListAdjustmentApprovalsResponse, error) {
	f := postgres.ApprovalFilter{State: stateFromProto(req.GetState()), Limit: int(req.GetPageSize())}
	if f.Limit == 0 {
		f.Limit = 50
	}
	if id := req.GetMemberId(); id != "" {
		m, err := parseMember(id)
		if err != nil {
			return nil, err
		}
		f.Member = m
	}
	if t := req.GetPageToken(); t != "" {
		after, err := uuid.Parse(t)
		if err != nil {
			return nil, fmt.Errorf("page_token %q: %w", t, ErrBadPageToken)
		}
		f.After = after
	}
	rows, next, err := postgres.ListApprovals(ctx, s.pool, f)
	if errors.Is(err, postgres.ErrUnknownPageStart) {
		return nil, fmt.Errorf("page_token %q names no approval: %w", req.GetPageToken(), ErrBadPageToken)
	}
	if err != nil {
		return nil, err
	}
	resp := &mcv1.ListAdjustmentApprovalsResponse{Approvals: make([]*mcv1.AdjustmentApproval, len(rows))}
	for i, a := range rows {
		resp.Approvals[i] = toProtoApproval(a)
	}
	if next != uuid.Nil {
		resp.NextPageToken = next.String()
	}
	return resp, nil
}

func toProtoApproval(a postgres.Approval) *mcv1.AdjustmentApproval {
	out := &mcv1.AdjustmentApproval{ApprovalId: a.ApprovalID.String(), MemberId: a.MemberID.String(), Points: a.Points, Reason: a.Reason,
		Maker: a.Maker, RequestedAt: timestamppb.New(a.RequestedAt), State: stateToProto(a.State), Checker: a.Checker, Note: a.Note}
	if !a.DecidedAt.IsZero() {
		out.DecidedAt = timestamppb.New(a.DecidedAt)
	}
	return out
}

func stateToProto(s string) mcv1.AdjustmentState {
	return mcv1.AdjustmentState(mcv1.AdjustmentState_value["ADJUSTMENT_STATE_"+strings.ToUpper(s)])
}

// stateFromProto is the stored state of s; "" (every state) for
// UNSPECIFIED.
func stateFromProto(s mcv1.AdjustmentState) string {
	if _, ok := mcv1.AdjustmentState_name[int32(s)]; !ok || s == mcv1.AdjustmentState_ADJUSTMENT_STATE_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(s.String(), "ADJUSTMENT_STATE_"))
}
