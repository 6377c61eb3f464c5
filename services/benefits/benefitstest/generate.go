package benefitstest

// Deterministic event streams for comparing the engine with the oracle. Part
// of the test oracle, not production code.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

// Generate returns a deterministic stream of member events in chronological
// order spanning about 14 months from start, over `members` member ids
// (UUID-shaped strings derived from seed), with exactly `events` events:
// purchases (¥5–¥3,000, 1–4 items, some with coffee, all hours and days),
// partial and full refunds of earlier orders (some twice, some refused),
// refunds of unknown orders, purchases redeeming points (sometimes more
// than allowed), purchases using coupons, check-ins with daily streaks,
// referrals (some over the monthly cap), sign-ups with birth dates, and a
// few heavy spenders who reach gold or diamond in the first weeks and then
// stop.
//
// Without an oracle the generator guesses which coupons a member holds (C10
// after baskets of ¥500 or more, BDAY in birthday months, codes per
// CouponCode) and the paid amount of orders; wrong guesses simply produce
// refusals. GenerateWith makes those choices from the oracle's state
// instead, so the two functions produce different streams for one seed.
//
// Days and hours are shaped in UTC+8 (Asia/Shanghai, which has no daylight
// saving time) whatever start's location; every event is in [start,
// start+14 months). Event ids are "evt-<seed hex>-<index>", order ids
// "ord-<seed hex>-<index>", unknown orders "legacy-…". Transaction.discount
// is left unset (the programme computes coupon discounts itself); a full
// refund carries amount 0.
func Generate(seed uint64, members, events int, start time.Time) []*mcv1.MemberEvent {
	evs, err := generate(nil, seed, members, events, start)
	if err != nil {
		panic(err) // cannot happen without an oracle
	}
	return evs
}

// GenerateWith is Generate, but feeds every event to o as it is generated
// and picks coupon codes, redemptions and refund amounts from o's state
// (coupons the member really holds, points really available, amounts
// really left to refund, with a share deliberately invalid so that refusals
// happen). On return o has applied the whole stream. The error is the
// first error Apply returned.
//
// When o's programme has benefits that name labels (LabelProgramme), the
// stream also carries what makes those labels change: share bursts,
// buyers who stop after the first weeks and buyers who come back after
// more than a year (see labelTraffic); otherwise it is the stream it always
// was for the seed.
func GenerateWith(o *Oracle, seed uint64, members, events int, start time.Time) ([]*mcv1.MemberEvent, error) {
	return generate(o, seed, members, events, start)
}

// labelBenefits are the benefits LabelProgramme adds: each follows labels
// the events of GenerateWith make change, alone or with a tier, with each
// revocation policy but never, one issuing a coupon the stream then uses.
const labelBenefits = `  - {id: sharer_perk,      name: Sharer perk,      labels: [sharer], coupon: P10}
  - {id: buyer_perk,       name: Buyer perk,       labels: [bought_365d]}
  - {id: regular_perk,     name: Regular's perk,   min_tier: silver, labels: [bought_90d]}
  - {id: influencer_badge, name: Influencer badge, labels: [social_influencer], revoke: end_of_month}
`

var versionLine = regexp.MustCompile(`(?m)^version:[ \t]*(\S+)`)

// LabelProgramme returns the programme src (program.yaml syntax, with a
// version line and a benefits list) with benefits that follow labels
// added at the head of its benefits, and "+labels" appended to its version.
func LabelProgramme(src []byte) ([]byte, error) {
	const head = "\nbenefits:\n"
	if !bytes.Contains(src, []byte(head)) || !versionLine.Match(src) {
		return nil, errors.New("benefitstest: the programme has no version line or no block benefits list")
	}
	out := bytes.Replace(src, []byte(head), []byte(head+labelBenefits), 1)
	return versionLine.ReplaceAll(out, []byte("version: ${1}+labels")), nil
}

// rng is splitmix64: fully specified here, so streams never change with the
// Go release.
type rng struct{ s uint64 }

