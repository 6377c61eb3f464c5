package benefits

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/services/auth"
	"github.com/membercenter/membercenter/services/facts"
)

// ErrInvalid is wrapped by requests the programme cannot take as given
// (InvalidArgument): an unknown currency, a basket time in the future.
var ErrInvalid = errors.New("invalid request")

// Server is the gRPC BenefitsService.
type Server struct {
	mcv1.UnimplementedBenefitsServiceServer
	svc *Service
}

// NewServer returns the gRPC adapter of svc.
func NewServer(svc *Service) *Server { return &Server{svc: svc} }

// callerChannel is the channel the changes of a request carry: the
// authenticated client's own, else the one the request names.
func callerChannel(ctx context.Context, named mcv1.Channel) mcv1.Channel {
	if c := auth.ChannelOf(ctx); c != mcv1.Channel_CHANNEL_UNSPECIFIED {
		return c
	}
	return named
}

func parseMember(id string) (uuid.UUID, error) {
	m, err := uuid.Parse(id)
	if err != nil {
		return uuid.Nil, fmt.Errorf("member_id %q: %w", id, ErrInvalid)
	}
	return m, nil
}

// read runs fn on a member's state, as of now, in a read-only transaction.
func (s *Service) read(ctx context.Context, member uuid.UUID, at time.Time, fn func(st *State) error, orderIDs ...string) error {
	return s.readAs(ctx, member, at, lotsRead{each: true}, fn, orderIDs...)
}

// readAs is read with the lots read as loadAs reads them.
func (s *Service) readAs(ctx context.Context, member uuid.UUID, at time.Time, lots lotsRead, fn func(st *State) error, orderIDs ...string) error {
	// One round trip for a member that was not merged; the statements of
	// the batch run in one implicit transaction.
	st, err := s.loadAs(ctx, s.pool, member, false, at, lots, orderIDs...)
	if errors.Is(err, errMerged) {
		var m uuid.UUID
		if m, err = postgres.CanonicalMember(ctx, s.pool, member); err == nil {
			st, err = s.loadAs(ctx, s.pool, m, false, at, lots, orderIDs...)
		}
	}
	if err != nil {
		return err
	}
	return fn(st)
}

// readMember runs fn on the state, as of at, of the member id names.
func (s *Server) readMember(ctx context.Context, id string, at time.Time, fn func(st *State) error) error {
	member, err := parseMember(id)
	if err != nil {
		return err
	}
	return s.svc.read(ctx, member, at, fn)
}

func (s *Service) basketOp(b *mcv1.Basket) (Op, error) {
	p := s.program()
	now := s.now()
	if err := p.checkMoney("basket.total", b.GetTotal(), true); err != nil {
		return Op{}, err
	}
	at := now
	if b.GetAt() != nil {
		if err := p.checkTime("basket.at", b.GetAt(), now, false); err != nil {
			return Op{}, err
		}
		at = b.GetAt().AsTime()
	}
	if err := p.checkItems("basket.items", b.GetItems()); err != nil {
		return Op{}, err
	}
	if err := p.checkRedeem("basket.redeem_points", b.GetRedeemPoints()); err != nil {
		return Op{}, err
	}
	return Op{Kind: OpPurchase, At: at, OrderID: b.GetOrderId(), Total: b.GetTotal().GetAmountMinor(), Items: toItems(b.GetItems()),
		CouponCodes: b.GetCouponCodes(), RedeemPoints: b.GetRedeemPoints(), Channel: facts.ChannelName(b.GetChannel()), Store: b.GetStoreId()}, nil
}

func (s *Service) money(v int64) *mcv1.Money {
	return &mcv1.Money{Currency: s.program().Currency, AmountMinor: v}
}

