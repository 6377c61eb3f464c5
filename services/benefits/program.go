package benefits

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strings"
	"time"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/types"
	"go.yaml.in/yaml/v3"

	"github.com/membercenter/membercenter/pipeline/plausible"
	"github.com/membercenter/membercenter/storage/postgres"
)

//go:embed program.yaml
var defaultProgram []byte

// DefaultProgramSource returns the embedded default programme.
func DefaultProgramSource() []byte { return append([]byte(nil), defaultProgram...) }

// Program is a loaded, validated loyalty programme (docs/benefits.md).
type Program struct {
	Version        string
	Currency       string
	Location       *time.Location
	Rounding       string
	ReturnWindow   time.Duration
	PointsLifetime time.Duration
	RateBP         int64 // base points per currency unit, in basis points
	RedeemPerUnit  int64 // points per currency unit of redemption value
	RedeemMaxBP    int64 // share of a basket points may pay, in basis points
	Tiers          []Tier
	GraceMonths    int
	BestOf         bool
	Campaigns      []*Campaign
	Coupons        map[string]*CouponTemplate
	CouponOrder    []string
	Benefits       []*BenefitDef
	Missions       Missions
	Limits         Limits
	Source         []byte

	// labels is what of a member's labels the programme reads: the
	// labels its benefits name, or every one when a campaign's condition
	// may read member.labels (the zero value, as a Program not parsed).
	labels postgres.LabelsRead
}

// Limits are the programme's plausibility bounds: what a till, a channel
// back end or an operator may ask of it in one operation. Beyond them a
// request is refused (InvalidArgument naming the field) and an event is
// dead-lettered, so no value a typo or an attack produces can mint points
// by the trillion or overflow the engine's arithmetic.
type Limits struct {
	// MaxAmount is the largest amount of one transaction, refund or basket
	// line, in minor units of the programme's currency.
	MaxAmount int64
	// MaxAdjustPoints bounds one Adjust either way; MaxRedeemPoints one
	// redemption (Redeem, or points paying part of a basket).
	MaxAdjustPoints int64
	MaxRedeemPoints int64
	// AdjustApprovalPoints is the size of an adjustment (either way) above
	// which it is not applied but waits for a second operator's approval
	// (DecideAdjustment); 0 turns approvals off.
	AdjustApprovalPoints int64
	// Window is how far from now an event or basket time may be.
	Window plausible.Window
}

// Ceilings of the limits a programme may set: with them (and the rate and
// multiplier ceilings) the points of one operation stay below
// maxPointsPerOperation, so no sum the engine or the ledger keeps can
// overflow 64 bits in any plausible lifetime of a member.
const (
	maxAmountCeiling      = 1_000_000_000_000 // ¥10 billion in fen
	maxPointsCeiling      = 1_000_000_000_000
	maxPointsPerOperation = 1_000_000_000_000
	maxRateBP             = 1000 * 10000 // 1,000 points per currency unit
	maxMultiplierBP       = 100 * 10000  // ×100
)

// Default limits, for programmes that set none (and versions stored before
// limits existed).
var defaultLimits = Limits{
	MaxAmount:            100_000_000, // ¥1,000,000 per transaction
	MaxAdjustPoints:      10_000_000,
	MaxRedeemPoints:      10_000_000,
	AdjustApprovalPoints: 10_000,
	Window:               plausible.DefaultWindow,
}

// Tier is a rung of the ladder.
type Tier struct {
	ID           string
	Name         string
	MultiplierBP int64
	Criteria     []Criterion
}

// Criterion is one way to qualify for a tier; exactly one field is set.
type Criterion struct {
	Spend12m  int64
	Points12m int64
	Orders12m int64
	EachMonth *EachMonth
}

// EachMonth is "each of the last Months complete months had spend ≥ Min".
type EachMonth struct {
	Months int
	Min    int64
}

// Campaign is an earning rule.
type Campaign struct {
	ID           string
	Name         string
	Condition    string
	program      cel.Program
	From, Until  time.Time // zero: unbounded
	Weekdays     map[int]bool
	Hours        map[int]bool
	MultiplierBP int64 // 0: none
	Bonus        int64
	CapDay       int64 // 0: none
	CapMonth     int64
	Budget       int64
	Coupon       string
	// Benefit is a catalogue benefit the campaign grants (until the next
	// month start, unless its own condition holds then).
	Benefit string
}

