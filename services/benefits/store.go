package benefits

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/postgres"
)

// persistedState is the loyalty_state row: the small per-member state.
type persistedState struct {
	Last       time.Time        `json:"last"`
	Evaluated  Month            `json:"evaluated"`
	Tier       string           `json:"tier"`
	TierSince  time.Time        `json:"tier_since"`
	GraceEnd   Month            `json:"grace_end,omitempty"`
	StreakDay  int              `json:"streak_day,omitempty"`
	StreakLen  int64            `json:"streak_len,omitempty"`
	BonusMonth []Month          `json:"bonus_months,omitempty"`
	Referrals  map[string]int64 `json:"referrals,omitempty"`
}

// errBudgetRace means a concurrent operation used the last of a campaign
// budget or coupon limit this one counted on: the operation is retried.
var errBudgetRace = errors.New("campaign budget or coupon limit changed concurrently")

// load reads what the engine needs of member at t (locking the member row
// when the operation will write):
// its state, open lots, the last 13 months of activity, this day's and
// month's campaign usage, campaign budgets, its coupons, grants, birth date
// and labels, and the named orders with their lots.
// errMerged means an unlocked load found the member merged into another.
var errMerged = errors.New("member was merged")

func (s *Service) load(ctx context.Context, tx postgres.Batcher, member uuid.UUID, lock bool, t time.Time, orderIDs ...string) (*State, error) {
	return s.loadAs(ctx, tx, member, lock, t, lotsRead{each: true}, orderIDs...)
}

// loadAs is load with the open lots read as lots says, for an operation
// at t (lotsReadOf) that may say how many points are available: unless
// each, one by one only those expiring by t (or the member's last
// operation), those pending at t that become available by then, and those
// the operation may spend, and the others as two sums: pending
// throughout, and settled.
func (s *Service) loadAs(ctx context.Context, tx postgres.Batcher, member uuid.UUID, lock bool, t time.Time, lots lotsRead, orderIDs ...string) (*State, error) {
	p := s.program()
	cur := monthOf(t, p.Location)
	l := postgres.LoyaltyLoad{Member: member, Lock: lock, ActivityFrom: int(cur) - 13,
		Periods: []string{fmt.Sprintf("d:%d", dayOf(t, p.Location)), fmt.Sprintf("m:%d", int(cur))}, Orders: orderIDs, Labels: p.labels}
	if !lots.each && !s.eachLot {
		l.SettledAfter, l.AvailableFrom, l.SpendUpTo = t, t, lots.spend
	}
	rows, err := postgres.LoadLoyalty(ctx, tx, l)
	if err != nil {
		return nil, err
	}
	if !rows.Found {
		return nil, fmt.Errorf("member %s: %w", member, postgres.ErrNotFound)
	}
	if rows.Merged && !lock {
		return nil, errMerged
	}
	st, err := toState(member, rows, p)
	if err != nil {
		return nil, err
	}
	// An event older than the member's last operation is processed at that
	// time (§1): its campaign caps are that day's and month's.
	if processedAtLast(p, st.Last, t) {
		usage, err := postgres.CampaignUsage(ctx, tx, member, periodsOf(p, st.Last))
		if err != nil {
			return nil, err
		}
		st.Usage = map[string]int64{}
		for _, u := range usage {
			st.Usage[u.Campaign+"|"+u.Period] = u.Points
		}
	}
	return st, nil
}

// settledLotID and pendingLotID are the ids of the lots standing for a
// member's settled lots (LoyaltyRows.Settled) and the lots pending past
// the operations' time (LoyaltyRows.Pending): not 0, which is a new lot's.
const (
	settledLotID = -1
	pendingLotID = -2
)

