package benefitstest

// This file parses program.yaml into the oracle's own types. It is part of
// the test oracle (see oracle.go), not production code.

import (
	"bytes"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"cel.dev/cel-go/cel"
	"go.yaml.in/yaml/v3"

	// The programme names an IANA zone; do not depend on the host's tzdata.
	_ "time/tzdata"
)

// decimalText is a YAML scalar kept as text so that it can be converted to
// basis points exactly (no float parsing anywhere).
type decimalText struct {
	set  bool
	text string
}

func (d *decimalText) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: expected a decimal number", n.Line)
	}
	d.set, d.text = true, strings.TrimSpace(n.Value)
	return nil
}

var decimalRE = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?$`)

// scaled returns the decimal multiplied by scale, which must be an integer.
func (d decimalText) scaled(scale int64, what string) (int64, error) {
	if !decimalRE.MatchString(d.text) {
		return 0, fmt.Errorf("%s: %q is not a non-negative decimal", what, d.text)
	}
	r, ok := new(big.Rat).SetString(d.text)
	if !ok {
		return 0, fmt.Errorf("%s: %q is not a decimal", what, d.text)
	}
	r.Mul(r, new(big.Rat).SetInt64(scale))
	if !r.IsInt() || !r.Num().IsInt64() {
		return 0, fmt.Errorf("%s: %q has too many decimal places", what, d.text)
	}
	return r.Num().Int64(), nil
}

type rawProgram struct {
	Version        string `yaml:"version"`
	Currency       string `yaml:"currency"`
	Timezone       string `yaml:"timezone"`
	Rounding       string `yaml:"rounding"`
	ReturnWindow   string `yaml:"return_window"`
	PointsLifetime string `yaml:"points_lifetime"`
	Base           struct {
		PointsPerUnit decimalText `yaml:"points_per_unit"`
	} `yaml:"base"`
	Redemption struct {
		PointsPerUnit int64       `yaml:"points_per_unit"`
		MaxShare      decimalText `yaml:"max_share"`
	} `yaml:"redemption"`
	Tiers struct {
		GraceMonths *int      `yaml:"grace_months"`
		Ladder      []rawTier `yaml:"ladder"`
	} `yaml:"tiers"`
	Stacking  string        `yaml:"stacking"`
	Campaigns []rawCampaign `yaml:"campaigns"`
	Coupons   []rawCoupon   `yaml:"coupons"`
	Benefits  []rawBenefit  `yaml:"benefits"`
	// Limits (§10) bound what one operation may ask; the oracle's events
	// stay inside them, so it reads them only to accept the document.
	Limits   yaml.Node `yaml:"limits"`
	Missions struct {
		CheckInStreak *struct {
			Days  int   `yaml:"days"`
			Bonus int64 `yaml:"bonus"`
		} `yaml:"check_in_streak"`
		PurchasesInMonth *struct {
			Count int64 `yaml:"count"`
			Bonus int64 `yaml:"bonus"`
		} `yaml:"purchases_in_month"`
		Referral *struct {
			Bonus       int64 `yaml:"bonus"`
			CapPerMonth *int  `yaml:"cap_per_month"`
		} `yaml:"referral"`
	} `yaml:"missions"`
}

type rawTier struct {
	ID         string         `yaml:"id"`
	Name       string         `yaml:"name"`
	Multiplier decimalText    `yaml:"multiplier"`
	Criteria   []rawCriterion `yaml:"criteria"`
}

type rawCriterion struct {
	Spend12m       *int64 `yaml:"spend_12m"`
	Points12m      *int64 `yaml:"points_12m"`
	Orders12m      *int64 `yaml:"orders_12m"`
	EachMonthSpend *struct {
		Months int   `yaml:"months"`
		Min    int64 `yaml:"min"`
	} `yaml:"each_month_spend"`
}

type rawCampaign struct {
	ID                string      `yaml:"id"`
	Name              string      `yaml:"name"`
	From              string      `yaml:"from"`
	Until             string      `yaml:"until"`
	Weekdays          []int       `yaml:"weekdays"`
	Hours             []int       `yaml:"hours"`
	Condition         string      `yaml:"condition"`
	Multiplier        decimalText `yaml:"multiplier"`
	Bonus             int64       `yaml:"bonus"`
	CapPerMemberDay   *int64      `yaml:"cap_per_member_day"`
	CapPerMemberMonth *int64      `yaml:"cap_per_member_month"`
	Budget            *int64      `yaml:"budget"`
	Coupon            string      `yaml:"coupon"`
}

type rawCoupon struct {
	ID             string      `yaml:"id"`
	Name           string      `yaml:"name"`
	AmountOff      *int64      `yaml:"amount_off"`
	PercentOff     decimalText `yaml:"percent_off"`
	MinSpend       int64       `yaml:"min_spend"`
	ValidDays      int         `yaml:"valid_days"`
	PerMemberLimit *int        `yaml:"per_member_limit"`
	Claimable      bool        `yaml:"claimable"`
	TotalLimit     *int        `yaml:"total_limit"`
}

type rawBenefit struct {
	ID            string   `yaml:"id"`
	Name          string   `yaml:"name"`
	MinTier       string   `yaml:"min_tier"`
	Labels        []string `yaml:"labels"`
	BirthdayMonth bool     `yaml:"birthday_month"`
	Revoke        string   `yaml:"revoke"`
	Coupon        string   `yaml:"coupon"`
}

// program is the parsed programme.
type program struct {
	version      string
	currency     string
	loc          *time.Location
	rounding     string
	returnWindow time.Duration
	lifetime     time.Duration
	rateBP       int64
	redeemPPU    int64
	maxShareBP   int64
	graceMonths  int
	tiers        []tier
	tierIndex    map[string]int
	bestOf       bool
	campaigns    []*campaign
	coupons      map[string]*couponTemplate
	benefits     []benefit

	streak   *streakMission
	monthly  *monthlyMission
	referral *referralMission
}

type tier struct {
	id, name     string
	multiplierBP int64
	criteria     []criterion
}

type criterion struct {
	kind      string // spend_12m | points_12m | orders_12m | each_month_spend
	threshold int64
	months    int
}

type campaign struct {
	id, name         string
	from, until      *time.Time
	weekdays, hours  map[int]bool
	condition        string
	prg              cel.Program
	multiplierBP     int64 // 0 when unset
	bonus            int64
	capDay, capMonth *int64
	budget           *int64
	coupon           string
	index            int
}

type couponTemplate struct {
	id             string
	amountOff      *int64
	percentBP      int64
	minSpend       int64
	validDays      int
	perMemberLimit *int
	totalLimit     *int
}

type benefit struct {
	id            string
	minTier       int // -1 when unset
	labels        []string
	birthdayMonth bool
	revoke        string // immediate | end_of_month | never
	coupon        string
}

type streakMission struct {
	days  int
	bonus int64
}

type monthlyMission struct {
	count int64
	bonus int64
}

type referralMission struct {
	bonus int64
	cap   *int
}

func parseDuration(s string, def time.Duration) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return def, nil
	}
	if strings.HasSuffix(s, "d") {
		n, err := strconv.ParseInt(strings.TrimSuffix(s, "d"), 10, 64)
		if err != nil {
			return 0, err
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	return time.ParseDuration(s)
}

func parseInstant(s string, loc *time.Location) (*time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return &t, nil
	}
	for _, layout := range []string{"2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, loc); err == nil {
			return &t, nil
		}
	}
	return nil, fmt.Errorf("%q is not a timestamp", s)
}

// choice returns v, or the first of allowed (the default) when v is empty;
// ok says whether v is empty or one of allowed.
func choice(v string, allowed ...string) (_ string, ok bool) {
	if v == "" {
		return allowed[0], true
	}
	return v, slices.Contains(allowed, v)
}

// intSet returns vs as a set (nil when vs is empty), each in 0..highest.
func intSet(vs []int, highest int, what string) (map[int]bool, error) {
	if len(vs) == 0 {
		return nil, nil
	}
	set := map[int]bool{}
	for _, v := range vs {
		if v < 0 || v > highest {
			return nil, fmt.Errorf("programme: %s %d", what, v)
		}
		set[v] = true
	}
	return set, nil
}

func newCELEnv() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("basket", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("member", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("channel", cel.StringType),
		cel.Variable("store", cel.StringType),
		cel.Variable("hour", cel.IntType),
		cel.Variable("weekday", cel.IntType),
		cel.Variable("day_of_month", cel.IntType),
	)
}

func parseProgram(src []byte) (*program, error) {
	var raw rawProgram
	dec := yaml.NewDecoder(bytes.NewReader(src))
	dec.KnownFields(true)
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("programme: %w", err)
	}
	p := &program{
		version:   raw.Version,
		currency:  raw.Currency,
		tierIndex: map[string]int{},
		coupons:   map[string]*couponTemplate{},
	}
	if p.currency == "" {
		p.currency = "CNY"
	}
	tz := raw.Timezone
	if tz == "" {
		tz = "Asia/Shanghai"
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		return nil, fmt.Errorf("programme: timezone: %w", err)
	}
	p.loc = loc
	var ok bool
	if p.rounding, ok = choice(raw.Rounding, "floor", "round", "ceil"); !ok {
		return nil, fmt.Errorf("programme: rounding %q", raw.Rounding)
	}
	if p.returnWindow, err = parseDuration(raw.ReturnWindow, 168*time.Hour); err != nil {
		return nil, fmt.Errorf("programme: return_window: %w", err)
	}
	if p.lifetime, err = parseDuration(raw.PointsLifetime, 8760*time.Hour); err != nil {
		return nil, fmt.Errorf("programme: points_lifetime: %w", err)
	}
	if p.returnWindow < 0 || p.lifetime <= 0 {
		return nil, errors.New("programme: return_window must be >= 0 and points_lifetime > 0")
	}
	p.rateBP = 10000
	if raw.Base.PointsPerUnit.set {
		if p.rateBP, err = raw.Base.PointsPerUnit.scaled(10000, "base.points_per_unit"); err != nil {
			return nil, err
		}
	}
	p.redeemPPU = raw.Redemption.PointsPerUnit
	if p.redeemPPU <= 0 {
		return nil, errors.New("programme: redemption.points_per_unit must be > 0")
	}
	if !raw.Redemption.MaxShare.set {
		return nil, errors.New("programme: redemption.max_share is required")
	}
	if p.maxShareBP, err = raw.Redemption.MaxShare.scaled(10000, "redemption.max_share"); err != nil {
		return nil, err
	}
	p.graceMonths = 1
	if raw.Tiers.GraceMonths != nil {
		p.graceMonths = *raw.Tiers.GraceMonths
		if p.graceMonths < 0 {
			return nil, errors.New("programme: tiers.grace_months < 0")
		}
	}
	if len(raw.Tiers.Ladder) == 0 {
		return nil, errors.New("programme: tiers.ladder is empty")
	}
	for i, rt := range raw.Tiers.Ladder {
		if rt.ID == "" {
			return nil, fmt.Errorf("programme: tier %d has no id", i)
		}
		if _, dup := p.tierIndex[rt.ID]; dup {
			return nil, fmt.Errorf("programme: duplicate tier %q", rt.ID)
		}
		t := tier{id: rt.ID, name: rt.Name, multiplierBP: 10000}
		if rt.Multiplier.set {
			if t.multiplierBP, err = rt.Multiplier.scaled(10000, "tier "+rt.ID+" multiplier"); err != nil {
				return nil, err
			}
		}
		for _, rc := range rt.Criteria {
			var cs []criterion
			if rc.Spend12m != nil {
				cs = append(cs, criterion{kind: "spend_12m", threshold: *rc.Spend12m})
			}
			if rc.Points12m != nil {
				cs = append(cs, criterion{kind: "points_12m", threshold: *rc.Points12m})
			}
			if rc.Orders12m != nil {
				cs = append(cs, criterion{kind: "orders_12m", threshold: *rc.Orders12m})
			}
			if rc.EachMonthSpend != nil {
				if rc.EachMonthSpend.Months <= 0 {
					return nil, fmt.Errorf("programme: tier %s: each_month_spend.months must be > 0", rt.ID)
				}
				cs = append(cs, criterion{kind: "each_month_spend", threshold: rc.EachMonthSpend.Min, months: rc.EachMonthSpend.Months})
			}
			if len(cs) != 1 {
				return nil, fmt.Errorf("programme: tier %s: each criterion must have exactly one key", rt.ID)
			}
			t.criteria = append(t.criteria, cs[0])
		}
		p.tierIndex[rt.ID] = i
		p.tiers = append(p.tiers, t)
	}
	stacking, ok := choice(raw.Stacking, "additive", "best_of")
	if !ok {
		return nil, fmt.Errorf("programme: stacking %q", raw.Stacking)
	}
	p.bestOf = stacking == "best_of"

	for _, rc := range raw.Coupons {
		if rc.ID == "" {
			return nil, errors.New("programme: coupon template without id")
		}
		if _, dup := p.coupons[rc.ID]; dup {
			return nil, fmt.Errorf("programme: duplicate coupon template %q", rc.ID)
		}
		ct := &couponTemplate{id: rc.ID, amountOff: rc.AmountOff, minSpend: rc.MinSpend, validDays: rc.ValidDays,
			perMemberLimit: rc.PerMemberLimit, totalLimit: rc.TotalLimit}
		if rc.PercentOff.set {
			if ct.percentBP, err = rc.PercentOff.scaled(100, "coupon "+rc.ID+" percent_off"); err != nil {
				return nil, err
			}
		}
		if (ct.amountOff != nil) == rc.PercentOff.set {
			return nil, fmt.Errorf("programme: coupon %s needs exactly one of amount_off and percent_off", rc.ID)
		}
		if ct.amountOff != nil && *ct.amountOff < 0 {
			return nil, fmt.Errorf("programme: coupon %s: negative amount_off", rc.ID)
		}
		p.coupons[rc.ID] = ct
	}

	env, err := newCELEnv()
	if err != nil {
		return nil, fmt.Errorf("programme: CEL environment: %w", err)
	}
	seen := map[string]bool{}
	for i, rc := range raw.Campaigns {
		if rc.ID == "" || seen[rc.ID] {
			return nil, fmt.Errorf("programme: campaign %d: missing or duplicate id %q", i, rc.ID)
		}
		seen[rc.ID] = true
		c := &campaign{id: rc.ID, name: rc.Name, bonus: rc.Bonus, capDay: rc.CapPerMemberDay,
			capMonth: rc.CapPerMemberMonth, budget: rc.Budget, coupon: rc.Coupon, index: i, condition: rc.Condition}
		if c.from, err = parseInstant(rc.From, loc); err != nil {
			return nil, fmt.Errorf("programme: campaign %s: from: %w", rc.ID, err)
		}
		if c.until, err = parseInstant(rc.Until, loc); err != nil {
			return nil, fmt.Errorf("programme: campaign %s: until: %w", rc.ID, err)
		}
		if c.weekdays, err = intSet(rc.Weekdays, 6, "campaign "+rc.ID+": weekday"); err != nil {
			return nil, err
		}
		if c.hours, err = intSet(rc.Hours, 23, "campaign "+rc.ID+": hour"); err != nil {
			return nil, err
		}
		if rc.Multiplier.set {
			if c.multiplierBP, err = rc.Multiplier.scaled(10000, "campaign "+rc.ID+" multiplier"); err != nil {
				return nil, err
			}
			if c.multiplierBP < 10000 {
				return nil, fmt.Errorf("programme: campaign %s: multiplier below 1", rc.ID)
			}
		}
		if c.bonus < 0 {
			return nil, fmt.Errorf("programme: campaign %s: negative bonus", rc.ID)
		}
		if c.coupon != "" && p.coupons[c.coupon] == nil {
			return nil, fmt.Errorf("programme: campaign %s: unknown coupon template %q", rc.ID, c.coupon)
		}
		if strings.TrimSpace(rc.Condition) != "" {
			ast, iss := env.Compile(rc.Condition)
			if iss != nil && iss.Err() != nil {
				return nil, fmt.Errorf("programme: campaign %s: condition: %w", rc.ID, iss.Err())
			}
			out := ast.OutputType()
			if !out.IsExactType(cel.BoolType) && !out.IsExactType(cel.DynType) {
				return nil, fmt.Errorf("programme: campaign %s: condition has type %s, not bool", rc.ID, out)
			}
			if c.prg, err = env.Program(ast); err != nil {
				return nil, fmt.Errorf("programme: campaign %s: condition: %w", rc.ID, err)
			}
		}
		p.campaigns = append(p.campaigns, c)
	}

	seen = map[string]bool{}
	for _, rb := range raw.Benefits {
		if rb.ID == "" || seen[rb.ID] {
			return nil, fmt.Errorf("programme: benefit: missing or duplicate id %q", rb.ID)
		}
		seen[rb.ID] = true
		b := benefit{id: rb.ID, minTier: -1, labels: rb.Labels, birthdayMonth: rb.BirthdayMonth, coupon: rb.Coupon}
		for _, l := range rb.Labels {
			if err := checkLabel(rb.ID, l); err != nil {
				return nil, err
			}
		}
		if rb.MinTier != "" {
			idx, ok := p.tierIndex[rb.MinTier]
			if !ok {
				return nil, fmt.Errorf("programme: benefit %s: unknown tier %q", rb.ID, rb.MinTier)
			}
			b.minTier = idx
		}
		if b.revoke, ok = choice(rb.Revoke, "immediate", "end_of_month", "never"); !ok {
			return nil, fmt.Errorf("programme: benefit %s: revoke %q", rb.ID, rb.Revoke)
		}
		if b.coupon != "" && p.coupons[b.coupon] == nil {
			return nil, fmt.Errorf("programme: benefit %s: unknown coupon template %q", rb.ID, b.coupon)
		}
		p.benefits = append(p.benefits, b)
	}

	if m := raw.Missions.CheckInStreak; m != nil {
		if m.Days <= 0 {
			return nil, errors.New("programme: missions.check_in_streak.days must be > 0")
		}
		p.streak = &streakMission{days: m.Days, bonus: m.Bonus}
	}
	if m := raw.Missions.PurchasesInMonth; m != nil {
		p.monthly = &monthlyMission{count: m.Count, bonus: m.Bonus}
	}
	if m := raw.Missions.Referral; m != nil {
		p.referral = &referralMission{bonus: m.Bonus, cap: m.CapPerMonth}
	}
	return p, nil
}

// namedLabels returns the labels the benefits name, sorted, once each.
func (p *program) namedLabels() []string {
	var out []string
	for _, b := range p.benefits {
		out = append(out, b.labels...)
	}
	sort.Strings(out)
	return slices.Compact(out)
}