// CouponTemplate describes coupons.
type CouponTemplate struct {
	ID             string
	Name           string
	AmountOff      int64
	PercentOffBP   int64
	MinSpend       int64
	ValidDays      int
	PerMemberLimit int
	Claimable      bool
	TotalLimit     int // 0: none
}

// BenefitDef is a catalogue entry.
type BenefitDef struct {
	ID            string
	Name          string
	MinTier       string
	Labels        []string
	BirthdayMonth bool
	Revoke        string // immediate | end_of_month | never
	Coupon        string
}

// Missions are the programme's missions; zero values disable one.
type Missions struct {
	StreakDays, StreakBonus         int64
	PurchasesCount, PurchasesBonus  int64
	ReferralBonus, ReferralCapMonth int64
}

type yamlProgram struct {
	Version        string `yaml:"version"`
	Currency       string `yaml:"currency"`
	Timezone       string `yaml:"timezone"`
	Rounding       string `yaml:"rounding"`
	ReturnWindow   string `yaml:"return_window"`
	PointsLifetime string `yaml:"points_lifetime"`
	Base           struct {
		PointsPerUnit float64 `yaml:"points_per_unit"`
	} `yaml:"base"`
	Redemption struct {
		PointsPerUnit int64   `yaml:"points_per_unit"`
		MaxShare      float64 `yaml:"max_share"`
	} `yaml:"redemption"`
	Tiers struct {
		GraceMonths int `yaml:"grace_months"`
		Ladder      []struct {
			ID         string  `yaml:"id"`
			Name       string  `yaml:"name"`
			Multiplier float64 `yaml:"multiplier"`
			Criteria   []struct {
				Spend12m       *int64 `yaml:"spend_12m"`
				Points12m      *int64 `yaml:"points_12m"`
				Orders12m      *int64 `yaml:"orders_12m"`
				EachMonthSpend *struct {
					Months int   `yaml:"months"`
					Min    int64 `yaml:"min"`
				} `yaml:"each_month_spend"`
			} `yaml:"criteria"`
		} `yaml:"ladder"`
	} `yaml:"tiers"`
	Stacking  string `yaml:"stacking"`
	Campaigns []struct {
		ID              string  `yaml:"id"`
		Name            string  `yaml:"name"`
		Condition       string  `yaml:"condition"`
		From            string  `yaml:"from"`
		Until           string  `yaml:"until"`
		Weekdays        []int   `yaml:"weekdays"`
		Hours           []int   `yaml:"hours"`
		Multiplier      float64 `yaml:"multiplier"`
		Bonus           int64   `yaml:"bonus"`
		CapPerMemberDay int64   `yaml:"cap_per_member_day"`
		CapPerMemberMon int64   `yaml:"cap_per_member_month"`
		Budget          int64   `yaml:"budget"`
		Coupon          string  `yaml:"coupon"`
		Benefit         string  `yaml:"benefit"`
	} `yaml:"campaigns"`
	Coupons []struct {
		ID             string  `yaml:"id"`
		Name           string  `yaml:"name"`
		AmountOff      int64   `yaml:"amount_off"`
		PercentOff     float64 `yaml:"percent_off"`
		MinSpend       int64   `yaml:"min_spend"`
		ValidDays      int     `yaml:"valid_days"`
		PerMemberLimit int     `yaml:"per_member_limit"`
		Claimable      bool    `yaml:"claimable"`
		TotalLimit     int     `yaml:"total_limit"`
	} `yaml:"coupons"`
	Benefits []struct {
		ID            string   `yaml:"id"`
		Name          string   `yaml:"name"`
		MinTier       string   `yaml:"min_tier"`
		Labels        []string `yaml:"labels"`
		BirthdayMonth bool     `yaml:"birthday_month"`
		Revoke        string   `yaml:"revoke"`
		Coupon        string   `yaml:"coupon"`
	} `yaml:"benefits"`
	Limits struct {
		// Per currency; the programme's own must be there.
		MaxAmount            map[string]int64 `yaml:"max_amount"`
		MaxAdjustPoints      *int64           `yaml:"max_adjust_points"`
		MaxRedeemPoints      *int64           `yaml:"max_redeem_points"`
		AdjustApprovalPoints *int64           `yaml:"adjust_approval_points"` // 0 (approvals off) differs from absent
		EventWindow          struct {
			Past   string `yaml:"past"`
			Future string `yaml:"future"`
		} `yaml:"event_window"`
	} `yaml:"limits"`
	Missions struct {
		CheckInStreak *struct {
			Days  int64 `yaml:"days"`
			Bonus int64 `yaml:"bonus"`
		} `yaml:"check_in_streak"`
		PurchasesInMonth *struct {
			Count int64 `yaml:"count"`
			Bonus int64 `yaml:"bonus"`
		} `yaml:"purchases_in_month"`
		Referral *struct {
			Bonus       int64 `yaml:"bonus"`
			CapPerMonth int64 `yaml:"cap_per_month"`
		} `yaml:"referral"`
	} `yaml:"missions"`
}

