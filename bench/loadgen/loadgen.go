// Package loadgen is a synthetic omnichannel retailer: a deterministic,
// infinite stream of channel.events.v1 records (binary protobuf
// ChannelEvents keyed by a shopper identifier) for load tests and
// benchmarks. The same Config (seed included) always gives byte-identical
// records.
//
// # Shoppers
//
// Members shoppers, each with a Pareto-distributed activity weight (a few
// heavy buyers account for most of the spend), a home city and store, and
// the channels they use (POS 85% of shoppers, app 45%, mini-program 40%).
// The channel of each event is drawn from the configured mix (default POS
// 60%, app 25%, mini-program 15%), then the shopper among that channel's
// users in proportion to their weight. Events are emitted in time order over
// the simulated span, more at weekends and at breakfast, lunch and evening
// peaks (Asia/Shanghai), never after the end of the span.
//
// # Identifiers and the identity outcomes they are built to cause
//
// Each shopper has one phone, and depending on channels a member card (POS),
// app device ids (app), a mini-program openid and often a WeChat unionid. The
// channels present them the way their back ends would, which produces, under
// the rules of services/identity/rules.yaml:
//
//   - Links: a phone first seen at POS with a card and later in the app with a
//     device id (or in the mini-program with an openid) attaches the device
//     or openid to the same member.
//   - Merges: (a) card-only-first shoppers (35% of card holders) scan the card
//     alone on their first 1–3 visits, creating a card member; if the phone
//     was meanwhile seen elsewhere (app sign-up, a visit without the card),
//     the first card+phone visit merges the two members. (b) Anonymous
//     mini-program users (40%) browse by openid alone, creating an openid
//     member, then sign up with openid, unionid and phone, merging it into
//     the phone's member. (c) A reissued card (5% of card holders): the new
//     card is first scanned alone (a new member), then with the phone, which
//     merges the phone's member (holding the old card) into it.
//   - Shared devices, never merged: every store has TabletsPerStore shared
//     tablets; 15% of app users sometimes use their home store's tablet,
//     logged in with their phone. The tablet's device id is therefore linked
//     to several members, but device_id is neither unique nor may_merge, so
//     it never merges them; and a rare tablet-only visit is attributed to the
//     member last linked to the tablet (Record.Shopper says which shopper
//     that is).
//   - Refused identifiers: 1% of POS visits with a card carry the placeholder
//     phone 13800138000 the cashier typed; the phone is ignored
//     (phone.blocked) and the card routes the event.
//   - Device-only app events (check-ins, browsing) are only emitted for a
//     device already presented with the phone, under the same Kafka key (app
//     records are keyed by device id), so they always find their member.
//
// Kafka keys: POS records by the member card when one is presented, else the
// phone; app records by the device id; mini-program records by the openid.
// A refund carries the original transaction's identifiers and key, so it is
// processed after it.
//
// # Events
//
// Transactions of 1–6 lines over the label catalogue's categories (SKUs,
// brands and prices in CNY fen, line promotions in Transaction.discount),
// points redemptions by shoppers whose earlier purchases have matured (small,
// multiples of 100, at most half the basket, below a conservative estimate
// of the balance), occasional coupon codes, refunds (RefundRate of
// transactions, full or partial, 2 h–7 days later, of the same order),
// store and session visits, browsing, daily check-ins, shares, reviews
// (rating 1–5), sign-ups (the first app or mini-program session, or the first
// POS visit of in-store registrations) with birth date, gender and city,
// and referrals (about 5% of digital shoppers were referred by another
// digital shopper: their first sign-up carries the referrer's code and the
// referrer's Referral event, naming the referee's phone, follows minutes
// later).
//
// Values carry no content-type header: ingest decodes them as binary
// protobuf. Generation is single-threaded and allocation-light (about 3 µs
// a record on one core); byte-identical output is guaranteed for the same
// Config on the same architecture.
//
// A fraction MalformedRate of the records is malformed, of the kinds in
// MalformedKinds; every kind is dead-lettered by the ingest stage (see
// there).
package loadgen

import (
	"container/heap"
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/services/facts"
)

// Defaults of Config.
const (
	DefaultMembers         = 10_000
	DefaultDays            = 30
	DefaultEventsPerMember = 10
	DefaultMalformedRate   = 0.01
	DefaultRefundRate      = 0.03
	DefaultRedeemRate      = 0.05
	DefaultCouponRate      = 0.005
	DefaultParetoAlpha     = 1.16
)

// MiniProgramAppID is the scope of every mini-program openid.
const MiniProgramAppID = "wx5e8a1f0c3b7d2946"

// PlaceholderPhone is the number cashiers type for shoppers who give none;
// the identity rules block it.
const PlaceholderPhone = "13800138000"

// Currency of every amount.
const Currency = "CNY"