func (s *Service) quoteResponse(st *State, fx *Effects, tierBefore string) *mcv1.QuoteResponse {
	if fx.Duplicate {
		o := fx.Order
		return &mcv1.QuoteResponse{PointsEarned: o.Earned, PointsRedeemed: o.Redeemed,
			RedemptionValue: s.money(o.Redeemed * 100 / s.program().RedeemPerUnit), CouponsApplied: o.CouponIDs,
			AmountDue: s.money(o.Paid), CouponDiscount: s.money(o.CouponDiscount), TierBefore: st.Tier, TierAfter: st.Tier,
			Trace: []*mcv1.RuleTrace{{RuleId: "order", Explanation: "order " + o.OrderID + " was committed before; this is its result"}}}
	}
	// Every movement the purchase causes: its own points and what missions
	// pay for it are earned; points that expire on the way are traced.
	resp := &mcv1.QuoteResponse{PointsEarned: fx.Earned + fx.MissionBonus, PointsRedeemed: fx.Redeemed, RedemptionValue: s.money(fx.RedemptionValue),
		CouponsApplied: fx.CouponsUsed, AmountDue: s.money(fx.Paid), Trace: fx.Trace, CouponDiscount: s.money(fx.CouponDiscount),
		TierBefore: tierBefore, TierAfter: st.Tier}
	for _, l := range fx.Ledger {
		if l.Kind == "expire" {
			resp.Trace = append(resp.Trace, &mcv1.RuleTrace{RuleId: "expiry", RuleVersion: s.program().Version, Applied: true,
				Points: l.Delta, Explanation: l.Reason})
		}
	}
	for _, c := range fx.Issued {
		resp.CouponsIssued = append(resp.CouponsIssued, c.Code)
	}
	_, resp.AvailableAfter, _ = st.Balance(fx.At)
	status := s.tierStatus(st, fx.At)
	resp.ToReachNext = status.GetToReachNext()
	return resp
}

// Quote implements BenefitsService.Quote: the purchase evaluated on the
// member's current state and thrown away.
func (s *Server) Quote(ctx context.Context, req *mcv1.QuoteRequest) (*mcv1.QuoteResponse, error) {
	member, err := parseMember(req.GetMemberId())
	if err != nil {
		return nil, err
	}
	op, err := s.svc.basketOp(req.GetBasket())
	if err != nil {
		return nil, err
	}
	op.Origin, op.Cause = member.String(), "quote"
	var resp *mcv1.QuoteResponse
	// A purchase changes no existing lot but those it spends from: the
	// lots it cannot tell apart are read as sums.
	err = s.svc.readAs(ctx, member, op.At, lotsReadOf(op), func(st *State) error {
		resp, err = s.svc.quote(st, op)
		return err
	}, op.OrderID)
	return resp, err
}

// quote evaluates the purchase op on st (which it changes).
func (s *Service) quote(st *State, op Op) (*mcv1.QuoteResponse, error) {
	before := st.Tier
	fx, err := Engine{P: s.program()}.Apply(st, op)
	if err != nil {
		return nil, err
	}
	return s.quoteResponse(st, fx, before), nil
}

// keyedRequest is a mutating request: it names a member and carries the
// idempotency key its effect is stored under.
type keyedRequest interface {
	proto.Message
	GetMemberId() string
	GetIdempotencyKey() string
}

// mutateRequest applies the operation opOf makes of req to the member req
// names, once per req's idempotency key (see mutate), with build filling
// the response. The member id is checked before the rest of the request.
func mutateRequest[Q keyedRequest, R proto.Message](ctx context.Context, s *Service, scope string, req Q, ch mcv1.Channel,
	opOf func(Q) (Op, error), build func(st *State, fx *Effects, resp R) error) (R, error) {
	var zero R
	member, err := parseMember(req.GetMemberId())
	if err != nil {
		return zero, err
	}
	op, err := opOf(req)
	if err != nil {
		return zero, err
	}
	return mutate(ctx, s, mutation{scope: scope, key: req.GetIdempotencyKey(), req: req, member: member, op: op, ch: ch, store: op.Store}, build)
}

// Commit implements BenefitsService.Commit.
func (s *Server) Commit(ctx context.Context, req *mcv1.CommitRequest) (*mcv1.CommitResponse, error) {
	return mutateRequest(ctx, s.svc, "benefits.Commit", req, req.GetBasket().GetChannel(),
		func(req *mcv1.CommitRequest) (Op, error) { return s.svc.basketOp(req.GetBasket()) },
		func(st *State, fx *Effects, resp *mcv1.CommitResponse) error {
			before := st.Tier
			for _, m := range fx.TierMoves {
				before = m.From
				break
			}
			resp.TransactionId = req.GetBasket().GetOrderId()
			resp.Result = s.svc.quoteResponse(st, fx, before)
			resp.Balance, _, _ = st.Balance(fx.At)
			return nil
		})
}

