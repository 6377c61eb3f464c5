package tags

import (
	"bytes"
	"cmp"
	"encoding/json"
	"slices"
	"sort"
	"strings"
	"time"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/services/facts"
)

// Retention is how far back a member's feature state keeps single
// purchases and interactions: the longest window plus a margin. Older
// activity survives only in the lifetime totals.
const Retention = 400 * 24 * time.Hour

// Fact is one member event as the tag engine sees it: what the streaming
// worker takes from a MemberEvent and what backfill reads back from
// ClickHouse's member_events, so both fold the same thing. Times are whole
// seconds (ClickHouse DateTime).
type Fact struct {
	EventID string
	// Kind: transaction, refund, visit, browse, sign_up, check_in, share,
	// referral, review.
	Kind    string
	Channel string // pos, app, miniprogram, web, crm, backoffice
	Store   string
	At      time.Time
	// Origin is the member the event is attributed to (resolution origin).
	Origin string
	// Transactions and refunds, in minor units.
	OrderID        string
	Amount         int64
	Discount       int64
	PointsRedeemed int64
	Coupons        int
	Items          []Item
	Rating         int
}

// Item is one basket line.
type Item struct {
	SKU, Category, Brand string
	Quantity             int64
	Amount               int64
}

// Event kinds (facts' vocabulary).
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

// FactFromEvent converts a resolved member event.
func FactFromEvent(ev *mcv1.MemberEvent) Fact {
	f := Fact{
		EventID: ev.GetEventId(),
		Channel: facts.ChannelName(ev.GetChannel()),
		Store:   ev.GetStoreId(),
		At:      ev.GetOccurredAt().AsTime().Truncate(time.Second),
		Origin:  ev.GetResolution().GetOriginMemberId(),
	}
	if f.Origin == "" {
		f.Origin = ev.GetMemberId()
	}
	items := func(in []*mcv1.LineItem) []Item {
		out := make([]Item, 0, len(in))
		for _, it := range in {
			out = append(out, Item{SKU: it.GetSku(), Category: it.GetCategory(), Brand: it.GetBrand(),
				Quantity: int64(it.GetQuantity()), Amount: it.GetAmount().GetAmountMinor()})
		}
		return out
	}
	f.Kind = facts.Kind(ev)
	switch p := ev.GetPayload().(type) {
	case *mcv1.MemberEvent_Transaction:
		t := p.Transaction
		f.OrderID = t.GetOrderId()
		f.Amount, f.Discount = t.GetTotal().GetAmountMinor(), t.GetDiscount().GetAmountMinor()
		f.PointsRedeemed, f.Coupons, f.Items = t.GetPointsRedeemed(), len(t.GetCouponCodes()), items(t.GetItems())
	case *mcv1.MemberEvent_Refund:
		f.OrderID, f.Amount, f.Items = p.Refund.GetOrderId(), p.Refund.GetAmount().GetAmountMinor(), items(p.Refund.GetItems())
	case *mcv1.MemberEvent_Review:
		f.Rating = int(p.Review.GetRating())
	}
	return f
}

// State is a member's feature state, kept in PostgreSQL (member_features)
// and folded event by event. Every record keeps the member it came from, so
// an unmerge can split it again.
type State struct {
	// Purchases and interactions of the last Retention, oldest first.
	Purchases []*Purchase `json:"p,omitempty"`
	Acts      []Act       `json:"a,omitempty"`
	// Lifetime totals per origin member.
	Life map[string]*Lifetime `json:"l,omitempty"`

	// snap is what the labels last computed for the state were computed
	// from (see Catalog.Refresh); nil when unknown (a state from JSON, a
	// new one). It is stored with the state (EncodeState).
	snap *snapshot
	// pending are the records Fold added since snap; stale says the
	// records changed otherwise (merge, split, trim, backfill), so the
	// window aggregates in snap cannot be brought forward.
	pending []record
	stale   bool
	// dict is the string list the state was decoded with; nil when it was
	// not decoded from the binary form.
	dict *dictionary
	// base is the stored base part the state was decoded with or last
	// written as (EncodeStateParts); nil when unknown.
	base *stateBase
}