// toState is the engine's view of a member's stored loyalty rows.
func toState(member uuid.UUID, rows postgres.LoyaltyRows, p *Program) (*State, error) {
	st := NewState(member.String())
	st.ChangeSeq, st.BirthDate, st.Labels = rows.ChangeSeq, rows.BirthDate, rows.Labels
	for _, r := range rows.Lots {
		st.Lots = append(st.Lots, &Lot{ID: r.ID, Earned: r.Earned, Remaining: r.Remaining, EarnedAt: r.EarnedAt, AvailableAt: r.AvailableAt,
			ExpiresAt: r.ExpiresAt, OrderID: r.OrderID, Origin: r.Origin.String(), TxnKind: r.Kind})
	}
	if rows.Settled > 0 {
		st.Lots = append(st.Lots, &Lot{ID: settledLotID, Earned: rows.Settled, Remaining: rows.Settled,
			ExpiresAt: NeverExpires, Origin: member.String(), TxnKind: "settled", settled: true})
	}
	if rows.Pending > 0 {
		st.Lots = append(st.Lots, &Lot{ID: pendingLotID, Earned: rows.Pending, Remaining: rows.Pending, AvailableAt: NeverExpires,
			ExpiresAt: NeverExpires, Origin: member.String(), TxnKind: "settled", settled: true})
	}
	for _, a := range rows.Activity {
		st.Months[Month(a.Month)] = &Activity{Spend: a.Spend, Points: a.Points, Orders: a.Orders}
	}
	for _, u := range rows.Usage {
		st.Usage[u.Campaign+"|"+u.Period] = u.Points
	}
	maps.Copy(st.Budgets, rows.Budgets)
	maps.Copy(st.TplIssued, rows.TplIssued)
	for _, r := range rows.Coupons {
		st.Coupons = append(st.Coupons, &Coupon{Code: r.Code, Template: r.Template, State: r.State, ValidFrom: r.ValidFrom, ValidUntil: r.ValidUntil,
			OrderID: r.OrderID, Origin: r.Origin.String(), IssuedAt: r.IssuedAt, Cause: r.Cause})
		st.Issued[r.Template]++
	}
	for _, g := range rows.Grants {
		st.Grants[g.Benefit] = &Grant{GrantedAt: g.GrantedAt, Cause: g.Cause, PendingRevoke: g.PendingRevoke, stored: true, storedPending: g.PendingRevoke}
	}
	for _, r := range rows.OrderRows {
		o := &Order{OrderID: r.OrderID, MemberID: r.Member.String(), Origin: r.Origin.String(), At: r.At, Total: r.Total, Paid: r.Paid,
			CouponDiscount: r.CouponDiscount, Redeemed: r.Redeemed, Earned: r.Earned, Refunded: r.Refunded, Reversed: r.Reversed,
			Restored: r.Restored, Unrecovered: r.Unrecovered, FullyRefunded: r.FullyRefunded, CouponIDs: r.CouponCodes, Cause: r.Cause}
		_ = json.Unmarshal(r.Extras, &o.Extras)
		for _, l := range st.Lots {
			if l.ID == r.LotID && r.LotID != 0 {
				o.Lot = l
			}
		}
		// An order held by another member (before a merge) is not this
		// member's to change, and its id is not this member's to use.
		if o.MemberID == st.MemberID {
			st.Orders[o.OrderID] = o
		} else {
			st.takeOrder(o.OrderID)
		}
	}
	st.takenInBatch = rows.TakenOrders
	if rows.State != nil {
		var ps persistedState
		if err := json.Unmarshal(rows.State, &ps); err != nil {
			return nil, fmt.Errorf("decode loyalty state: %w", err)
		}
		st.Last, st.Evaluated, st.Tier, st.TierSince, st.GraceEnd = ps.Last, ps.Evaluated, ps.Tier, ps.TierSince, ps.GraceEnd
		st.StreakDay, st.StreakLen = ps.StreakDay, ps.StreakLen
		for _, m := range ps.BonusMonth {
			st.BonusMonth[m] = true
		}
		for k, v := range ps.Referrals {
			n, _ := strconv.Atoi(k)
			st.Referrals[Month(n)] = v
		}
	}
	if st.Tier == "" {
		st.Tier = p.Tiers[0].ID
	}
	return st, nil
}

// persist writes what op changed — ledger, lots, account, activity, usage,
// budgets, coupons, grants, tier history, orders, the state row and one
// outbox change per effect — in one round trip. The member's row is locked
// (load), so the outbox sequence read there is the member's.
func (s *Service) persist(ctx context.Context, tx pgx.Tx, st *State, fx *Effects, op Op, ch mcv1.Channel, store string) error {
	w := postgres.NewLoyaltyWrites(s.program().Version)
	if err := s.stageOp(ctx, w, st, fx, op, ch, store, st.Lots); err != nil {
		return err
	}
	s.stageState(w, st)
	return s.flush(ctx, tx, w)
}

// flush sends the writes in one round trip; a shared limit found used up
// meanwhile is errBudgetRace (the caller retries with fresh counts).
func (s *Service) flush(ctx context.Context, tx pgx.Tx, w *postgres.LoyaltyWrites) error {
	return s.send(ctx, tx, &pgx.Batch{}, w)
}

// send sends b with w's writes queued after what b holds, as flush does.
func (s *Service) send(ctx context.Context, tx pgx.Tx, b *pgx.Batch, w *postgres.LoyaltyWrites) error {
	raced := false
	w.Queue(b, func() { raced = true })
	if b.Len() == 0 {
		return nil
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("persist loyalty effects: %w", err)
	}
	if raced {
		return errBudgetRace
	}
	return nil
}