// Refund implements BenefitsService.Refund.
func (s *Server) Refund(ctx context.Context, req *mcv1.RefundRequest) (*mcv1.RefundResponse, error) {
	return mutateRequest(ctx, s.svc, "benefits.Refund", req, callerChannel(ctx, req.GetChannel()), s.svc.refundOp,
		func(st *State, fx *Effects, resp *mcv1.RefundResponse) error {
			if fx.NoOp { // the member id was checked before
				return fmt.Errorf("order %s of member %s: %w", req.GetOrderId(), uuid.MustParse(req.GetMemberId()), postgres.ErrNotFound)
			}
			for _, l := range fx.Ledger {
				switch l.Kind {
				case "reverse":
					resp.PointsReversed += -l.Delta
				case "restore":
					resp.PointsRestored += l.Delta
				}
			}
			for _, c := range fx.Coupons {
				if c.State == "restored" {
					resp.CouponsRestored = append(resp.CouponsRestored, c.Code)
				}
			}
			resp.PointsUnrecovered = fx.Order.Unrecovered
			resp.Balance, _, _ = st.Balance(fx.At)
			return nil
		})
}

func (s *Service) refundOp(req *mcv1.RefundRequest) (Op, error) {
	if a := req.GetAmount(); a != nil {
		if err := s.program().checkMoney("amount", a, true); err != nil {
			return Op{}, err
		}
		if a.GetAmountMinor() == 0 {
			return Op{}, fieldErr("amount.amount_minor", "must be positive (leave amount out to refund the rest)")
		}
	}
	return Op{Kind: OpRefund, At: s.now(), OrderID: req.GetOrderId(), Amount: req.GetAmount().GetAmountMinor()}, nil
}

// Redeem implements BenefitsService.Redeem.
func (s *Server) Redeem(ctx context.Context, req *mcv1.RedeemRequest) (*mcv1.RedeemResponse, error) {
	return mutateRequest(ctx, s.svc, "benefits.Redeem", req, callerChannel(ctx, req.GetChannel()), s.svc.redeemOp,
		func(st *State, fx *Effects, resp *mcv1.RedeemResponse) error {
			resp.TransactionId = "rpc:benefits.Redeem:" + req.GetIdempotencyKey()
			resp.Balance, _, _ = st.Balance(fx.At)
			return nil
		})
}

func (s *Service) redeemOp(req *mcv1.RedeemRequest) (Op, error) {
	reason := "catalogue reward " + req.GetRewardId()
	if req.GetRewardId() == "" {
		reason = "points redeemed"
	}
	if err := s.program().checkRedeem("points", req.GetPoints()); err != nil {
		return Op{}, err
	}
	return Op{Kind: OpRedeem, At: s.now(), Points: req.GetPoints(), Reason: reason}, nil
}

// Adjust implements BenefitsService.Adjust: an adjustment within the
// programme's limits.adjust_approval_points is applied at once; a larger
// one waits for a second operator (approvals.go). Either way the operator
// (auth.Actor) is recorded in the operator audit.
func (s *Server) Adjust(ctx context.Context, req *mcv1.AdjustRequest) (*mcv1.AdjustResponse, error) {
	actor := auth.Actor(ctx)
	if s.svc.program().needsApproval(req.GetPoints()) {
		return s.svc.requestApproval(ctx, req, actor)
	}
	return mutateRequest(ctx, s.svc, adjustScope, req, mcv1.Channel_CHANNEL_BACKOFFICE,
		func(req *mcv1.AdjustRequest) (Op, error) {
			op, err := s.svc.adjustOp(req)
			op.Actor = actor
			return op, err
		},
		func(st *State, fx *Effects, resp *mcv1.AdjustResponse) error {
			resp.Balance, _, _ = st.Balance(fx.At)
			return nil
		})
}

// DecideAdjustment implements BenefitsService.DecideAdjustment.
func (s *Server) DecideAdjustment(ctx context.Context, req *mcv1.DecideAdjustmentRequest) (*mcv1.DecideAdjustmentResponse, error) {
	return s.svc.decide(ctx, req, auth.Actor(ctx))
}

// ListAdjustmentApprovals implements BenefitsService.ListAdjustmentApprovals.
func (s *Server) ListAdjustmentApprovals(ctx context.Context, req *mcv1.ListAdjustmentApprovalsRequest) (*mcv1.ListAdjustmentApprovalsResponse, error) {
	return s.svc.listApprovals(ctx, req)
}