// stateBase describes a stored base part: how many records and strings
// it holds, and its size.
type stateBase struct {
	records, strings, bytes int
}

// record is a purchase or an interaction added to a state.
type record struct {
	p *Purchase
	a Act
}

// Purchase is one transaction.
type Purchase struct {
	Order    string `json:"o,omitempty"`
	At       int64  `json:"t"`
	Amount   int64  `json:"m"`
	Discount int64  `json:"d,omitempty"`
	Points   int64  `json:"r,omitempty"`
	Coupons  int    `json:"c,omitempty"`
	Channel  string `json:"ch,omitempty"`
	Store    string `json:"s,omitempty"`
	// Items: quantity, and amount per category and brand; ItemsKnown is
	// false when the channel sent no basket lines.
	ItemsKnown bool    `json:"ik,omitempty"`
	Quantity   int64   `json:"q,omitempty"`
	Categories Amounts `json:"cat,omitempty"`
	Brands     Amounts `json:"br,omitempty"`
	Origin     string  `json:"g"`
	Event      string  `json:"e"`
	// Purchase filters matched (FM) and undecidable (FU), as bit sets over
	// the filters' positions, under the filter definitions FV.
	FV string     `json:"fv,omitempty"`
	FM filterBits `json:"fm,omitempty"`
	FU filterBits `json:"fu,omitempty"`

	stored // as decoded
}

// stored is a record's encoding as it was decoded, with the string list
// its references are into: EncodeState writes an unchanged record back as
// it was instead of encoding it again. Whatever changes a decoded record
// clears it.
type stored struct {
	raw  string
	dict *dictionary
	// inBase: the record is in the stored base part (EncodeStateParts).
	inBase bool
}

// dictionary is the string list of a decoded state.
type dictionary struct{ strs []string }

// filterBits is a bit set over the purchase filters' positions. States
// written before the bit sets kept filter ids (strings) here: those decode
// as no set, and match evaluates the filters again instead of the member's
// state failing to load.
type filterBits []uint64

func (s *filterBits) UnmarshalJSON(b []byte) error {
	if bytes.IndexByte(b, '"') >= 0 {
		*s = nil
		return nil
	}
	var v []uint64
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*s = v
	return nil
}

// Act is an interaction or a refund.
type Act struct {
	At     int64  `json:"t"`
	Kind   string `json:"k"`
	Order  string `json:"o,omitempty"`
	Amount int64  `json:"m,omitempty"`
	Rating int    `json:"r,omitempty"`
	Origin string `json:"g"`
	Event  string `json:"e"`

	stored // as decoded
}

// Lifetime is what is known of a member beyond the retention window.
type Lifetime struct {
	Spend         int64 `json:"s"`
	Orders        int64 `json:"o"`
	Refunded      int64 `json:"r,omitempty"`
	FirstPurchase int64 `json:"fp,omitempty"`
	LastPurchase  int64 `json:"lp,omitempty"`
	FirstSeen     int64 `json:"fs"`
	LastSeen      int64 `json:"ls"`
	SignedUp      bool  `json:"su,omitempty"`
}