// Config describes the simulated retailer. Zero fields take the defaults.
type Config struct {
	Seed int64
	// Distinct shoppers (at most 50,000,000).
	Members int
	// Start of the simulated clock. Zero means Days days before the time New
	// is called, so the span ends now and no good event is in the future;
	// set it for runs that must be byte-identical at different times.
	Start time.Time
	// Simulated span in days.
	Days int
	// Records that span the simulated Days (default DefaultEventsPerMember
	// per member). Records after that all carry the end of the span.
	Events int
	// Fraction of malformed records (default 0.01; negative for none).
	MalformedRate float64
	// Channel mix weights (default POS 0.60, app 0.25, mini-program 0.15).
	// Setting any of them replaces the default mix.
	POS, App, MiniProgram float64
	// Fraction of transactions refunded later (default 0.03; negative for none).
	RefundRate float64
	// Fraction of transactions of shoppers with matured points that redeem
	// points (default 0.05; negative for none).
	RedeemRate float64
	// Fraction of transactions of ¥50 or more that present a coupon code
	// (default 0.005; negative for none). The codes are not the platform's
	// (the generator cannot know the codes it issues), so the programme
	// refuses such a purchase as it would a foreign coupon.
	CouponRate float64
	// Pareto shape of shopper activity (default 1.16, the "80/20" shape).
	ParetoAlpha float64
	// Prefix of event ids ("<IDPrefix>-<n>") and order ids (default
	// "lg-<seed>", at most 64 characters). The platform processes an event
	// id once: publish the same workload again under another prefix. The
	// shoppers stay the same, so a new prefix replays the same people.
	IDPrefix string
}

func (c Config) withDefaults(now func() time.Time) Config {
	if c.Members <= 0 {
		c.Members = DefaultMembers
	}
	c.Members = min(c.Members, 50_000_000)
	if c.Days <= 0 {
		c.Days = DefaultDays
	}
	if c.Start.IsZero() {
		c.Start = now().Add(-time.Duration(c.Days) * 24 * time.Hour).Truncate(time.Millisecond)
	}
	if c.Events <= 0 {
		c.Events = c.Members * DefaultEventsPerMember
	}
	rate := func(v *float64, def float64) {
		switch {
		case *v == 0:
			*v = def
		case *v < 0:
			*v = 0
		}
		*v = min(*v, 1)
	}
	rate(&c.MalformedRate, DefaultMalformedRate)
	rate(&c.RefundRate, DefaultRefundRate)
	rate(&c.RedeemRate, DefaultRedeemRate)
	rate(&c.CouponRate, DefaultCouponRate)
	if c.POS <= 0 && c.App <= 0 && c.MiniProgram <= 0 {
		c.POS, c.App, c.MiniProgram = 0.60, 0.25, 0.15
	}
	c.POS, c.App, c.MiniProgram = max(c.POS, 0), max(c.App, 0), max(c.MiniProgram, 0)
	if c.ParetoAlpha <= 0 {
		c.ParetoAlpha = DefaultParetoAlpha
	}
	if c.IDPrefix == "" {
		c.IDPrefix = "lg-" + strconv.FormatInt(c.Seed, 10)
	}
	if len(c.IDPrefix) > 64 {
		c.IDPrefix = c.IDPrefix[:64]
	}
	return c
}

// Record is one channel.events.v1 record.
type Record struct {
	// Kafka key: an identifier value of the shopper, as the channel's back
	// end keys its records.
	Key []byte
	// Binary protobuf ChannelEvent, or deliberately malformed bytes.
	Value []byte
	// "" for a good record, else its kind of malformation (MalformedKinds).
	Malformed string
	// The generator's event id ("<IDPrefix>-<n>", by default "lg-<seed>-<n>",
	// n counting records from 1); a malformed record may not
	// carry it (undecodable, missing_event_id).
	EventID string
	// Payload kind: transaction, refund, visit, browse, sign_up, check_in,
	// share, referral, review; for a malformed record, the kind it was made
	// from.
	Kind    string
	Channel mcv1.Channel
	// Index of the shopper (see Generator.Shopper), or -1.
	Shopper int
	// The simulated time of the record (occurred_at of a good event); a
	// natural Kafka record timestamp.
	At time.Time
}

// Payload kinds (facts' vocabulary).
const (
	KindTransaction = facts.KindTransaction
	KindRefund      = facts.KindRefund
	KindVisit       = facts.KindVisit
	KindBrowse      = facts.KindBrowse
	KindSignUp      = facts.KindSignUp
	KindCheckIn     = facts.KindCheckIn
	KindShare       = facts.KindShare
	KindReferral    = facts.KindReferral
	KindReview      = facts.KindReview
)

// Stats counts the records generated so far.
type Stats struct {
	Records   int
	Malformed int
	ByKind    map[string]int // good records by payload kind
	ByChannel map[mcv1.Channel]int
	// Malformed records by kind of malformation.
	ByMalformed map[string]int
	// Transactions carrying points_redeemed or coupon codes.
	Redemptions, Coupons int
}

// Generator produces the stream. It is not safe for concurrent use.
type Generator struct {
	cfg    Config
	key    uint64
	rng    *rand.Rand
	prefix string // IDPrefix + "-"
	ids    string // IDPrefix
	n      uint64
	clk    clock
	end    time.Time

	shops   []shopper
	st      []state
	pick    [3]aliasTable
	chanCum [3]float64
	tablets []tabletState
	queue   schedQueue
	seq     uint64
	stats   Stats
	opts    proto.MarshalOptions
}

// state is what the generator remembers of a shopper.
type state struct {
	pos, app, mp uint32 // events so far per channel
	flags        uint8
	lastCheckIn  int32 // local day number + 1
	mature, pend int64 // estimated available and pending points
	pendLast     int64 // time of the last purchase in pend (ms)
}

const (
	stDev1Linked uint8 = 1 << iota
	stDev2Linked
	stMPSignedUp
	stUsedTablet
	stReferralSent
)

type tabletState struct {
	used bool
	last int32 // the shopper last newly linked to the tablet
}

var cst = time.FixedZone("CST", 8*3600) // Asia/Shanghai, which has no DST