func (s *Service) adjustOp(req *mcv1.AdjustRequest) (Op, error) {
	if err := s.program().checkAdjust("points", req.GetPoints()); err != nil {
		return Op{}, err
	}
	return Op{Kind: OpAdjust, At: s.now(), Points: req.GetPoints(), Reason: req.GetReason()}, nil
}

// ClaimCoupon implements BenefitsService.ClaimCoupon.
func (s *Server) ClaimCoupon(ctx context.Context, req *mcv1.ClaimCouponRequest) (*mcv1.ClaimCouponResponse, error) {
	return mutateRequest(ctx, s.svc, "benefits.ClaimCoupon", req, callerChannel(ctx, req.GetChannel()),
		func(req *mcv1.ClaimCouponRequest) (Op, error) {
			// A template the programme does not have is the request's
			// mistake (InvalidArgument, as IssueCoupons says); one it has
			// but does not let members claim is the programme's refusal.
			if s.svc.program().Coupons[req.GetTemplateId()] == nil {
				return Op{}, fmt.Errorf("template_id %q is not in the programme: %w", req.GetTemplateId(), ErrInvalid)
			}
			return Op{Kind: OpIssueCoupon, At: s.svc.now(), Template: req.GetTemplateId(), Claim: true, Reason: "claimed"}, nil
		},
		func(st *State, fx *Effects, resp *mcv1.ClaimCouponResponse) error {
			for _, c := range fx.Issued {
				if c.Template == req.GetTemplateId() {
					resp.Coupon = toProtoCoupon(c, fx.At)
				}
			}
			return nil
		})
}

// IssueCoupons implements BenefitsService.IssueCoupons: one coupon of the
// template per member, each member in its own transaction; a rerun with the
// same key skips members already served. The operator (auth.Actor) is on
// each coupon's change and in the operator audit ("coupon.issued"), written
// in the transaction that issues the coupon, so a rerun writes neither
// again.
func (s *Server) IssueCoupons(ctx context.Context, req *mcv1.IssueCouponsRequest) (*mcv1.IssueCouponsResponse, error) {
	if s.svc.program().Coupons[req.GetTemplateId()] == nil {
		return nil, fmt.Errorf("template_id %q is not in the programme: %w", req.GetTemplateId(), ErrInvalid)
	}
	actor := auth.Actor(ctx)
	resp := &mcv1.IssueCouponsResponse{Skipped: map[string]string{}}
	// A member listed twice (in any case) is one member: issued to once,
	// counted once.
	seen := map[uuid.UUID]bool{}
	for _, id := range req.GetMemberIds() {
		member := uuid.MustParse(id)
		if seen[member] {
			continue
		}
		seen[member] = true
		key := req.GetIdempotencyKey() + ":" + id
		op := Op{Kind: OpIssueCoupon, At: s.svc.now(), Template: req.GetTemplateId(), Reason: "issued: " + req.GetReason(), Actor: actor}
		_, err := mutate(ctx, s.svc, mutation{scope: "benefits.IssueCoupons", key: key,
			req: &mcv1.ClaimCouponRequest{MemberId: id, TemplateId: req.GetTemplateId(), IdempotencyKey: key}, member: member, op: op,
			ch: mcv1.Channel_CHANNEL_BACKOFFICE},
			func(st *State, fx *Effects, resp *mcv1.ClaimCouponResponse) error { return nil })
		var refusal *Refusal
		switch {
		case errors.As(err, &refusal):
			resp.Skipped[id] = refusal.Reason
		case errors.Is(err, postgres.ErrNotFound):
			resp.Skipped[id] = "no such member"
		case err != nil:
			return nil, err
		default:
			resp.Issued++
		}
	}
	return resp, nil
}