// stageOp adds what one operation wrote on its own to w: its ledger
// transactions, the lots it created (tied to its transactions), grants,
// revocations and tier moves, and its changes (numbered under the member's
// row lock). What accumulates in the state over several operations is
// staged once, by stageState. lots holds the lots the operation created
// (among others: those already tied to a transaction are left alone).
// ctx carries the trace the changes are stamped with.
func (s *Service) stageOp(ctx context.Context, w *postgres.LoyaltyWrites, st *State, fx *Effects, op Op, ch mcv1.Channel, store string,
	lots []*Lot) error {
	if fx.Duplicate || fx.NoOp {
		return nil
	}
	p := s.program()
	member := uuid.MustParse(st.MemberID)
	origin := uuid.MustParse(op.Origin)
	var txnIDs []uuid.UUID
	acct := w.Accounts[member]
	if acct == nil {
		acct = &postgres.AccountDelta{}
		w.Accounts[member] = acct
	}
	for i, l := range fx.Ledger {
		id := uuid.Must(uuid.NewV7())
		txnIDs = append(txnIDs, id)
		w.Ledger = append(w.Ledger, postgres.LedgerTransaction{
			TransactionID: id, MemberID: member, OriginMemberID: origin, Kind: l.Kind, Reason: l.Reason,
			CauseID: fmt.Sprintf("%s#%d", op.Cause, i), CreatedAt: fx.At,
			Entries: []postgres.LedgerEntry{
				{Account: postgres.MemberAccount(member), MemberID: &member, Delta: l.Delta},
				{Account: l.Counter, Delta: -l.Delta},
			},
		})
		if l.Kind == "earn" {
			acct.Earned += l.Delta
		}
		acct.Delta += l.Delta
	}
	txnOf := func(kind string) uuid.UUID {
		for i, l := range fx.Ledger {
			if l.Kind == kind {
				return txnIDs[i]
			}
		}
		if len(txnIDs) > 0 {
			return txnIDs[0]
		}
		return uuid.Nil
	}
	// A lot created by this operation belongs to its transaction.
	for _, l := range lots {
		if l.ID == 0 && l.txn == uuid.Nil {
			l.txn = txnOf(l.TxnKind)
		}
	}
	for _, id := range fx.Granted {
		if g := st.Grants[id]; g != nil { // nil: granted and revoked within the operation
			w.Grants = append(w.Grants, postgres.GrantWrite{Member: member, GrantRow: postgres.GrantRow{Benefit: id, GrantedAt: g.GrantedAt, Cause: g.Cause}})
		}
		w.History = append(w.History, postgres.BenefitEvent{Member: member, Benefit: id, Granted: true, At: fx.At, Cause: op.Cause})
	}
	for _, id := range fx.Revoked {
		w.Revokes = append(w.Revokes, postgres.GrantWrite{Member: member, GrantRow: postgres.GrantRow{Benefit: id}})
		w.History = append(w.History, postgres.BenefitEvent{Member: member, Benefit: id, Granted: false, At: fx.At, Cause: op.Cause})
	}
	for _, m := range fx.TierMoves {
		w.TierMoves = append(w.TierMoves, postgres.TierMove{Member: member, From: m.From, To: m.To, At: m.At, Reason: m.Reason, Cause: op.Cause})
	}
	if op.BirthDate != "" {
		w.BirthDates[member] = op.BirthDate
	}
	for _, c := range fx.Changes(p) {
		c.CauseId, c.Channel, c.StoreId, c.Actor, c.Approver = op.Cause, ch, store, op.Actor, op.Approver
		st.ChangeSeq++
		row, err := s.changes.Row(ctx, member, st.ChangeSeq, c)
		if err != nil {
			return err
		}
		w.Outbox = append(w.Outbox, row)
	}
	if op.Actor != "" {
		// An operator's action, audited with its effect.
		w.Audit = append(w.Audit, operatorAudits(fx, op, member)...)
	}
	st.staged = true
	return nil
}