// DayStart is a Start for a span of days that ends at the last midnight
// before now in Asia/Shanghai: the generators built on one day, at
// whatever hour, then give the same records. With a Start at the moment of
// New the clock weighs each hour by the hour of day its middle falls in,
// and every hour at half past each weight moves to its neighbour's, and
// the records with it.
func DayStart(now time.Time, days int) time.Time {
	y, m, d := now.In(cst).Date()
	return time.Date(y, m, d, 0, 0, 0, 0, cst).AddDate(0, 0, -days)
}

// New builds the retailer of cfg.
func New(cfg Config) *Generator {
	return newAt(cfg, time.Now)
}

func newAt(cfg Config, now func() time.Time) *Generator {
	cfg = cfg.withDefaults(now)
	g := &Generator{
		cfg:  cfg,
		key:  mix64(uint64(cfg.Seed) ^ 0x6c6f616467656e21),
		rng:  rand.New(rand.NewPCG(uint64(cfg.Seed), 0x6d656d6265726365)),
		ids:  cfg.IDPrefix,
		opts: proto.MarshalOptions{Deterministic: true},
	}
	g.prefix = cfg.IDPrefix + "-"
	g.stats = Stats{ByKind: map[string]int{}, ByChannel: map[mcv1.Channel]int{}, ByMalformed: map[string]int{}}
	g.end = cfg.Start.Add(time.Duration(cfg.Days) * 24 * time.Hour)
	g.clk = newClock(cfg.Start, cfg.Days, cfg.Events)

	g.shops = make([]shopper, cfg.Members)
	for i := range g.shops {
		g.shops[i] = g.buildShopper(i, cfg.ParetoAlpha)
	}
	// Every channel in the mix needs at least one user.
	for c, f := range []uint16{usesPOS, usesApp, usesMP} {
		found := false
		for i := range g.shops {
			if g.shops[i].is(f) {
				found = true
				break
			}
		}
		if !found {
			g.shops[c%cfg.Members].flags |= f
		}
	}
	for i := range g.shops {
		if r := g.shops[i].referrer; r >= 0 && (int(r) == i || !g.shops[r].is(usesApp|usesMP)) {
			g.shops[i].referrer = -1
		}
	}
	g.st = make([]state, cfg.Members)
	g.tablets = make([]tabletState, len(tabletIDs))
	for c, f := range []uint16{usesPOS, usesApp, usesMP} {
		g.pick[c] = newAlias(g.shops, f)
	}
	sum := cfg.POS + cfg.App + cfg.MiniProgram
	g.chanCum = [3]float64{cfg.POS / sum, (cfg.POS + cfg.App) / sum, 1}
	return g
}

// Config returns the configuration in force, defaults filled in.
func (g *Generator) Config() Config { return g.cfg }

// End is the end of the simulated span: no record is later.
func (g *Generator) End() time.Time { return g.end }

// Stats returns counts of the records generated so far.
func (g *Generator) Stats() Stats {
	s := g.stats
	s.ByKind, s.ByChannel, s.ByMalformed = copyMap(s.ByKind), copyMap(s.ByChannel), copyMap(s.ByMalformed)
	return s
}

