package benefits

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/pipeline/plausible"
)

// FieldError is a value the programme cannot take (docs/benefits.md §10): a
// currency it does not run in, an amount or a number of points beyond its
// limits, a time outside its window. It matches ErrInvalid (InvalidArgument
// over gRPC) and is a data error: a stage dead-letters the event, retrying
// cannot help.
type FieldError struct {
	Field string // path in the request or event, e.g. transaction.total.amount_minor
	msg   string
}

func (e *FieldError) Error() string { return e.msg }

// Is makes a FieldError match ErrInvalid.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

// Permanent marks the error as a data error (see package fault).
func (e *FieldError) Permanent() bool { return true }

func fieldErr(field, format string, a ...any) error {
	return &FieldError{Field: field, msg: field + " " + fmt.Sprintf(format, a...)}
}

// checkMoney checks an amount the programme reads: its currency, and an
// amount from zero to the programme's maximum.
func (p *Program) checkMoney(field string, m *mcv1.Money, required bool) error {
	if m == nil {
		if required {
			return fieldErr(field, "is required")
		}
		return nil
	}
	if c := m.GetCurrency(); c != p.Currency {
		return fieldErr(field+".currency", "%q: the programme runs in %s", c, p.Currency)
	}
	return p.checkAmount(field+".amount_minor", m.GetAmountMinor())
}

func (p *Program) checkAmount(field string, v int64) error {
	switch {
	case v < 0:
		return fieldErr(field, "%d must not be negative", v)
	case v > p.Limits.MaxAmount:
		return fieldErr(field, "%d is above the programme's maximum of %d %s minor units per transaction", v, p.Limits.MaxAmount, p.Currency)
	}
	return nil
}

func (p *Program) checkItems(field string, items []*mcv1.LineItem) error {
	for i, it := range items {
		at := fmt.Sprintf("%s[%d]", field, i)
		if err := p.checkMoney(at+".amount", it.GetAmount(), false); err != nil {
			return err
		}
		if err := p.checkMoney(at+".unit_price", it.GetUnitPrice(), false); err != nil {
			return err
		}
	}
	return nil
}

func (p *Program) checkRedeem(field string, v int64) error {
	switch {
	case v < 0:
		return fieldErr(field, "%d must not be negative", v)
	case v > p.Limits.MaxRedeemPoints:
		return fieldErr(field, "%d is above the programme's maximum of %d points per redemption", v, p.Limits.MaxRedeemPoints)
	}
	return nil
}

// checkBasketRedeem refuses what no member could redeem on a basket of
// total, whatever it holds: points not in whole units of redemption, or
// paying more of the basket than the programme lets points pay (before
// coupons, which only lower what they may pay; the member stage checks
// again after them). v is checked by checkRedeem first.
func (p *Program) checkBasketRedeem(field string, v, total int64) error {
	if v <= 0 {
		return nil
	}
	value, most, whole := p.redeemValue(v, total)
	if !whole {
		return fieldErr(field, "%d: points to redeem must be a multiple of %d", v, p.RedeemPerUnit)
	}
	if value > most {
		return fieldErr(field, "%d points would pay %d, and points may pay at most %d of this basket", v, value, most)
	}
	return nil
}

// redeemValue is what points pay of a basket of which base is left to pay
// (minor units), the most points may pay of it, and whether points are in
// whole units of redemption: the redemption rule ingest checks a basket
// against (checkBasketRedeem) and the member stage applies (Engine).
func (p *Program) redeemValue(points, base int64) (value, most int64, whole bool) {
	return points * 100 / p.RedeemPerUnit, floorMulDiv(base, p.RedeemMaxBP, 10000), points%p.RedeemPerUnit == 0
}

func (p *Program) checkAdjust(field string, v int64) error {
	if v > p.Limits.MaxAdjustPoints || v < -p.Limits.MaxAdjustPoints {
		return fieldErr(field, "%d is beyond the programme's maximum of %d points per adjustment either way", v, p.Limits.MaxAdjustPoints)
	}
	return nil
}

// checkTime checks a timestamp is valid and within the programme's window
// around now.
func (p *Program) checkTime(field string, ts *timestamppb.Timestamp, now time.Time, required bool) error {
	err := p.Limits.Window.Time(field, ts, now, required)
	var fe *plausible.FieldError
	if errors.As(err, &fe) {
		return fieldErr(fe.Field, "%s", fe.Reason)
	}
	return err
}