// stageState adds to w what the operations staged on st left in it: lots,
// tier inputs, campaign usage and shared counters, coupons, orders, held
// benefits awaiting revocation and the state row.
func (s *Service) stageState(w *postgres.LoyaltyWrites, st *State) {
	if !st.staged {
		return
	}
	p := s.program()
	member := uuid.MustParse(st.MemberID)
	for _, l := range st.Lots {
		if !l.dirty || l.settled { // (applyMember refuses a changed settled sum)
			continue
		}
		l.dirty = false
		if l.ID == 0 {
			w.NewLots = append(w.NewLots, postgres.NewLot{Member: member, LotRow: postgres.LotRow{Earned: l.Earned, Remaining: l.Remaining,
				EarnedAt: l.EarnedAt, AvailableAt: l.AvailableAt, ExpiresAt: l.ExpiresAt, OrderID: l.OrderID, Origin: uuid.MustParse(l.Origin),
				Kind: l.TxnKind, TransactionID: l.txn}})
			continue
		}
		w.Remaining[l.ID] = l.Remaining
	}
	for o, months := range st.MonthDelta {
		for m, a := range months {
			w.Activity = append(w.Activity, postgres.ActivityRow{Member: member, Origin: uuid.MustParse(o), Month: int(m),
				Spend: a.Spend, Points: a.Points, Orders: a.Orders})
		}
	}
	for k, v := range st.UsageDelta {
		c, period, _ := strings.Cut(k, "|")
		w.Usage = append(w.Usage, postgres.UsageWrite{Member: member, UsageRow: postgres.UsageRow{Campaign: c, Period: period, Points: v}})
	}
	for c, v := range st.BudgetDelta {
		sp := w.Budgets[c]
		if sp == nil {
			sp = &postgres.Spend{}
			for _, camp := range p.Campaigns {
				if camp.ID == c {
					sp.Limit = camp.Budget
				}
			}
			w.Budgets[c] = sp
		}
		sp.Amount += v
	}
	for tpl, n := range st.TplDelta {
		sp := w.Templates[tpl]
		if sp == nil {
			sp = &postgres.Spend{}
			if t := p.Coupons[tpl]; t != nil {
				sp.Limit = int64(t.TotalLimit)
			}
			w.Templates[tpl] = sp
		}
		sp.Amount += int64(n)
	}
	for _, c := range st.Coupons {
		if !c.dirty {
			continue
		}
		if c.isNew {
			w.NewCoupons = append(w.NewCoupons, postgres.CouponWrite{Member: member, CouponRow: postgres.CouponRow{Code: c.Code, Template: c.Template,
				State: c.State, ValidFrom: c.ValidFrom, ValidUntil: c.ValidUntil, OrderID: c.OrderID, Origin: uuid.MustParse(c.Origin),
				IssuedAt: c.IssuedAt, Cause: c.Cause}})
		} else {
			w.CouponStates = append(w.CouponStates, postgres.CouponRow{Code: c.Code, State: c.State, OrderID: c.OrderID})
		}
		c.dirty, c.isNew = false, false
	}
	// Only what changed: every batch held every grant of its members, and
	// wrote each back unchanged.
	for id, g := range st.Grants {
		if g.stored && g.PendingRevoke == g.storedPending {
			continue
		}
		w.PendingRevokes = append(w.PendingRevokes, postgres.PendingRevoke{Member: member, Benefit: id, Pending: g.PendingRevoke})
		g.stored, g.storedPending = true, g.PendingRevoke
	}
	for _, o := range st.Orders {
		if !o.dirty {
			continue
		}
		row := postgres.OrderRow{OrderID: o.OrderID, Member: member, Origin: uuid.MustParse(o.Origin), At: o.At, Total: o.Total, Paid: o.Paid,
			CouponDiscount: o.CouponDiscount, Redeemed: o.Redeemed, Earned: o.Earned, CouponCodes: o.CouponIDs, Cause: o.Cause,
			Refunded: o.Refunded, Reversed: o.Reversed, Restored: o.Restored, Unrecovered: o.Unrecovered, FullyRefunded: o.FullyRefunded}
		row.Extras, _ = json.Marshal(o.Extras)
		if row.CouponCodes == nil {
			row.CouponCodes = []string{}
		}
		if o.isNew {
			w.NewOrders = append(w.NewOrders, row)
		}
		if !o.isNew || o.Refunded != 0 || o.Reversed != 0 || o.Restored != 0 || o.Unrecovered != 0 || o.FullyRefunded {
			// Refunded since (a purchase and its refund in one batch
			// update the order they insert).
			w.Refunds = append(w.Refunds, row)
		}
		o.dirty, o.isNew = false, false
	}
	ps := persistedState{Last: st.Last, Evaluated: st.Evaluated, Tier: st.Tier, TierSince: st.TierSince, GraceEnd: st.GraceEnd,
		StreakDay: st.StreakDay, StreakLen: st.StreakLen, Referrals: map[string]int64{}}
	for m := range st.BonusMonth {
		ps.BonusMonth = append(ps.BonusMonth, m)
	}
	for m, n := range st.Referrals {
		ps.Referrals[strconv.Itoa(int(m))] = n
	}
	w.States[member], _ = json.Marshal(ps)
	st.staged = false
}