// GetBalance implements BenefitsService.GetBalance.
func (s *Server) GetBalance(ctx context.Context, req *mcv1.GetBalanceRequest) (*mcv1.GetBalanceResponse, error) {
	now := s.svc.now()
	resp := &mcv1.GetBalanceResponse{}
	err := s.readMember(ctx, req.GetMemberId(), now, func(st *State) error {
		_, resp.Available, resp.Pending = st.Balance(now)
		resp.MemberId = st.MemberID
		var next time.Time
		for _, l := range st.Lots {
			if l.Remaining == 0 || !now.Before(l.ExpiresAt) {
				continue
			}
			if l.ExpiresAt.Before(now.Add(30 * 24 * time.Hour)) {
				resp.ExpiringSoon += l.Remaining
			}
			if (next.IsZero() || l.ExpiresAt.Before(next)) && !l.ExpiresAt.Equal(NeverExpires) {
				next = l.ExpiresAt
			}
		}
		if !next.IsZero() {
			resp.NextExpiry = timestamppb.New(next)
		}
		a, err := postgres.GetAccount(ctx, s.svc.pool, uuid.MustParse(st.MemberID))
		resp.LifetimeEarned = a.LifetimeEarned
		return err
	})
	return resp, err
}

// ListLedger implements BenefitsService.ListLedger.
func (s *Server) ListLedger(ctx context.Context, req *mcv1.ListLedgerRequest) (*mcv1.ListLedgerResponse, error) {
	id, err := parseMember(req.GetMemberId())
	if err != nil {
		return nil, err
	}
	if id, err = postgres.CanonicalMember(ctx, s.svc.pool, id); err != nil {
		return nil, err
	}
	var before int64
	if t := req.GetPageToken(); t != "" {
		if before, err = strconv.ParseInt(t, 10, 64); err != nil || before <= 0 {
			return nil, fmt.Errorf("page_token %q: %w", t, ErrBadPageToken)
		}
	}
	size := int(req.GetPageSize())
	if size == 0 {
		size = 50
	}
	lines, next, err := postgres.ListLedger(ctx, s.svc.pool, id, before, size)
	if err != nil {
		return nil, err
	}
	resp := &mcv1.ListLedgerResponse{Entries: make([]*mcv1.LedgerEntry, len(lines))}
	for i, l := range lines {
		resp.Entries[i] = toProtoEntry(l)
	}
	if next != 0 {
		resp.NextPageToken = strconv.FormatInt(next, 10)
	}
	return resp, nil
}

// GetTierStatus implements BenefitsService.GetTierStatus.
func (s *Server) GetTierStatus(ctx context.Context, req *mcv1.GetTierStatusRequest) (*mcv1.GetTierStatusResponse, error) {
	now := s.svc.now()
	var resp *mcv1.GetTierStatusResponse
	err := s.readMember(ctx, req.GetMemberId(), now, func(st *State) error {
		// Bring month starts up to date, as the next operation would.
		if _, err := (Engine{P: s.svc.program()}).Apply(st, Op{Kind: OpAdvance, At: now, Cause: "read"}); err != nil {
			return err
		}
		resp = s.svc.tierStatus(st, now)
		return nil
	})
	return resp, err
}

// tierStatus says where the member stands: what the next tier needs now and
// what keeping the current tier needs at the next month start.
func (s *Service) tierStatus(st *State, now time.Time) *mcv1.GetTierStatusResponse {
	p := s.program()
	e := Engine{P: p}
	cur := p.tierIndex(st.Tier)
	m := monthOf(now, p.Location)
	resp := &mcv1.GetTierStatusResponse{Tier: st.Tier}
	if !st.TierSince.IsZero() { // unset for a member who never changed tier (not year 1)
		resp.TierSince = timestamppb.New(st.TierSince)
	}
	if cur+1 < len(p.Tiers) {
		next := p.Tiers[cur+1]
		resp.NextTier = next.ID
		resp.ToReachNext = e.missing(st, next, m)
	}
	if cur > 0 {
		resp.ToKeepCurrent = e.missing(st, p.Tiers[cur], m+1)
	}
	if st.GraceEnd != 0 {
		resp.DowngradeAt = timestamppb.New(st.GraceEnd.start(p.Location))
	}
	return resp
}