func (r *rng) next() uint64 {
	r.s += 0x9e3779b97f4a7c15
	z := r.s
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

func (r *rng) intn(n int) int {
	if n <= 0 {
		return 0
	}
	return int(r.next() % uint64(n))
}

// between returns a value in [lo, hi].
func (r *rng) between(lo, hi int64) int64 {
	if hi <= lo {
		return lo
	}
	return lo + int64(r.next()%uint64(hi-lo+1))
}

func uuidFrom(a, b uint64) string {
	a = (a &^ (0xf << 12)) | (0x4 << 12) // version 4
	b = (b &^ (0x3 << 62)) | (0x2 << 62) // RFC 4122 variant
	return fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", a>>32, (a>>16)&0xffff, a&0xffff, b>>48, b&0xffffffffffff)
}

type genKind int

const (
	gPurchase genKind = iota
	gCheckIn
	gReferral
	gSignUp
	gRefund
	gUnknownRefund
	gShare
)

type gslot struct {
	at     time.Time
	seq    int
	member int
	kind   genKind
	heavy  int    // purchases: 0 normal, 1 gold-bound, 2 diamond-bound
	target *gslot // refunds

	// Filled when emitted (purchases).
	orderID, eventID string
	total            int64
	guessRefunded    int64
	guessFull        bool
	lastRefundAt     time.Time
}

type gcoupon struct {
	code, template string
	minSpend       int64
	from, until    time.Time
	used           bool
}

type gmember struct {
	id        string
	created   bool
	heavy     bool
	quiet     bool      // no random traffic: lapsed and returning buyers
	coupons   []gcoupon // guess book (no oracle)
	seq       map[string]int
	pointsEst int64
}

type generator struct {
	r       *rng
	o       *Oracle
	seed    uint64
	start   time.Time
	end     time.Time
	day0    time.Time
	cst     *time.Location
	members []*gmember
	slots   []*gslot

	currency   string
	ppu        int64
	maxShareBP int64
}

var (
	categories = []string{"coffee", "bakery", "grocery", "apparel", "electronics", "beauty", "home", "snacks"}
	brands     = []string{"Acme", "Panda", "Lotus", "Jade", "Bamboo", "Crane", ""}
	cities     = []string{"Shanghai", "Beijing", "Shenzhen", "Hangzhou", "Chengdu", ""}
	hourWeight = []int{1, 1, 1, 1, 1, 1, 2, 5, 5, 5, 8, 8, 8, 8, 6, 6, 6, 6, 8, 8, 8, 8, 3, 3}
)

func (g *generator) randTime(dayLo, dayHi int) time.Time {
	d := dayLo + g.r.intn(dayHi-dayLo)
	var sum int
	for _, w := range hourWeight {
		sum += w
	}
	x := g.r.intn(sum)
	h := 0
	for ; h < 23 && x >= hourWeight[h]; h++ {
		x -= hourWeight[h]
	}
	t := g.day0.AddDate(0, 0, d).Add(time.Duration(h)*time.Hour + time.Duration(g.r.intn(3600))*time.Second)
	if t.Before(g.start) {
		t = g.start.Add(time.Duration(g.r.intn(3600)) * time.Second)
	}
	if !t.Before(g.end) {
		t = g.end.Add(-time.Duration(1+g.r.intn(3600)) * time.Second)
	}
	return t
}

func (g *generator) add(s *gslot) *gslot {
	s.seq = len(g.slots)
	g.slots = append(g.slots, s)
	return s
}

func generate(o *Oracle, seed uint64, nMembers, nEvents int, start time.Time) ([]*mcv1.MemberEvent, error) {
	if nMembers <= 0 || nEvents <= 0 {
		return nil, nil
	}
	cst := time.FixedZone("CST", 8*3600)
	s0 := start.In(cst)
	g := &generator{
		r: &rng{s: seed}, o: o, seed: seed, start: start, end: s0.AddDate(0, 14, 0), cst: cst,
		day0:     time.Date(s0.Year(), s0.Month(), s0.Day(), 0, 0, 0, 0, cst),
		currency: "CNY", ppu: 100, maxShareBP: 5000,
	}
	if o != nil {
		g.currency, g.ppu, g.maxShareBP = o.prog.currency, o.prog.redeemPPU, o.prog.maxShareBP
	}
	days := int(g.end.Sub(g.day0) / (24 * time.Hour))
	seen := map[string]bool{}
	for len(g.members) < nMembers {
		id := uuidFrom(g.r.next(), g.r.next())
		if seen[id] {
			continue
		}
		seen[id] = true
		g.members = append(g.members, &gmember{id: id, seq: map[string]int{}})
	}
	perm := func() []int {
		p := make([]int, nMembers)
		for i := range p {
			p[i] = i
		}
		for i := len(p) - 1; i > 0; i-- {
			j := g.r.intn(i + 1)
			p[i], p[j] = p[j], p[i]
		}
		return p
	}

	rem := nEvents
	take := func(n int) int {
		n = max(0, min(n, rem))
		rem -= n
		return n
	}

	// Sign-ups in the first two months, most with a birth date.
	nS := take(min(nMembers*7/10, nEvents/20))
	for _, mi := range perm()[:nS] {
		g.add(&gslot{at: g.randTime(0, 60), member: mi, kind: gSignUp})
	}

	// Heavy spenders: many large purchases in the first 40 days, then
	// nothing, so that upgrade, grace and downgrade all happen.
	order := perm()
	next := 0
	heavyBudget := take(nEvents / 10)
	for h := 0; h < max(1, nMembers/200) && next < nMembers; h++ {
		kind, cnt := 1, 7+g.r.intn(4)
		if h%3 == 0 {
			kind, cnt = 2, 30+g.r.intn(6)
		}
		if cnt > heavyBudget {
			break
		}
		heavyBudget -= cnt
		mi := order[next]
		next++
		g.members[mi].heavy = true
		for k := 0; k < cnt; k++ {
			g.add(&gslot{at: g.randTime(0, 40), member: mi, kind: gPurchase, heavy: kind})
		}
	}
	rem += heavyBudget

	// Daily check-in streaks of 7–16 days.
	streakBudget := take(nEvents / 15)
	for s := 0; s < max(1, nMembers/50) && next < nMembers && days > 20; s++ {
		length := 7 + g.r.intn(10)
		if length+1 > streakBudget {
			break
		}
		mi := order[next]
		next++
		d0 := g.r.intn(days - 20)
		for k := 0; k < length; k++ {
			g.add(&gslot{at: g.randTime(d0+k, d0+k+1), member: mi, kind: gCheckIn})
			streakBudget--
			if g.r.intn(10) == 0 && streakBudget > 0 {
				g.add(&gslot{at: g.randTime(d0+k, d0+k+1), member: mi, kind: gCheckIn})
				streakBudget--
			}
		}
	}
	rem += streakBudget

	// Referral bursts over the monthly cap.
	burstBudget := take(nEvents / 50)
	for b := 0; b < max(1, nMembers/300) && next < nMembers; b++ {
		cnt := 6 + g.r.intn(3)
		if cnt > burstBudget {
			break
		}
		burstBudget -= cnt
		mi := order[next]
		next++
		ms := time.Date(g.day0.Year(), g.day0.Month()+time.Month(1+g.r.intn(12)), 1, 0, 0, 0, 0, cst)
		lo := int(ms.Sub(g.day0) / (24 * time.Hour))
		hi := int(ms.AddDate(0, 1, 0).Sub(g.day0) / (24 * time.Hour))
		for k := 0; k < cnt; k++ {
			g.add(&gslot{at: g.randTime(lo, min(hi, days)), member: mi, kind: gReferral})
		}
	}
	rem += burstBudget

	// Traffic that flips labels, when the programme's benefits name some.
	if o != nil && len(o.named) > 0 {
		rem += g.labelTraffic(take(nEvents/6), order[next:], days)
	}

	nR := take(nEvents * 4 / 100)
	nU := take(nEvents / 300)
	nRand := take(rem)

	// Random traffic, weighted towards a few active members; heavy spenders
	// stay quiet after their burst.
	cum := make([]int, nMembers)
	total := 0
	for i, m := range g.members {
		w := 0
		if !m.heavy && !m.quiet {
			switch x := g.r.intn(100); {
			case x < 60:
				w = 1
			case x < 90:
				w = 3
			case x < 99:
				w = 10
			default:
				w = 30
			}
		}
		total += w
		cum[i] = total
	}
	pick := func() int {
		if total == 0 {
			return g.r.intn(nMembers)
		}
		x := g.r.intn(total)
		return sort.SearchInts(cum, x+1)
	}
	var purchases []*gslot
	for _, s := range g.slots {
		if s.kind == gPurchase {
			purchases = append(purchases, s)
		}
	}
	for k := 0; k < nRand; k++ {
		s := &gslot{at: g.randTime(0, days), member: pick()}
		switch x := g.r.intn(100); {
		case x < 85:
			s.kind = gPurchase
			purchases = append(purchases, s)
		case x < 95:
			s.kind = gCheckIn
		default:
			s.kind = gReferral
		}
		g.add(s)
	}

	// Refunds of earlier orders of the same member, some twice.
	var refunded []*gslot
	for k := 0; k < nR; k++ {
		if len(purchases) == 0 {
			nU++
			continue
		}
		var s *gslot
		var again *gslot
		if len(refunded) > 0 && g.r.intn(4) == 0 {
			again = refunded[g.r.intn(len(refunded))]
		}
		if again != nil && g.end.Sub(again.lastRefundAt) > 10*24*time.Hour {
			at := again.lastRefundAt.Add(time.Duration(g.r.between(3600, 10*86400)) * time.Second)
			s = &gslot{at: at, member: again.member, kind: gRefund, target: again}
			again.lastRefundAt = at
		} else {
			p := purchases[g.r.intn(len(purchases))]
			var delay int64
			if g.r.intn(10) < 6 {
				delay = g.r.between(60, 6*86400)
			} else {
				delay = g.r.between(7*86400, 60*86400)
			}
			at := p.at.Add(time.Duration(delay) * time.Second)
			if !at.Before(g.end) {
				at = p.at.Add(g.end.Sub(p.at) / 2)
			}
			s = &gslot{at: at, member: p.member, kind: gRefund, target: p}
			if p.lastRefundAt.Before(at) {
				p.lastRefundAt = at
			}
			refunded = append(refunded, p)
		}
		g.add(s)
	}
	for k := 0; k < nU; k++ {
		g.add(&gslot{at: g.randTime(0, days), member: pick(), kind: gUnknownRefund})
	}

	sort.SliceStable(g.slots, func(i, j int) bool {
		if !g.slots[i].at.Equal(g.slots[j].at) {
			return g.slots[i].at.Before(g.slots[j].at)
		}
		return g.slots[i].seq < g.slots[j].seq
	})

	out := make([]*mcv1.MemberEvent, 0, len(g.slots))
	for i, s := range g.slots {
		ev := g.emit(i, s)
		out = append(out, ev)
		if o != nil {
			if err := o.Apply(ev); err != nil {
				return out, err
			}
		}
	}
	return out, nil
}

func (g *generator) emit(i int, s *gslot) *mcv1.MemberEvent {
	m := g.members[s.member]
	sum := sha256.Sum256([]byte(m.id))
	ev := &mcv1.MemberEvent{
		EventId:    fmt.Sprintf("evt-%016x-%07d", g.seed, i),
		MemberId:   m.id,
		OccurredAt: timestamppb.New(s.at),
		IngestedAt: timestamppb.New(s.at.Add(time.Duration(1+g.r.intn(5)) * time.Second)),
		Identifiers: []*mcv1.IdentifierRef{{
			Type: mcv1.IdentifierType_IDENTIFIER_TYPE_MEMBER_CODE, ValueHash: hex.EncodeToString(sum[:]),
			Masked: "MC******" + m.id[len(m.id)-4:],
		}},
		Resolution: &mcv1.Resolution{Created: !m.created, OriginMemberId: m.id},
	}
	m.created = true
	switch x := g.r.intn(20); {
	case x < 10:
		ev.Channel = mcv1.Channel_CHANNEL_POS
		ev.StoreId = fmt.Sprintf("store-%03d", g.r.intn(120))
	case x < 15:
		ev.Channel = mcv1.Channel_CHANNEL_APP
	case x < 19:
		ev.Channel = mcv1.Channel_CHANNEL_MINIPROGRAM
	default:
		ev.Channel = mcv1.Channel_CHANNEL_WEB
	}
	s.eventID = ev.EventId

	switch s.kind {
	case gPurchase:
		ev.Payload = &mcv1.MemberEvent_Transaction{Transaction: g.purchase(i, s, m)}
	case gRefund:
		ev.Payload = &mcv1.MemberEvent_Refund{Refund: g.refund(s)}
	case gUnknownRefund:
		ev.Payload = &mcv1.MemberEvent_Refund{Refund: &mcv1.Refund{
			OrderId: fmt.Sprintf("legacy-%016x-%07d", g.seed, i),
			Amount:  &mcv1.Money{Currency: g.currency, AmountMinor: g.r.between(100, 50000)},
		}}
	case gShare:
		ev.Channel, ev.StoreId = mcv1.Channel_CHANNEL_APP, ""
		if g.r.intn(2) == 0 {
			ev.Channel = mcv1.Channel_CHANNEL_MINIPROGRAM
		}
		ev.Payload = &mcv1.MemberEvent_Share{Share: &mcv1.Share{ContentId: fmt.Sprintf("post-%04d", g.r.intn(10000)),
			Target: []string{"wechat", "moments", "weibo"}[g.r.intn(3)]}}
	case gCheckIn:
		ev.Channel, ev.StoreId = mcv1.Channel_CHANNEL_APP, ""
		if g.r.intn(2) == 0 {
			ev.Channel = mcv1.Channel_CHANNEL_MINIPROGRAM
		}
		ev.Payload = &mcv1.MemberEvent_CheckIn{CheckIn: &mcv1.CheckIn{}}
	case gReferral:
		ev.Payload = &mcv1.MemberEvent_Referral{Referral: &mcv1.Referral{
			ReferralCode: "R" + m.id[:8],
			Referee: &mcv1.Identifier{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_MEMBER_CODE,
				Value: fmt.Sprintf("MC%010d", g.r.intn(10_000_000_000))},
		}}
	case gSignUp:
		su := &mcv1.SignUp{City: cities[g.r.intn(len(cities))]}
		switch g.r.intn(3) {
		case 0:
			su.Gender = "f"
		case 1:
			su.Gender = "m"
		}
		if g.r.intn(10) < 8 {
			bd := time.Date(1960+g.r.intn(46), time.Month(1+g.r.intn(12)), 1+g.r.intn(28), 12, 0, 0, 0, time.UTC)
			su.BirthDate = timestamppb.New(bd)
			g.guessBirthdayCoupons(m, s.at, bd.Month())
		}
		ev.Payload = &mcv1.MemberEvent_SignUp{SignUp: su}
	}
	return ev
}

func (g *generator) basketTotal(heavy int) int64 {
	switch heavy {
	case 2:
		return g.r.between(180000, 300000)
	case 1:
		return g.r.between(160000, 250000)
	}
	switch x := g.r.intn(100); {
	case x < 45:
		return g.r.between(500, 5000)
	case x < 70:
		return g.r.between(5001, 20000)
	case x < 85:
		return g.r.between(20001, 50000)
	case x < 95:
		return g.r.between(50001, 150000)
	default:
		return g.r.between(150001, 300000)
	}
}

// usable returns the coupons the member can use at t (from the oracle when
// there is one, from the guess book otherwise).
func (g *generator) usable(m *gmember, t time.Time) []gcoupon {
	var out []gcoupon
	if g.o != nil {
		om := g.o.members[m.id]
		if om == nil {
			return nil
		}
		for _, c := range om.coupons {
			if (c.State == CouponIssued || c.State == CouponRestored) && couponValidAt(&c, t) {
				out = append(out, gcoupon{code: c.Code, template: c.Template, minSpend: g.o.prog.coupons[c.Template].minSpend})
			}
		}
		return out
	}
	for _, c := range m.coupons {
		if !c.used && !t.Before(c.from) && t.Before(c.until) {
			out = append(out, c)
		}
	}
	return out
}

func (g *generator) guessCoupon(m *gmember, template string, minSpend int64, validDays int, at time.Time, limit int) {
	if m.seq[template] >= limit {
		return
	}
	m.seq[template]++
	m.coupons = append(m.coupons, gcoupon{code: CouponCode(m.id, template, m.seq[template]), template: template,
		minSpend: minSpend, from: at, until: at.Add(time.Duration(validDays) * 24 * time.Hour)})
}

func (g *generator) guessBirthdayCoupons(m *gmember, at time.Time, month time.Month) {
	if g.o != nil {
		return
	}
	lt := at.In(g.cst)
	if lt.Month() == month {
		g.guessCoupon(m, "BDAY", 0, 31, at, 100)
	}
	for ms := time.Date(lt.Year(), lt.Month()+1, 1, 0, 0, 0, 0, g.cst); ms.Before(g.end); ms = ms.AddDate(0, 1, 0) {
		if ms.Month() == month {
			g.guessCoupon(m, "BDAY", 0, 31, ms, 100)
		}
	}
}

func (g *generator) purchase(i int, s *gslot, m *gmember) *mcv1.Transaction {
	total := g.basketTotal(s.heavy)
	var codes []string
	var discountEst int64
	if cs := g.usable(m, s.at); len(cs) > 0 && g.r.intn(100) < 55 {
		first := g.r.intn(len(cs))
		chosen := []gcoupon{cs[first]}
		if len(cs) > 1 && g.r.intn(100) < 15 {
			chosen = append(chosen, cs[(first+1+g.r.intn(len(cs)-1))%len(cs)])
		}
		for _, c := range chosen {
			if total < c.minSpend {
				total = c.minSpend + g.r.between(0, 20000)
			}
		}
		for _, c := range chosen {
			codes = append(codes, c.code)
			discountEst += g.couponValue(c.template, total)
			if g.o == nil {
				for k := range m.coupons {
					if m.coupons[k].code == c.code {
						m.coupons[k].used = true
					}
				}
			}
		}
		discountEst = min(discountEst, total)
	}
	if g.r.intn(1000) < 3 {
		codes = append(codes, fmt.Sprintf("NOPE-%07d", i))
	}

	var redeem int64
	if g.r.intn(100) < 12 {
		avail := m.pointsEst
		if g.o != nil {
			_, avail, _ = g.o.Balance(m.id, s.at)
		}
		share := (total - discountEst) * g.maxShareBP / 10000
		maxPts := share * g.ppu / 100 / g.ppu * g.ppu
		switch x := g.r.intn(100); {
		case x < 70:
			if k := min(avail, maxPts) / g.ppu; k >= 1 {
				redeem = g.ppu * g.r.between(1, k)
			}
		case x < 90:
			redeem = (avail/g.ppu + 1 + int64(g.r.intn(5))) * g.ppu
		default:
			redeem = (maxPts/g.ppu + 1) * g.ppu
		}
	}
	if g.o == nil {
		if redeem <= m.pointsEst {
			m.pointsEst -= redeem
		}
		m.pointsEst += total / 100
		if total >= 50000 {
			g.guessCoupon(m, "C10", 5000, 30, s.at, 5)
		}
	}

	s.orderID = fmt.Sprintf("ord-%016x-%07d", g.seed, i)
	s.total = total
	return &mcv1.Transaction{
		OrderId:        s.orderID,
		Total:          &mcv1.Money{Currency: g.currency, AmountMinor: total},
		Items:          g.items(total),
		CouponCodes:    codes,
		PointsRedeemed: redeem,
	}
}

func (g *generator) couponValue(template string, total int64) int64 {
	if g.o == nil {
		switch template {
		case "C10":
			return 1000
		case "BDAY":
			return 3000
		}
		return 0
	}
	t := g.o.prog.coupons[template]
	if t == nil {
		return 0
	}
	if t.amountOff != nil {
		return *t.amountOff
	}
	return total * t.percentBP / 10000
}

func (g *generator) items(total int64) []*mcv1.LineItem {
	k := 1 + g.r.intn(4)
	coffee := g.r.intn(10) < 3
	rem := total
	out := make([]*mcv1.LineItem, 0, k)
	for j := 0; j < k; j++ {
		amount := rem
		if j < k-1 {
			amount = max(1, rem*g.r.between(20, 60)/100)
			if amount >= rem {
				amount = rem
			}
		}
		rem -= amount
		cat := categories[1+g.r.intn(len(categories)-1)]
		if coffee && j == 0 || g.r.intn(20) == 0 {
			cat = "coffee"
		}
		q := int32(1 + g.r.intn(3))
		out = append(out, &mcv1.LineItem{
			Sku:       fmt.Sprintf("SKU-%s-%03d", cat, g.r.intn(200)),
			Category:  cat,
			Brand:     brands[g.r.intn(len(brands))],
			Quantity:  q,
			UnitPrice: &mcv1.Money{Currency: g.currency, AmountMinor: amount / int64(q)},
			Amount:    &mcv1.Money{Currency: g.currency, AmountMinor: amount},
		})
		if rem == 0 {
			break
		}
	}
	return out
}

func (g *generator) refund(s *gslot) *mcv1.Refund {
	p := s.target
	r := &mcv1.Refund{OrderId: p.orderID, OriginalEventId: p.eventID}
	var paid, refunded int64
	var full, known bool
	if g.o != nil {
		info, ok := g.o.Order(p.orderID)
		known, paid, refunded, full = ok, info.Paid, info.Refunded, info.FullyRefunded
	} else {
		known, paid, refunded, full = true, p.total, p.guessRefunded, p.guessFull
	}
	var amount int64
	if known && !full && paid > 0 {
		left := paid - refunded
		switch x := g.r.intn(100); {
		case x < 40 || left <= 1:
			amount = 0
		case x < 50:
			amount = left
		case x < 53:
			amount = left + g.r.between(1, 1000)
		default:
			amount = max(1, left*g.r.between(10, 70)/100)
		}
	}
	if g.o == nil {
		switch {
		case amount == 0 || refunded+amount == paid:
			p.guessFull = true
		case refunded+amount < paid:
			p.guessRefunded += amount
		}
	}
	r.Amount = &mcv1.Money{Currency: g.currency, AmountMinor: amount}
	return r
}

// labelTraffic adds, within budget, events that make the labels of
// docs/labels.md that benefits name change, drawing members from free
// (members no other burst took), and returns what it left of budget:
//   - share bursts: 2 to 12 shares over 1 to 80 days (sharer needs 3 in
//     90 days, social_influencer 10), some members with a second burst
//     after the first has left the 90 days;
//   - lapsed buyers: one to three purchases in the first 45 days, then
//     nothing (bought_90d and bought_365d end on their own);
//   - returning buyers: purchases in the first 30 days and again in the
//     last 25 days of the stream, more than 365 days later (bought_365d
//     ends, then holds again).
//
// Lapsed and returning buyers get no random traffic; sharers do.
func (g *generator) labelTraffic(budget int, free []int, days int) int {
	if days < 60 {
		return budget
	}
	nextFree := func() (int, bool) {
		if len(free) == 0 {
			return 0, false
		}
		mi := free[0]
		free = free[1:]
		return mi, true
	}
	nMembers := len(g.members)
	for s := 0; s < max(1, nMembers/8); s++ {
		sizes := []int{2, 3, 3, 4, 5, 6, 11, 12}
		k := sizes[g.r.intn(len(sizes))]
		span := 1 + g.r.intn(80)
		if k > budget || days-span-1 <= 0 {
			break
		}
		mi, ok := nextFree()
		if !ok {
			break
		}
		d0 := g.r.intn(days - span - 1)
		for range k {
			d := d0 + g.r.intn(span+1)
			g.add(&gslot{at: g.randTime(d, d+1), member: mi, kind: gShare})
		}
		budget -= k
		// A second burst once the first has left the 90 days.
		if d1 := d0 + span + 91 + g.r.intn(30); g.r.intn(2) == 0 && d1+10 < days && budget >= 4 {
			k := 3 + g.r.intn(2)
			for range k {
				d := d1 + g.r.intn(10)
				g.add(&gslot{at: g.randTime(d, d+1), member: mi, kind: gShare})
			}
			budget -= k
		}
	}
	// quietBuyer gives a free member no random traffic, only the purchases
	// of spans; false when the budget or the free members run out.
	quietBuyer := func(spans ...purchaseSpan) bool {
		k := 0
		for _, s := range spans {
			k += s.n
		}
		if k > budget {
			return false
		}
		mi, ok := nextFree()
		if !ok {
			return false
		}
		g.members[mi].quiet = true
		for _, s := range spans {
			for range s.n {
				g.add(&gslot{at: g.randTime(s.from, s.to), member: mi, kind: gPurchase})
			}
		}
		budget -= k
		return true
	}
	for l := 0; l < max(1, nMembers/25); l++ {
		if !quietBuyer(purchaseSpan{n: 1 + g.r.intn(3), from: 0, to: 45}) {
			break
		}
	}
	if days > 400 {
		for r := 0; r < max(1, nMembers/40); r++ {
			k1, k2 := 1+g.r.intn(2), 1+g.r.intn(2)
			if !quietBuyer(purchaseSpan{n: k1, from: 0, to: 30}, purchaseSpan{n: k2, from: days - 25, to: days}) {
				break
			}
		}
	}
	return budget
}

// purchaseSpan is n purchases on days [from, to) of the stream.
type purchaseSpan struct{ n, from, to int }