// checkPayload checks what the benefit stage reads of a transaction or a
// refund (other payloads carry nothing it could refuse).
func (p *Program) checkPayload(tx *mcv1.Transaction, rf *mcv1.Refund) error {
	if tx != nil {
		if err := p.checkMoney("transaction.total", tx.GetTotal(), true); err != nil {
			return err
		}
		if err := p.checkMoney("transaction.discount", tx.GetDiscount(), false); err != nil {
			return err
		}
		if err := p.checkItems("transaction.items", tx.GetItems()); err != nil {
			return err
		}
		if err := p.checkRedeem("transaction.points_redeemed", tx.GetPointsRedeemed()); err != nil {
			return err
		}
		if err := p.checkBasketRedeem("transaction.points_redeemed", tx.GetPointsRedeemed(), tx.GetTotal().GetAmountMinor()); err != nil {
			return err
		}
	}
	if rf != nil {
		if err := p.checkMoney("refund.amount", rf.GetAmount(), true); err != nil {
			return err
		}
		if err := p.checkItems("refund.items", rf.GetItems()); err != nil {
			return err
		}
	}
	return nil
}

// CheckEvent refuses a channel event the benefit stage would refuse, so
// that ingest can dead-letter it before any stage applies it (an event
// reaches every stage or none): a transaction or refund in another
// currency, a negative amount or one above the programme's maximum (total,
// discount, basket lines, refund), more points redeemed than one redemption
// may take, points redeemed not in whole units or paying more of the
// basket than points may, an occurred_at that is not a valid time or lies outside the
// programme's window around now. The error names the field; it matches
// ErrInvalid and is a data error. It reads the programme in force.
func (s *Service) CheckEvent(ev *mcv1.ChannelEvent) error {
	p := s.program()
	if err := p.checkTime("occurred_at", ev.GetOccurredAt(), s.now(), true); err != nil {
		return err
	}
	return p.checkPayload(ev.GetTransaction(), ev.GetRefund())
}

// CheckOrderMoney refuses the money of an imported order as CheckEvent
// refuses a channel's purchase: another currency than the programme's
// (empty: the programme's), a total (paid, after discounts), discount or
// line amount negative or above the programme's maximum. The error names
// the field (total, discount, items[i].amount) and matches ErrInvalid.
func (s *Service) CheckOrderMoney(currency string, total, discount int64, lines []int64) error {
	p := s.program()
	if currency == "" {
		currency = p.Currency
	}
	if currency != p.Currency {
		return fieldErr("currency", "%q: the programme runs in %s", currency, p.Currency)
	}
	if err := p.checkAmount("total", total); err != nil {
		return err
	}
	if err := p.checkAmount("discount", discount); err != nil {
		return err
	}
	for i, a := range lines {
		if err := p.checkAmount(fmt.Sprintf("items[%d].amount", i), a); err != nil {
			return err
		}
	}
	return nil
}

// checkMemberEvent is CheckEvent's check as the benefit stage applies it to
// a resolved event: the same amounts, and a time the engine can hold. The
// window is not applied again: ingest accepted the event when it arrived,
// and a stage that lags behind (or a replay) must still apply it.
func checkMemberEvent(p *Program, ev *mcv1.MemberEvent) error {
	if ts := ev.GetOccurredAt(); ts == nil || ts.CheckValid() != nil {
		return fieldErr("occurred_at", "%v is not a valid timestamp", ts)
	}
	return p.checkPayload(ev.GetTransaction(), ev.GetRefund())
}

// checkOp bounds an operation before the engine computes anything: the
// engine's own guard, whatever adapter built the operation, so that its
// arithmetic cannot overflow (ParseProgram bounds rates and multipliers).
func (e Engine) checkOp(op Op) error {
	p := e.P
	switch op.Kind {
	case OpPurchase:
		if err := p.checkAmount("total", op.Total); err != nil {
			return err
		}
		for i, it := range op.Items {
			if err := p.checkAmount(fmt.Sprintf("items[%d].amount", i), it.Amount); err != nil {
				return err
			}
		}
		return p.checkRedeem("redeem_points", op.RedeemPoints)
	case OpRefund:
		return p.checkAmount("amount", op.Amount)
	case OpRedeem:
		return p.checkRedeem("points", op.Points)
	case OpAdjust:
		return p.checkAdjust("points", op.Points)
	case OpImport:
		return p.checkLegacy(op.Legacy, op.At)
	case OpCatchUp:
		return p.checkDelta(op.Delta, op.At)
	}
	return nil
}