func copyMap[K comparable](m map[K]int) map[K]int {
	out := make(map[K]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

var channels = [3]mcv1.Channel{mcv1.Channel_CHANNEL_POS, mcv1.Channel_CHANNEL_APP, mcv1.Channel_CHANNEL_MINIPROGRAM}

// Next returns the next record. The stream never ends.
func (g *Generator) Next() Record {
	g.n++
	at := g.clk.next(g.n-1, g.rng.Float64())
	var r Record
	switch {
	case g.cfg.MalformedRate > 0 && g.rng.Float64() < g.cfg.MalformedRate:
		r = g.malformed(at)
	case len(g.queue) > 0 && g.queue[0].due <= at:
		r = g.scheduled(heap.Pop(&g.queue).(*pending), at)
	default:
		c := g.pickChannel()
		i := g.pick[c].pick(g.rng)
		r = g.event(channels[c], i, at)
	}
	g.stats.Records++
	if r.Malformed != "" {
		g.stats.Malformed++
		g.stats.ByMalformed[r.Malformed]++
	} else {
		g.stats.ByKind[r.Kind]++
		g.stats.ByChannel[r.Channel]++
	}
	return r
}

func (g *Generator) pickChannel() int {
	u := g.rng.Float64()
	for c := 0; c < 2; c++ {
		if u < g.chanCum[c] {
			return c
		}
	}
	return 2
}

func (g *Generator) eventID() string { return g.prefix + strconv.FormatUint(g.n, 10) }

func (g *Generator) record(ev *mcv1.ChannelEvent, key string, kind string, shopper int, at int64) Record {
	b, err := g.opts.Marshal(ev)
	if err != nil {
		panic("loadgen: marshal: " + err.Error()) // cannot happen for these messages
	}
	return Record{Key: []byte(key), Value: b, EventID: ev.GetEventId(), Kind: kind, Channel: ev.GetChannel(),
		Shopper: shopper, At: time.UnixMilli(at)}
}

func ts(ms int64) *timestamppb.Timestamp {
	return &timestamppb.Timestamp{Seconds: ms / 1000, Nanos: int32(ms%1000) * 1e6}
}

func cny(minor int64) *mcv1.Money { return &mcv1.Money{Currency: Currency, AmountMinor: minor} }

func localDay(ms int64) int32 { return int32((ms + 8*3600*1000) / (24 * 3600 * 1000)) }

// event builds a good event of shopper i in channel ch at time at.
func (g *Generator) event(ch mcv1.Channel, i int, at int64) Record {
	ev := &mcv1.ChannelEvent{EventId: g.eventID(), Channel: ch, OccurredAt: ts(at)}
	var key, kind string
	shopper := i
	switch ch {
	case mcv1.Channel_CHANNEL_POS:
		key, kind = g.posEvent(ev, i, at)
	case mcv1.Channel_CHANNEL_APP:
		key, kind, shopper = g.appEvent(ev, i, at)
	default:
		key, kind = g.mpEvent(ev, i, at)
	}
	return g.record(ev, key, kind, shopper, at)
}

func (g *Generator) pickStore(s *shopper) int {
	switch u := g.rng.Float64(); {
	case u < 0.80:
		return int(s.store)
	case u < 0.95:
		c := s.city
		return firstStore[c] + g.rng.IntN(cities[c].stores)
	default:
		return g.rng.IntN(len(storeIDs))
	}
}

const (
	tPhone   = mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE
	tCard    = mcv1.IdentifierType_IDENTIFIER_TYPE_MEMBER_CARD
	tDevice  = mcv1.IdentifierType_IDENTIFIER_TYPE_DEVICE_ID
	tOpenID  = mcv1.IdentifierType_IDENTIFIER_TYPE_MINIPROGRAM_OPENID
	tUnionID = mcv1.IdentifierType_IDENTIFIER_TYPE_WECHAT_UNIONID
)

func openIDIdentifier(v string) *mcv1.Identifier {
	return &mcv1.Identifier{Type: tOpenID, Value: v, Scope: MiniProgramAppID}
}

// posEvent: a till transaction, a store visit or an in-store sign-up.
func (g *Generator) posEvent(ev *mcv1.ChannelEvent, i int, at int64) (key, kind string) {
	s, st := &g.shops[i], &g.st[i]
	k := int(st.pos)
	st.pos++
	ev.StoreId = storeIDs[g.pickStore(s)]
	phone := idf(tPhone, g.phone(i))
	var ids []*mcv1.Identifier
	if !s.is(hasCard) {
		ids = []*mcv1.Identifier{phone}
	} else {
		gen := 0
		if s.is(reissue) && k >= int(s.reissueAt) {
			gen = 1
		}
		card := idf(tCard, g.card(i, gen))
		switch u := g.rng.Float64(); {
		case s.is(registerAtPOS) && k == 0:
			ids = []*mcv1.Identifier{card, phone}
		case s.is(reissue) && k == int(s.reissueAt):
			ids = []*mcv1.Identifier{card} // the new card, scanned alone at the desk
		case s.is(cardOnlyFirst) && k < int(s.cardOnlyN):
			ids = []*mcv1.Identifier{card}
		case u < 0.04:
			ids = []*mcv1.Identifier{phone} // forgot the card
		case u < 0.06:
			ids = []*mcv1.Identifier{card}
		case u < 0.07:
			ids = []*mcv1.Identifier{card, idf(tPhone, PlaceholderPhone)}
		default:
			ids = []*mcv1.Identifier{card, phone}
		}
	}
	ev.Identifiers = ids
	key = ids[0].Value
	switch {
	case s.is(registerAtPOS) && k == 0:
		kind = KindSignUp
		ev.Payload = &mcv1.ChannelEvent_SignUp{SignUp: g.signUp(i)}
	case g.rng.Float64() < 0.9:
		kind = KindTransaction
		g.transaction(ev, i, at, key)
	default:
		kind = KindVisit
		ev.Payload = &mcv1.ChannelEvent_Visit{Visit: &mcv1.Visit{DwellSeconds: int32(60 + g.rng.ExpFloat64()*600)}}
	}
	return key, kind
}

// curDevice is the generation of the device shopper i uses in app session k.
func (g *Generator) curDevice(i int, k int) int {
	if s := &g.shops[i]; s.is(newPhone) && k >= int(s.newPhoneAt) {
		return 1
	}
	return 0
}

// appEvent: the first session is a sign-up; later ones are purchases,
// browsing, check-ins and so on, by device alone once the device has been
// presented with the phone. Sometimes on the home store's shared tablet.
func (g *Generator) appEvent(ev *mcv1.ChannelEvent, i int, at int64) (key, kind string, shopper int) {
	s, st := &g.shops[i], &g.st[i]
	k := int(st.app)
	st.app++
	gen := g.curDevice(i, k)
	dev := idf(tDevice, g.device(i, gen))
	phone := idf(tPhone, g.phone(i))
	linkedBit := stDev1Linked << gen
	if k == 0 {
		ev.Identifiers = []*mcv1.Identifier{phone, dev}
		st.flags |= linkedBit
		ev.Payload = &mcv1.ChannelEvent_SignUp{SignUp: g.signUp(i)}
		g.referredSignUp(i, at)
		return dev.Value, KindSignUp, i
	}
	if s.is(tabletUser) && g.rng.Float64() < 0.05 {
		return g.tabletEvent(ev, i, at)
	}
	kind = g.digitalKind(st, at, appKinds)
	if st.flags&linkedBit != 0 && kind != KindTransaction && g.rng.Float64() < 0.5 {
		ev.Identifiers = []*mcv1.Identifier{dev}
	} else {
		ev.Identifiers = []*mcv1.Identifier{phone, dev}
		st.flags |= linkedBit
	}
	g.digitalPayload(ev, i, at, kind, dev.Value)
	return dev.Value, kind, i
}

// tabletEvent is a session on the home store's shared tablet, logged in
// with the phone; or, rarely, a visit on the tablet nobody logged into,
// which the platform attributes to the member last linked to the tablet.
func (g *Generator) tabletEvent(ev *mcv1.ChannelEvent, i int, at int64) (key, kind string, shopper int) {
	st := &g.st[i]
	t := g.tabletOf(i)
	tb := &g.tablets[t]
	tablet := idf(tDevice, tabletIDs[t])
	ev.StoreId = storeIDs[t/TabletsPerStore]
	if tb.used && g.rng.Float64() < 0.15 {
		ev.Identifiers = []*mcv1.Identifier{tablet}
		ev.Payload = &mcv1.ChannelEvent_Visit{Visit: &mcv1.Visit{DwellSeconds: int32(20 + g.rng.IntN(300))}}
		return tablet.Value, KindVisit, int(tb.last)
	}
	ev.Identifiers = []*mcv1.Identifier{idf(tPhone, g.phone(i)), tablet}
	tb.used = true
	if st.flags&stUsedTablet == 0 {
		st.flags |= stUsedTablet
		tb.last = int32(i)
	}
	switch u := g.rng.Float64(); {
	case u < 0.5:
		kind = KindBrowse
		ev.Payload = &mcv1.ChannelEvent_Browse{Browse: g.browse(i, "/store/kiosk/product/")}
	case u < 0.8 && st.lastCheckIn != localDay(at)+1:
		kind = KindCheckIn
		st.lastCheckIn = localDay(at) + 1
		ev.Payload = &mcv1.ChannelEvent_CheckIn{CheckIn: &mcv1.CheckIn{}}
	default:
		kind = KindVisit
		ev.Payload = &mcv1.ChannelEvent_Visit{Visit: &mcv1.Visit{DwellSeconds: int32(30 + g.rng.IntN(600))}}
	}
	return tablet.Value, kind, i
}

// mpEvent: anonymous browsing by openid (some shoppers), then a sign-up
// with openid, unionid and phone, then the usual mix.
func (g *Generator) mpEvent(ev *mcv1.ChannelEvent, i int, at int64) (key, kind string) {
	s, st := &g.shops[i], &g.st[i]
	k := int(st.mp)
	st.mp++
	oid := openIDIdentifier(g.openID(i))
	key = oid.Value
	switch {
	case s.is(mpAnonFirst) && k < int(s.mpAnonN):
		ev.Identifiers = []*mcv1.Identifier{oid}
		if g.rng.Float64() < 0.7 {
			ev.Payload = &mcv1.ChannelEvent_Browse{Browse: g.browse(i, "/pages/product/detail?sku=")}
			return key, KindBrowse
		}
		ev.Payload = &mcv1.ChannelEvent_Visit{Visit: &mcv1.Visit{DwellSeconds: int32(5 + g.rng.ExpFloat64()*120)}}
		return key, KindVisit
	case st.flags&stMPSignedUp == 0:
		st.flags |= stMPSignedUp
		ev.Identifiers = []*mcv1.Identifier{oid}
		if s.is(hasUnion) {
			ev.Identifiers = append(ev.Identifiers, idf(tUnionID, g.unionID(i)))
		}
		ev.Identifiers = append(ev.Identifiers, idf(tPhone, g.phone(i)))
		ev.Payload = &mcv1.ChannelEvent_SignUp{SignUp: g.signUp(i)}
		g.referredSignUp(i, at)
		return key, KindSignUp
	}
	kind = g.digitalKind(st, at, mpKinds)
	ev.Identifiers = []*mcv1.Identifier{oid}
	if s.is(hasUnion) {
		ev.Identifiers = append(ev.Identifiers, idf(tUnionID, g.unionID(i)))
	}
	if g.rng.Float64() < 0.4 {
		ev.Identifiers = append(ev.Identifiers, idf(tPhone, g.phone(i)))
	}
	g.digitalPayload(ev, i, at, kind, key)
	return key, kind
}

type kindWeight struct {
	kind string
	cum  float64
}

var appKinds = []kindWeight{{KindTransaction, 0.24}, {KindBrowse, 0.58}, {KindCheckIn, 0.78}, {KindShare, 0.84}, {KindReview, 0.90}, {KindVisit, 1}}
var mpKinds = []kindWeight{{KindTransaction, 0.28}, {KindBrowse, 0.60}, {KindCheckIn, 0.78}, {KindShare, 0.88}, {KindReview, 0.93}, {KindVisit, 1}}

// digitalKind draws the kind of an app or mini-program event; a second
// check-in the same day becomes browsing.
func (g *Generator) digitalKind(st *state, at int64, mix []kindWeight) string {
	u := g.rng.Float64()
	kind := mix[len(mix)-1].kind
	for _, kw := range mix {
		if u < kw.cum {
			kind = kw.kind
			break
		}
	}
	if kind == KindCheckIn {
		if st.lastCheckIn == localDay(at)+1 {
			return KindBrowse
		}
		st.lastCheckIn = localDay(at) + 1
	}
	return kind
}

func (g *Generator) digitalPayload(ev *mcv1.ChannelEvent, i int, at int64, kind, key string) {
	page := "/product/"
	if ev.Channel == mcv1.Channel_CHANNEL_MINIPROGRAM {
		page = "/pages/product/detail?sku="
	}
	switch kind {
	case KindTransaction:
		g.transaction(ev, i, at, key)
	case KindBrowse:
		ev.Payload = &mcv1.ChannelEvent_Browse{Browse: g.browse(i, page)}
	case KindCheckIn:
		ev.Payload = &mcv1.ChannelEvent_CheckIn{CheckIn: &mcv1.CheckIn{}}
	case KindShare:
		content := shareContents[g.rng.IntN(len(shareContents))]
		if g.rng.Float64() < 0.5 {
			content = "sku:" + g.product(&g.shops[i]).sku
		}
		ev.Payload = &mcv1.ChannelEvent_Share{Share: &mcv1.Share{ContentId: content, Target: shareTargets[g.rng.IntN(len(shareTargets))]}}
	case KindReview:
		ev.Payload = &mcv1.ChannelEvent_Review{Review: g.review(i)}
	default:
		ev.Payload = &mcv1.ChannelEvent_Visit{Visit: &mcv1.Visit{DwellSeconds: int32(10 + g.rng.ExpFloat64()*180)}}
	}
}

func (g *Generator) browse(i int, page string) *mcv1.Browse {
	c, p := g.productOf(&g.shops[i])
	return &mcv1.Browse{Sku: p.sku, Category: categories[c].name, Page: page + p.sku}
}

func (g *Generator) review(i int) *mcv1.Review {
	var rating int32
	switch u := g.rng.Float64(); {
	case u < 0.45:
		rating = 5
	case u < 0.75:
		rating = 4
	case u < 0.87:
		rating = 3
	case u < 0.93:
		rating = 2
	default:
		rating = 1
	}
	text := int32(0)
	if g.rng.Float64() < 0.7 {
		text = int32(10 + g.rng.IntN(400))
	}
	return &mcv1.Review{Sku: g.product(&g.shops[i]).sku, Rating: rating, TextLength: text}
}

func (g *Generator) signUp(i int) *mcv1.SignUp {
	su := &mcv1.SignUp{BirthDate: timestamppb.New(g.birthDate(i)), Gender: g.gender(i), City: cities[g.shops[i].city].name}
	if r := g.shops[i].referrer; r >= 0 {
		su.ReferralCode = g.referralCode(int(r))
	}
	return su
}

// referredSignUp schedules the referrer's Referral event a few minutes
// after a referred shopper's first sign-up.
func (g *Generator) referredSignUp(i int, at int64) {
	s, st := &g.shops[i], &g.st[i]
	if s.referrer < 0 || st.flags&stReferralSent != 0 {
		return
	}
	st.flags |= stReferralSent
	g.schedule(&pending{due: at + int64(60_000+g.rng.IntN(30*60_000)), kind: KindReferral, shopper: int32(s.referrer), referee: int32(i)})
}

// pickCategory draws a basket category with the shopper's preferences:
// two favourite categories weigh five times more; baby and pet products
// only for households with a baby or a pet.
func (g *Generator) pickCategory(s *shopper) int {
	var w [len(categoryWeights)]float64
	total := 0.0
	for c := range w {
		x := categoryWeights[c]
		if c == int(s.fav[0]) || c == int(s.fav[1]) {
			x *= 5
		}
		switch {
		case c == catBaby && !s.is(hasBaby), c == catPet && !s.is(hasPet):
			x = 0
		case c == catBaby, c == catPet:
			x *= 4
		}
		w[c] = x
		total += x
	}
	u := g.rng.Float64() * total
	for c, x := range w {
		u -= x
		if u < 0 {
			return c
		}
	}
	return len(w) - 1
}

var categoryWeights = func() [17]float64 {
	var w [17]float64
	for i, c := range categories {
		w[i] = c.weight
	}
	return w
}()

func (g *Generator) productOf(s *shopper) (int, *product) {
	c := g.pickCategory(s)
	ps := categories[c].products
	// Earlier products of a category sell more (a mild Zipf).
	k := int(float64(len(ps)) * g.rng.Float64() * g.rng.Float64())
	return c, &ps[k]
}

func (g *Generator) product(s *shopper) *product {
	_, p := g.productOf(s)
	return p
}

var posLines = [6]float64{0.30, 0.55, 0.73, 0.85, 0.94, 1}
var onlineLines = [6]float64{0.12, 0.32, 0.54, 0.74, 0.88, 1}

// basket draws 1–6 lines; line promotions are 5–30% off.
func (g *Generator) basket(s *shopper, ch mcv1.Channel) (items []*mcv1.LineItem, total, discount int64) {
	dist := &posLines
	if ch != mcv1.Channel_CHANNEL_POS {
		dist = &onlineLines
	}
	u := g.rng.Float64()
	n := 1
	for n < 6 && u >= dist[n-1] {
		n++
	}
	if s.is(family) && n < 6 && g.rng.Float64() < 0.5 {
		n++
	}
	items = make([]*mcv1.LineItem, 0, n)
	for k := 0; k < n; k++ {
		c, p := g.productOf(s)
		q := 1
		switch {
		case p.price >= 50000:
		case p.price < 2000 && g.rng.Float64() < 0.45:
			q = 2 + g.rng.IntN(categories[c].maxQty)
		case g.rng.Float64() < 0.15:
			q = 2
		}
		gross := p.price * int64(q)
		var off int64
		if g.rng.Float64() < 0.18 {
			off = gross * int64(5+g.rng.IntN(26)) / 100
		}
		items = append(items, &mcv1.LineItem{Sku: p.sku, Category: categories[c].name, Brand: p.brand, Quantity: int32(q),
			UnitPrice: cny(p.price), Amount: cny(gross - off)})
		total += gross - off
		discount += off
	}
	return items, total, discount
}

const (
	day  = 24 * 3600 * 1000
	hour = 3600 * 1000
	// Purchase points stay pending for the programme's return window
	// (168 h); a margin on top.
	matureAfter = 8 * day
)

// transaction fills ev with a purchase of shopper i, maybe redeeming
// points, maybe with a coupon code, and maybe schedules its refund.
func (g *Generator) transaction(ev *mcv1.ChannelEvent, i int, at int64, key string) {
	s, st := &g.shops[i], &g.st[i]
	items, total, discount := g.basket(s, ev.Channel)
	prefix := ev.StoreId
	switch ev.Channel {
	case mcv1.Channel_CHANNEL_APP:
		prefix = "APP"
	case mcv1.Channel_CHANNEL_MINIPROGRAM:
		prefix = "MP"
	}
	tx := &mcv1.Transaction{OrderId: prefix + "-" + g.ids + "-" + strconv.FormatUint(g.n, 10), Total: cny(total), Items: items}
	if discount > 0 {
		tx.Discount = cny(discount)
	}
	// Points: a conservative estimate of what the programme has made
	// available (1 point per yuan paid, matured after the return window).
	if st.pend > 0 && at-st.pendLast > matureAfter {
		st.mature += st.pend
		st.pend = 0
	}
	var redeemed int64
	if g.cfg.RedeemRate > 0 && st.mature >= 100 && g.rng.Float64() < g.cfg.RedeemRate {
		want := []int64{100, 200, 300, 500, 1000}[g.rng.IntN(5)]
		limit := min(st.mature, total/2) / 100 * 100
		if redeemed = min(want, limit); redeemed >= 100 {
			tx.PointsRedeemed = redeemed
			st.mature -= redeemed
			g.stats.Redemptions++
		} else {
			redeemed = 0
		}
	}
	if g.cfg.CouponRate > 0 && total >= 5000 && g.rng.Float64() < g.cfg.CouponRate {
		tpl := "C10"
		if total >= 20000 && g.rng.IntN(2) == 0 {
			tpl = "P10"
		}
		tx.CouponCodes = []string{tpl + "-" + strconv.FormatUint(g.rng.Uint64()%2821109907456, 36)} // 8 base-36 digits at most
		g.stats.Coupons++
	}
	st.pend += (total - redeemed) / 100
	st.pendLast = at
	ev.Payload = &mcv1.ChannelEvent_Transaction{Transaction: tx}

	if g.cfg.RefundRate > 0 && g.rng.Float64() < g.cfg.RefundRate {
		p := &pending{kind: KindRefund, shopper: int32(i), channel: ev.Channel, store: ev.StoreId, key: key,
			ids: ev.Identifiers, order: tx.OrderId, original: ev.EventId}
		delay := 2*hour + int64(g.rng.ExpFloat64()*30*hour)
		p.due = at + min(delay, 160*hour)
		if g.rng.Float64() < 0.4 || len(items) == 1 && items[0].Quantity == 1 {
			p.amount, p.items = total, items
		} else {
			line := items[g.rng.IntN(len(items))]
			if line.Quantity > 1 && g.rng.IntN(2) == 0 {
				unit := line.Amount.AmountMinor / int64(line.Quantity)
				p.amount = unit
				p.items = []*mcv1.LineItem{{Sku: line.Sku, Category: line.Category, Brand: line.Brand, Quantity: 1,
					UnitPrice: line.UnitPrice, Amount: cny(unit)}}
			} else {
				p.amount, p.items = line.Amount.AmountMinor, []*mcv1.LineItem{line}
			}
		}
		g.schedule(p)
	}
}

// pending is an event scheduled for later: a refund or a referral.
type pending struct {
	due      int64
	seq      uint64
	kind     string
	shopper  int32
	referee  int32
	channel  mcv1.Channel
	store    string
	key      string
	ids      []*mcv1.Identifier
	order    string
	original string
	amount   int64
	items    []*mcv1.LineItem
}

type schedQueue []*pending

func (q schedQueue) Len() int { return len(q) }
func (q schedQueue) Less(a, b int) bool {
	if q[a].due != q[b].due {
		return q[a].due < q[b].due
	}
	return q[a].seq < q[b].seq
}
func (q schedQueue) Swap(a, b int) { q[a], q[b] = q[b], q[a] }
func (q *schedQueue) Push(x any)   { *q = append(*q, x.(*pending)) }
func (q *schedQueue) Pop() any {
	old := *q
	p := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	return p
}

func (g *Generator) schedule(p *pending) {
	g.seq++
	p.seq = g.seq
	heap.Push(&g.queue, p)
}

// scheduled emits a due refund or referral at time at.
func (g *Generator) scheduled(p *pending, at int64) Record {
	ev := &mcv1.ChannelEvent{EventId: g.eventID(), OccurredAt: ts(at)}
	i := int(p.shopper)
	if p.kind == KindRefund {
		ev.Channel, ev.StoreId, ev.Identifiers = p.channel, p.store, p.ids
		ev.Payload = &mcv1.ChannelEvent_Refund{Refund: &mcv1.Refund{OrderId: p.order, OriginalEventId: p.original,
			Amount: cny(p.amount), Items: p.items}}
		// The refund reverses the order's points (assume the matured ones).
		g.st[i].mature -= p.amount/100 + 1
		return g.record(ev, p.key, KindRefund, i, at)
	}
	s, st := &g.shops[i], &g.st[i]
	phone := idf(tPhone, g.phone(i))
	var key string
	if s.is(usesApp) {
		gen := g.curDevice(i, int(st.app))
		dev := idf(tDevice, g.device(i, gen))
		ev.Channel, ev.Identifiers, key = mcv1.Channel_CHANNEL_APP, []*mcv1.Identifier{phone, dev}, dev.Value
		st.flags |= stDev1Linked << gen
	} else {
		oid := openIDIdentifier(g.openID(i))
		ev.Channel, ev.Identifiers, key = mcv1.Channel_CHANNEL_MINIPROGRAM, []*mcv1.Identifier{oid}, oid.Value
		if s.is(hasUnion) {
			ev.Identifiers = append(ev.Identifiers, idf(tUnionID, g.unionID(i)))
		}
		ev.Identifiers = append(ev.Identifiers, phone)
	}
	ev.Payload = &mcv1.ChannelEvent_Referral{Referral: &mcv1.Referral{ReferralCode: g.referralCode(i),
		Referee: idf(tPhone, g.phone(int(p.referee)))}}
	return g.record(ev, key, KindReferral, i, at)
}

// clock spreads Events records over the span by weight: every hour of the
// span has a weight by local weekday and hour, and record k sits at
// cumulative weight (k+u)·W/Events with u uniform in [0,1) — stratified, so
// times never decrease and exactly Events records fill the span.
type clock struct {
	start  int64
	end    int64
	w      []float64
	idx    int
	cum    float64
	step   float64
	events uint64
	last   int64
}

// Relative activity by local hour: breakfast, lunch and evening peaks; the
// weekend starts later and is busier in the afternoon.
var weekdayHours = [24]float64{
	0.5, 0.25, 0.15, 0.12, 0.12, 0.3, 1.2, 3.2, 4.6, 3.4, 3.0, 4.6,
	5.6, 4.2, 2.8, 2.8, 3.2, 4.4, 5.8, 6.0, 4.8, 3.4, 2.0, 1.0,
}

var weekendHours = [24]float64{
	0.8, 0.4, 0.2, 0.12, 0.1, 0.15, 0.5, 1.4, 2.6, 3.8, 4.6, 5.2,
	5.6, 5.4, 5.4, 5.6, 5.6, 5.6, 6.0, 5.8, 5.0, 3.8, 2.4, 1.4,
}

var dayFactor = [7]float64{1.30, 0.90, 0.92, 0.95, 0.97, 1.10, 1.35} // Sunday first

func newClock(start time.Time, days, events int) clock {
	c := clock{start: start.UnixMilli(), events: uint64(events)}
	c.end = c.start + int64(days)*day
	c.w = make([]float64, days*24)
	total := 0.0
	for k := range c.w {
		mid := time.UnixMilli(c.start + int64(k)*hour + hour/2).In(cst)
		h := weekdayHours
		if wd := mid.Weekday(); wd == time.Saturday || wd == time.Sunday {
			h = weekendHours
		}
		c.w[k] = h[mid.Hour()] * dayFactor[mid.Weekday()]
		total += c.w[k]
	}
	c.step = total / float64(events)
	c.last = c.start
	return c
}

// next is the time of record k (0-based).
func (c *clock) next(k uint64, u float64) int64 {
	t := c.end
	if k < c.events {
		pos := (float64(k) + u) * c.step
		for c.idx < len(c.w) && c.cum+c.w[c.idx] <= pos {
			c.cum += c.w[c.idx]
			c.idx++
		}
		if c.idx < len(c.w) {
			frac := (pos - c.cum) / c.w[c.idx]
			t = c.start + int64(c.idx)*hour + int64(math.Min(frac, 1)*hour)
		}
	}
	t = min(max(t, c.last), c.end)
	c.last = t
	return t
}

// aliasTable draws shopper indexes in proportion to their weights in O(1)
// (Vose's alias method).
type aliasTable struct {
	idx   []int32
	prob  []float64
	alias []int32
}

func newAlias(shops []shopper, flag uint16) aliasTable {
	var t aliasTable
	total := 0.0
	for i := range shops {
		if shops[i].is(flag) {
			t.idx = append(t.idx, int32(i))
			total += float64(shops[i].weight)
		}
	}
	n := len(t.idx)
	t.prob = make([]float64, n)
	t.alias = make([]int32, n)
	scaled := make([]float64, n)
	var small, large []int32
	for k, i := range t.idx {
		scaled[k] = float64(shops[i].weight) * float64(n) / total
		if scaled[k] < 1 {
			small = append(small, int32(k))
		} else {
			large = append(large, int32(k))
		}
	}
	for len(small) > 0 && len(large) > 0 {
		s, l := small[len(small)-1], large[len(large)-1]
		small = small[:len(small)-1]
		t.prob[s], t.alias[s] = scaled[s], l
		scaled[l] -= 1 - scaled[s]
		if scaled[l] < 1 {
			large = large[:len(large)-1]
			small = append(small, l)
		}
	}
	for _, l := range large {
		t.prob[l] = 1
	}
	for _, s := range small {
		t.prob[s] = 1
	}
	return t
}

func (t *aliasTable) pick(r *rand.Rand) int {
	k := r.IntN(len(t.idx))
	if r.Float64() < t.prob[k] {
		return int(t.idx[k])
	}
	return int(t.idx[t.alias[k]])
}