// bp converts a decimal with at most four places to basis points.
func bp(v, most float64, what string) (int64, error) {
	// NaN fails every comparison, so the range is checked as what v must
	// be; above most, v × 10,000 could overflow int64 (a tier multiplier
	// of 1e18 made Quote answer -92233720368547758 points for ¥100).
	if !(v >= 0) {
		return 0, fmt.Errorf("%s: %v must be a non-negative decimal with at most four places", what, v)
	}
	if v > most {
		return 0, fmt.Errorf("%s: at most %v", what, most)
	}
	b := v * 10000
	r := math.Round(b)
	if math.Abs(b-r) > 1e-6 {
		return 0, fmt.Errorf("%s: %v must be a non-negative decimal with at most four places", what, v)
	}
	return int64(r), nil
}

// ParseProgram validates a programme document; every problem is reported,
// naming its place.
func ParseProgram(src []byte) (*Program, error) {
	var y yamlProgram
	dec := yaml.NewDecoder(bytes.NewReader(src))
	dec.KnownFields(true)
	if err := dec.Decode(&y); err != nil {
		return nil, fmt.Errorf("parse programme: %w", err)
	}
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	p := &Program{Version: y.Version, Currency: y.Currency, Rounding: y.Rounding, GraceMonths: y.Tiers.GraceMonths,
		Coupons: map[string]*CouponTemplate{}, Source: append([]byte(nil), src...)}
	if p.Version == "" {
		add(errors.New("version is required"))
	}
	if len(p.Currency) != 3 || strings.ToUpper(p.Currency) != p.Currency {
		add(fmt.Errorf("currency %q must be an ISO 4217 code", p.Currency))
	}
	if y.Timezone == "" {
		y.Timezone = "Asia/Shanghai"
	}
	loc, err := time.LoadLocation(y.Timezone)
	if err != nil {
		add(fmt.Errorf("timezone: %w", err))
		loc = time.UTC
	}
	p.Location = loc
	switch p.Rounding {
	case "":
		p.Rounding = "floor"
	case "floor", "round", "ceil":
	default:
		add(fmt.Errorf("rounding %q: choose floor, round or ceil", p.Rounding))
	}
	dur := func(s, what string, def time.Duration) time.Duration {
		if s == "" {
			return def
		}
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			add(fmt.Errorf("%s %q: not a non-negative duration", what, s))
		}
		return d
	}
	p.ReturnWindow = dur(y.ReturnWindow, "return_window", 7*24*time.Hour)
	p.PointsLifetime = dur(y.PointsLifetime, "points_lifetime", 365*24*time.Hour)
	if p.PointsLifetime <= 0 {
		add(errors.New("points_lifetime must be positive"))
	}
	var e error
	p.RateBP, e = bp(y.Base.PointsPerUnit, maxRateBP/10000, "base.points_per_unit")
	add(e)
	p.RedeemPerUnit = y.Redemption.PointsPerUnit
	if p.RedeemPerUnit <= 0 {
		add(errors.New("redemption.points_per_unit must be positive"))
	}
	p.RedeemMaxBP, e = bp(y.Redemption.MaxShare, 1, "redemption.max_share")
	add(e)
	switch y.Stacking {
	case "", "additive":
	case "best_of":
		p.BestOf = true
	default:
		add(fmt.Errorf("stacking %q: choose additive or best_of", y.Stacking))
	}
	if p.GraceMonths < 0 {
		add(errors.New("tiers.grace_months must not be negative"))
	}
	tierIDs := map[string]bool{}
	for i, t := range y.Tiers.Ladder {
		where := fmt.Sprintf("tiers.ladder[%d] (%s)", i, t.ID)
		if t.ID == "" || tierIDs[t.ID] {
			add(fmt.Errorf("%s: id missing or repeated", where))
		}
		tierIDs[t.ID] = true
		m, err := bp(t.Multiplier, maxMultiplierBP/10000, where+".multiplier")
		add(err)
		tier := Tier{ID: t.ID, Name: t.Name, MultiplierBP: m}
		for j, c := range t.Criteria {
			set := 0
			var cr Criterion
			if c.Spend12m != nil {
				set++
				cr.Spend12m = *c.Spend12m
			}
			if c.Points12m != nil {
				set++
				cr.Points12m = *c.Points12m
			}
			if c.Orders12m != nil {
				set++
				cr.Orders12m = *c.Orders12m
			}
			if c.EachMonthSpend != nil {
				set++
				cr.EachMonth = &EachMonth{Months: c.EachMonthSpend.Months, Min: c.EachMonthSpend.Min}
				if cr.EachMonth.Months < 1 || cr.EachMonth.Months > 12 {
					add(fmt.Errorf("%s.criteria[%d]: each_month_spend.months must be 1..12", where, j))
				}
			}
			if set != 1 {
				add(fmt.Errorf("%s.criteria[%d]: set exactly one of spend_12m, points_12m, orders_12m, each_month_spend", where, j))
			}
			tier.Criteria = append(tier.Criteria, cr)
		}
		if i == 0 && len(tier.Criteria) > 0 {
			add(fmt.Errorf("%s: the base tier has no criteria", where))
		}
		p.Tiers = append(p.Tiers, tier)
	}
	if len(p.Tiers) == 0 {
		add(errors.New("tiers.ladder needs at least the base tier"))
	}
	for i, c := range y.Coupons {
		where := fmt.Sprintf("coupons[%d] (%s)", i, c.ID)
		if c.ID == "" || p.Coupons[c.ID] != nil {
			add(fmt.Errorf("%s: id missing or repeated", where))
			continue
		}
		// The API names a template in 64 bytes at most, and a coupon's
		// code (template, member id, number) must fit a basket's 200.
		if len(c.ID) > 64 {
			add(fmt.Errorf("%s: id longer than 64 bytes", where))
			continue
		}
		var pct int64
		if !(c.PercentOff >= 0 && c.PercentOff <= 100) {
			add(fmt.Errorf("%s.percent_off: %v must be from 0 to 100", where, c.PercentOff))
		} else {
			pct, err = bp(c.PercentOff/100, 1, where+".percent_off")
			add(err)
		}
		t := &CouponTemplate{ID: c.ID, Name: c.Name, AmountOff: c.AmountOff, PercentOffBP: pct, MinSpend: c.MinSpend,
			ValidDays: c.ValidDays, PerMemberLimit: c.PerMemberLimit, Claimable: c.Claimable, TotalLimit: c.TotalLimit}
		if (t.AmountOff > 0) == (t.PercentOffBP > 0) {
			add(fmt.Errorf("%s: set exactly one of amount_off and percent_off", where))
		}
		if t.ValidDays < 1 || t.PerMemberLimit < 1 {
			add(fmt.Errorf("%s: valid_days and per_member_limit must be at least 1", where))
		}
		p.Coupons[c.ID] = t
		p.CouponOrder = append(p.CouponOrder, c.ID)
	}
	env, err := celEnv()
	if err != nil {
		return nil, err
	}
	campIDs := map[string]bool{}
	labelsAll := false
	for i, c := range y.Campaigns {
		where := fmt.Sprintf("campaigns[%d] (%s)", i, c.ID)
		if c.ID == "" || campIDs[c.ID] {
			add(fmt.Errorf("%s: id missing or repeated", where))
		}
		campIDs[c.ID] = true
		camp := &Campaign{ID: c.ID, Name: c.Name, Condition: c.Condition, Bonus: c.Bonus, CapDay: c.CapPerMemberDay,
			CapMonth: c.CapPerMemberMon, Budget: c.Budget, Coupon: c.Coupon, Benefit: c.Benefit}
		if c.Multiplier != 0 {
			camp.MultiplierBP, err = bp(c.Multiplier, maxMultiplierBP/10000, where+".multiplier")
			add(err)
			if err == nil && camp.MultiplierBP < 10000 {
				add(fmt.Errorf("%s.multiplier must be at least 1", where))
			}
		}
		if c.Multiplier == 0 && camp.Bonus <= 0 {
			add(fmt.Errorf("%s: set a multiplier or a bonus", where))
		}
		for _, d := range []struct {
			s   string
			dst *time.Time
			f   string
		}{{c.From, &camp.From, "from"}, {c.Until, &camp.Until, "until"}} {
			if d.s == "" {
				continue
			}
			t, err := time.ParseInLocation("2006-01-02", d.s, loc)
			if err != nil {
				if t, err = time.Parse(time.RFC3339, d.s); err != nil {
					add(fmt.Errorf("%s.%s %q: want YYYY-MM-DD or RFC 3339", where, d.f, d.s))
				}
			}
			*d.dst = t
		}
		camp.Weekdays = intSet(c.Weekdays, 6, where+".weekdays", add)
		camp.Hours = intSet(c.Hours, 23, where+".hours", add)
		if c.Coupon != "" && p.Coupons[c.Coupon] == nil {
			add(fmt.Errorf("%s.coupon: unknown template %q", where, c.Coupon))
		}
		if c.Condition != "" {
			ast, iss := env.Compile(c.Condition)
			if iss.Err() != nil {
				add(fmt.Errorf("%s.condition: %w", where, iss.Err()))
			} else if ot := ast.OutputType(); ot != cel.BoolType && ot != cel.DynType {
				add(fmt.Errorf("%s.condition: must be a bool expression, is %s", where, ast.OutputType()))
			} else if camp.program, err = env.Program(ast); err != nil {
				add(fmt.Errorf("%s.condition: %w", where, err))
			} else if readsLabels(ast) {
				labelsAll = true
			}
		}
		p.Campaigns = append(p.Campaigns, camp)
	}
	for i, b := range y.Benefits {
		where := fmt.Sprintf("benefits[%d] (%s)", i, b.ID)
		def := &BenefitDef{ID: b.ID, Name: b.Name, MinTier: b.MinTier, Labels: b.Labels, BirthdayMonth: b.BirthdayMonth, Revoke: b.Revoke, Coupon: b.Coupon}
		if def.Revoke == "" {
			def.Revoke = "immediate"
		}
		if def.Revoke != "immediate" && def.Revoke != "end_of_month" && def.Revoke != "never" {
			add(fmt.Errorf("%s.revoke %q: choose immediate, end_of_month or never", where, def.Revoke))
		}
		if def.MinTier != "" && !tierIDs[def.MinTier] {
			add(fmt.Errorf("%s.min_tier: unknown tier %q", where, def.MinTier))
		}
		if def.Coupon != "" && p.Coupons[def.Coupon] == nil {
			add(fmt.Errorf("%s.coupon: unknown template %q", where, def.Coupon))
		}
		if def.MinTier == "" && len(def.Labels) == 0 && !def.BirthdayMonth {
			add(fmt.Errorf("%s: needs a condition (min_tier, labels or birthday_month)", where))
		}
		p.Benefits = append(p.Benefits, def)
	}
	for i, c := range p.Campaigns {
		if c.Benefit == "" {
			continue
		}
		found := false
		for _, b := range p.Benefits {
			found = found || b.ID == c.Benefit
		}
		if !found {
			add(fmt.Errorf("campaigns[%d] (%s).benefit: unknown benefit %q", i, c.ID, c.Benefit))
		}
	}
	if m := y.Missions.CheckInStreak; m != nil {
		p.Missions.StreakDays, p.Missions.StreakBonus = m.Days, m.Bonus
	}
	if m := y.Missions.PurchasesInMonth; m != nil {
		p.Missions.PurchasesCount, p.Missions.PurchasesBonus = m.Count, m.Bonus
	}
	if m := y.Missions.Referral; m != nil {
		p.Missions.ReferralBonus, p.Missions.ReferralCapMonth = m.Bonus, m.CapPerMonth
	}
	p.Limits = parseLimits(y, p, add)
	if !labelsAll {
		p.labels = postgres.LabelsRead{Named: true}
		for _, b := range p.Benefits {
			for _, l := range b.Labels {
				if !slices.Contains(p.labels.Only, l) {
					p.labels.Only = append(p.labels.Only, l)
				}
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

// parseLimits reads and checks the limits, and that the programme's rates,
// multipliers and bonuses keep one operation's points within
// maxPointsPerOperation at the largest amount it accepts.
func parseLimits(y yamlProgram, p *Program, add func(error)) Limits {
	l := defaultLimits
	yl := y.Limits
	if yl.MaxAmount != nil {
		for c := range yl.MaxAmount {
			if len(c) != 3 || strings.ToUpper(c) != c {
				add(fmt.Errorf("limits.max_amount: %q is not an ISO 4217 code", c))
			}
		}
		v, ok := yl.MaxAmount[p.Currency]
		if !ok {
			add(fmt.Errorf("limits.max_amount has no maximum for the programme's currency %s", p.Currency))
		}
		l.MaxAmount = v
	}
	if yl.MaxAdjustPoints != nil {
		l.MaxAdjustPoints = *yl.MaxAdjustPoints
	}
	if yl.MaxRedeemPoints != nil {
		l.MaxRedeemPoints = *yl.MaxRedeemPoints
	}
	if yl.AdjustApprovalPoints != nil {
		l.AdjustApprovalPoints = *yl.AdjustApprovalPoints
	}
	if v := l.AdjustApprovalPoints; v < 0 || v > maxPointsCeiling {
		add(fmt.Errorf("limits.adjust_approval_points %d: must be 0 (no approvals) to %d", v, maxPointsCeiling))
	}
	for _, c := range []struct {
		what    string
		v, ceil int64
	}{
		{"limits.max_amount." + p.Currency, l.MaxAmount, maxAmountCeiling},
		{"limits.max_adjust_points", l.MaxAdjustPoints, maxPointsCeiling},
		{"limits.max_redeem_points", l.MaxRedeemPoints, maxPointsCeiling},
	} {
		if c.v < 1 || c.v > c.ceil {
			add(fmt.Errorf("%s %d: must be 1..%d", c.what, c.v, c.ceil))
		}
	}
	for _, d := range []struct {
		s, what string
		dst     *time.Duration
	}{{yl.EventWindow.Past, "limits.event_window.past", &l.Window.Past}, {yl.EventWindow.Future, "limits.event_window.future", &l.Window.Future}} {
		if d.s == "" {
			continue
		}
		v, err := time.ParseDuration(d.s)
		if err != nil {
			add(fmt.Errorf("%s %q: not a duration", d.what, d.s))
			continue
		}
		*d.dst = v
	}
	if err := l.Window.Validate(); err != nil {
		add(fmt.Errorf("limits.event_window: %w", err))
	}
	// The most one purchase can earn: base at the highest tier multiplier,
	// every campaign's extra and bonus, every mission bonus.
	most := new(big.Int)
	var topTier int64
	for _, t := range p.Tiers {
		topTier = max(topTier, t.MultiplierBP)
	}
	// As the engine computes it: minor units × rate (bp) × multiplier (bp) / 10^10.
	perUnit := func(mult int64) *big.Int {
		n := new(big.Int).Mul(big.NewInt(l.MaxAmount), big.NewInt(p.RateBP))
		n.Mul(n, big.NewInt(mult))
		return n.Quo(n, big.NewInt(1e10))
	}
	most.Add(most, perUnit(topTier))
	for i, c := range p.Campaigns {
		if c.MultiplierBP > 0 {
			most.Add(most, perUnit(c.MultiplierBP-10000))
		}
		if c.Bonus < 0 || c.Bonus > maxPointsCeiling {
			add(fmt.Errorf("campaigns[%d] (%s).bonus: must be 0..%d", i, c.ID, int64(maxPointsCeiling)))
		}
		most.Add(most, big.NewInt(max(c.Bonus, 0)))
	}
	m := p.Missions
	for _, b := range []struct {
		what string
		v    int64
	}{{"missions.check_in_streak.bonus", m.StreakBonus}, {"missions.purchases_in_month.bonus", m.PurchasesBonus}, {"missions.referral.bonus", m.ReferralBonus}} {
		if b.v < 0 || b.v > maxPointsCeiling {
			add(fmt.Errorf("%s: must be 0..%d", b.what, int64(maxPointsCeiling)))
		}
		most.Add(most, big.NewInt(max(b.v, 0)))
	}
	if most.Cmp(big.NewInt(maxPointsPerOperation)) > 0 {
		add(fmt.Errorf("limits.max_amount.%s %d: a purchase of that amount could earn %s points, more than %d; lower the maximum or the rates",
			p.Currency, l.MaxAmount, most, int64(maxPointsPerOperation)))
	}
	return l
}

func celEnv() (*cel.Env, error) {
	env, err := cel.NewEnv(
		cel.Variable("basket", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("member", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("channel", cel.StringType),
		cel.Variable("store", cel.StringType),
		cel.Variable("hour", cel.IntType),
		cel.Variable("weekday", cel.IntType),
		cel.Variable("day_of_month", cel.IntType),
	)
	if err != nil {
		return nil, fmt.Errorf("campaign condition environment: %w", err)
	}
	return env, nil
}

// LabelsRead is what the programme reads of a member's labels (see
// Program.labels).
func (p *Program) LabelsRead() postgres.LabelsRead { return p.labels }

// readsLabels says whether a checked condition may read member.labels: it
// names the field, or uses member otherwise than by a field of another
// name (member["tier"] counts as a field). Used any other way (the whole
// map, a key computed, a comprehension over its keys), member may yield
// its labels, and the condition is taken to read them.
func readsLabels(a *cel.Ast) bool {
	uses, fields := 0, 0
	isMember := func(e celast.Expr) bool {
		return e.Kind() == celast.IdentKind && e.AsIdent() == "member"
	}
	celast.PostOrderVisit(a.NativeRep().Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		switch e.Kind() {
		case celast.IdentKind:
			if isMember(e) {
				uses++
			}
		case celast.SelectKind:
			if sel := e.AsSelect(); isMember(sel.Operand()) && sel.FieldName() != "labels" {
				fields++
			}
		case celast.CallKind:
			c := e.AsCall()
			if fn := c.FunctionName(); (fn != operators.Index && fn != operators.OptIndex) || len(c.Args()) != 2 || !isMember(c.Args()[0]) {
				return
			}
			if k := c.Args()[1]; k.Kind() == celast.LiteralKind {
				if s, ok := k.AsLiteral().(types.String); ok && s != "labels" {
					fields++
				}
			}
		}
	}))
	return uses != fields
}

// tierIndex returns the position of a tier on the ladder (0 when unknown).
func (p *Program) tierIndex(id string) int {
	for i, t := range p.Tiers {
		if t.ID == id {
			return i
		}
	}
	return 0
}

// intSet is vals as a set (nil when empty), each of which must be 0..most;
// what is not is added as a problem of field.
func intSet(vals []int, most int, field string, add func(error)) map[int]bool {
	if len(vals) == 0 {
		return nil
	}
	set := map[int]bool{}
	for _, v := range vals {
		if v < 0 || v > most {
			add(fmt.Errorf("%s: %d is not 0..%d", field, v, most))
		}
		set[v] = true
	}
	return set
}