// Fold adds one fact to the state. It reports false when the event was
// already folded.
func (s *State) Fold(f Fact) bool {
	if s.has(f.EventID) {
		return false
	}
	t := f.At.Unix()
	switch f.Kind {
	case KindTransaction:
		p := &Purchase{Order: f.OrderID, At: t, Amount: f.Amount, Discount: f.Discount, Points: f.PointsRedeemed,
			Coupons: f.Coupons, Channel: f.Channel, Store: f.Store, Origin: f.Origin, Event: f.EventID}
		if len(f.Items) > 0 {
			p.ItemsKnown = true
			for _, it := range f.Items {
				p.Quantity += it.Quantity
				if it.Category != "" {
					p.Categories.add(strings.ToLower(it.Category), it.Amount)
				}
				if it.Brand != "" {
					p.Brands.add(strings.ToLower(it.Brand), it.Amount)
				}
			}
		}
		s.addPurchase(p)
		s.pending = append(s.pending, record{p: p})
		return true
	case KindRefund:
		a := Act{At: t, Kind: f.Kind, Order: f.OrderID, Amount: f.Amount, Origin: f.Origin, Event: f.EventID}
		s.addAct(a)
		s.pending = append(s.pending, record{a: a})
	case KindReview:
		a := Act{At: t, Kind: f.Kind, Rating: f.Rating, Origin: f.Origin, Event: f.EventID}
		s.addAct(a)
		s.pending = append(s.pending, record{a: a})
	default:
		a := Act{At: t, Kind: f.Kind, Origin: f.Origin, Event: f.EventID}
		s.addAct(a)
		s.pending = append(s.pending, record{a: a})
	}
	return true
}

func (s *State) has(event string) bool {
	for _, p := range s.Purchases {
		if p.Event == event {
			return true
		}
	}
	for _, a := range s.Acts {
		if a.Event == event {
			return true
		}
	}
	return false
}

func (s *State) life(origin string, t int64) *Lifetime {
	if s.Life == nil {
		s.Life = map[string]*Lifetime{}
	}
	l := s.Life[origin]
	if l == nil {
		l = &Lifetime{FirstSeen: t, LastSeen: t}
		s.Life[origin] = l
	}
	l.FirstSeen, l.LastSeen = min(l.FirstSeen, t), max(l.LastSeen, t)
	return l
}

// AddPurchase adds a purchase record and its lifetime totals.
func (s *State) AddPurchase(p *Purchase) {
	s.addPurchase(p)
	s.stale = true
}

// AddAct adds an interaction or refund record and its lifetime totals.
func (s *State) AddAct(a Act) {
	s.addAct(a)
	s.stale = true
}

// addPurchase inserts p after the purchases at or before its time (what a
// stable sort of the appended list gives).
func (s *State) addPurchase(p *Purchase) {
	l := s.life(p.Origin, p.At)
	i, _ := slices.BinarySearchFunc(s.Purchases, p.At+1, func(q *Purchase, t int64) int { return cmp.Compare(q.At, t) })
	s.Purchases = slices.Insert(s.Purchases, i, p)
	l.Spend += p.Amount
	l.Orders++
	if l.FirstPurchase == 0 || p.At < l.FirstPurchase {
		l.FirstPurchase = p.At
	}
	l.LastPurchase = max(l.LastPurchase, p.At)
}

func (s *State) addAct(a Act) {
	l := s.life(a.Origin, a.At)
	i, _ := slices.BinarySearchFunc(s.Acts, a.At+1, func(b Act, t int64) int { return cmp.Compare(b.At, t) })
	s.Acts = slices.Insert(s.Acts, i, a)
	switch a.Kind {
	case KindRefund:
		l.Refunded += a.Amount
	case KindSignUp:
		l.SignedUp = true
	}
}

// Keep adds the records of old that s does not have (events not yet in the
// history s was rebuilt from).
func (s *State) Keep(old *State) int {
	n := 0
	for _, p := range old.Purchases {
		if !s.has(p.Event) {
			s.AddPurchase(p)
			n++
		}
	}
	for _, a := range old.Acts {
		if !s.has(a.Event) {
			s.AddAct(a)
			n++
		}
	}
	return n
}

func (s *State) sort() {
	sort.SliceStable(s.Purchases, func(i, j int) bool { return s.Purchases[i].At < s.Purchases[j].At })
	sort.SliceStable(s.Acts, func(i, j int) bool { return s.Acts[i].At < s.Acts[j].At })
}