// missing lists, per criterion of tier, what is still needed with
// evaluation month m ("met" when it already holds).
func (e Engine) missing(st *State, tier Tier, m Month) []string {
	var out []string
	w := e.window(st, m)
	unit := func(v int64) string { return fmt.Sprintf("%d.%02d", v/100, v%100) }
	for _, c := range tier.Criteria {
		switch {
		case c.EachMonth != nil:
			var short []string
			for k := m - Month(c.EachMonth.Months); k < m; k++ {
				var spend int64
				if a := st.Months[k]; a != nil {
					spend = a.Spend
				}
				if spend < c.EachMonth.Min {
					short = append(short, fmt.Sprintf("%s needs %s more", k, unit(c.EachMonth.Min-spend)))
				}
			}
			if len(short) == 0 {
				out = append(out, fmt.Sprintf("each of the %d months before %s with spend of %s or more: met", c.EachMonth.Months, m, unit(c.EachMonth.Min)))
			} else {
				out = append(out, fmt.Sprintf("each of the %d months before %s with spend of %s or more: %v", c.EachMonth.Months, m, unit(c.EachMonth.Min), short))
			}
		case c.Spend12m > 0:
			out = append(out, need("spend over 12 months", w.Spend, c.Spend12m, unit))
		case c.Points12m > 0:
			out = append(out, need("points earned over 12 months", w.Points, c.Points12m, func(v int64) string { return strconv.FormatInt(v, 10) }))
		case c.Orders12m > 0:
			out = append(out, need("orders over 12 months", w.Orders, c.Orders12m, func(v int64) string { return strconv.FormatInt(v, 10) }))
		}
	}
	return out
}

func need(what string, have, want int64, f func(int64) string) string {
	if have >= want {
		return fmt.Sprintf("%s %s of %s: met", what, f(have), f(want))
	}
	return fmt.Sprintf("%s %s of %s: %s more", what, f(have), f(want), f(want-have))
}

// ListBenefits implements BenefitsService.ListBenefits.
func (s *Server) ListBenefits(ctx context.Context, req *mcv1.ListBenefitsRequest) (*mcv1.ListBenefitsResponse, error) {
	resp := &mcv1.ListBenefitsResponse{}
	err := s.readMember(ctx, req.GetMemberId(), s.svc.now(), func(st *State) error {
		for _, b := range s.svc.program().Benefits {
			if g := st.Grants[b.ID]; g != nil {
				resp.Benefits = append(resp.Benefits, &mcv1.Benefit{BenefitId: b.ID, Name: b.Name, Reason: grantReason(b, g),
					GrantedAt: timestamppb.New(g.GrantedAt)})
			}
		}
		return nil
	})
	return resp, err
}

func grantReason(b *BenefitDef, g *Grant) string {
	r := "granted by " + g.Cause
	if b.MinTier != "" {
		r = "tier " + b.MinTier + " or above; " + r
	}
	if g.PendingRevoke {
		r += "; ends at the next month start"
	}
	return r
}

// ListCoupons implements BenefitsService.ListCoupons.
func (s *Server) ListCoupons(ctx context.Context, req *mcv1.ListCouponsRequest) (*mcv1.ListCouponsResponse, error) {
	now := s.svc.now()
	resp := &mcv1.ListCouponsResponse{}
	err := s.readMember(ctx, req.GetMemberId(), now, func(st *State) error {
		cs := append([]*Coupon(nil), st.Coupons...)
		sort.SliceStable(cs, func(i, j int) bool { return cs[i].IssuedAt.Before(cs[j].IssuedAt) })
		for _, c := range cs {
			resp.Coupons = append(resp.Coupons, toProtoCoupon(c, now))
		}
		return nil
	})
	return resp, err
}

func toProtoCoupon(c *Coupon, now time.Time) *mcv1.Coupon {
	state := couponStateToProto(c)
	if c.State != "used" && !now.Before(c.ValidUntil) {
		state = mcv1.CouponState_COUPON_STATE_EXPIRED
	}
	return &mcv1.Coupon{CouponId: c.Code, TemplateId: c.Template, Code: c.Code, State: state,
		ValidFrom: timestamppb.New(c.ValidFrom), ValidUntil: timestamppb.New(c.ValidUntil)}
}

func toProtoEntry(l postgres.LedgerLine) *mcv1.LedgerEntry {
	return &mcv1.LedgerEntry{
		EntryId:        strconv.FormatInt(l.EntryID, 10),
		TransactionId:  l.TransactionID.String(),
		Kind:           kindToProto(l.Kind),
		Delta:          l.Delta,
		CounterAccount: l.CounterAccount,
		Reason:         l.Reason,
		CauseId:        l.CauseID,
		CreatedAt:      timestamppb.New(l.CreatedAt),
	}
}