// Trim drops records older than Retention before now (their lifetime
// totals stay).
func (s *State) Trim(now time.Time) {
	cut := now.Add(-Retention).Unix()
	n := len(s.Purchases) + len(s.Acts)
	s.Purchases = slices.DeleteFunc(s.Purchases, func(p *Purchase) bool { return p.At < cut })
	s.Acts = slices.DeleteFunc(s.Acts, func(a Act) bool { return a.At < cut })
	if len(s.Purchases)+len(s.Acts) != n {
		// A trimmed refund may still reduce a purchase in a window.
		s.stale = true
	}
}

// Absorb folds another member's state into s (a merge).
func (s *State) Absorb(o *State) {
	s.stale = true
	seen := map[string]bool{}
	for _, p := range s.Purchases {
		seen[p.Event] = true
	}
	for _, a := range s.Acts {
		seen[a.Event] = true
	}
	for _, p := range o.Purchases {
		if !seen[p.Event] {
			s.Purchases = append(s.Purchases, p)
		}
	}
	for _, a := range o.Acts {
		if !seen[a.Event] {
			s.Acts = append(s.Acts, a)
		}
	}
	if s.Life == nil {
		s.Life = map[string]*Lifetime{}
	}
	for k, v := range o.Life {
		if cur, ok := s.Life[k]; ok {
			cur.Spend += v.Spend
			cur.Orders += v.Orders
			cur.Refunded += v.Refunded
			cur.FirstSeen, cur.LastSeen = min(cur.FirstSeen, v.FirstSeen), max(cur.LastSeen, v.LastSeen)
			if v.FirstPurchase != 0 && (cur.FirstPurchase == 0 || v.FirstPurchase < cur.FirstPurchase) {
				cur.FirstPurchase = v.FirstPurchase
			}
			cur.LastPurchase = max(cur.LastPurchase, v.LastPurchase)
			cur.SignedUp = cur.SignedUp || v.SignedUp
		} else {
			s.Life[k] = v
		}
	}
	s.sort()
}

// Split removes and returns the records whose origin is in origins (an
// unmerge).
func (s *State) Split(origins []string) *State {
	s.stale = true
	out := &State{Life: map[string]*Lifetime{}}
	keep := func(o string) bool { return !slices.Contains(origins, o) }
	var ps []*Purchase
	for _, p := range s.Purchases {
		if keep(p.Origin) {
			ps = append(ps, p)
		} else {
			out.Purchases = append(out.Purchases, p)
		}
	}
	var as []Act
	for _, a := range s.Acts {
		if keep(a.Origin) {
			as = append(as, a)
		} else {
			out.Acts = append(out.Acts, a)
		}
	}
	s.Purchases, s.Acts = ps, as
	for k, v := range s.Life {
		if !keep(k) {
			out.Life[k] = v
			delete(s.Life, k)
		}
	}
	return out
}

// Demographics are the canonical attributes the demographic features read.
type Demographics struct {
	BirthDate string // YYYY-MM-DD
	Gender    string
	City      string
}

// Amounts are amounts in minor units by key (a basket's categories or
// brands), in key order. In JSON they are an object, as the map they
// replaced.
type Amounts []Amount

// Amount is one key's amount.
type Amount struct {
	Key   string
	Minor int64
}

func (a *Amounts) add(key string, minor int64) {
	i, ok := slices.BinarySearchFunc(*a, key, func(x Amount, k string) int { return strings.Compare(x.Key, k) })
	if ok {
		(*a)[i].Minor += minor
		return
	}
	*a = slices.Insert(*a, i, Amount{Key: key, Minor: minor})
}

// MarshalJSON writes the amounts as an object.
func (a Amounts) MarshalJSON() ([]byte, error) {
	m := make(map[string]int64, len(a))
	for _, x := range a {
		m[x.Key] = x.Minor
	}
	return json.Marshal(m)
}

// UnmarshalJSON reads an object of amounts.
func (a *Amounts) UnmarshalJSON(b []byte) error {
	var m map[string]int64
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	out := make(Amounts, 0, len(m))
	for k, v := range m {
		out = append(out, Amount{Key: k, Minor: v})
	}
	slices.SortFunc(out, func(x, y Amount) int { return strings.Compare(x.Key, y.Key) })
	*a = out
	return nil
}
