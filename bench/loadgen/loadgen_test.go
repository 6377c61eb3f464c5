package loadgen

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"buf.build/go/protovalidate"
	"google.golang.org/protobuf/proto"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/identity"
)

// testStart is a fixed start so runs are byte-identical whenever they run.
var testStart = time.Date(2025, time.March, 3, 0, 0, 0, 0, cst)

func draw(g *Generator, n int) []Record {
	out := make([]Record, n)
	for k := range out {
		out[k] = g.Next()
	}
	return out
}

func TestDeterminism(t *testing.T) {
	cfg := Config{Seed: 42, Members: 2000, Start: testStart, Days: 30, Events: 20_000}
	a, b := draw(New(cfg), 10_000), draw(New(cfg), 10_000)
	for k := range a {
		x, y := a[k], b[k]
		if !bytes.Equal(x.Key, y.Key) || !bytes.Equal(x.Value, y.Value) || x.Malformed != y.Malformed || x.EventID != y.EventID ||
			x.Kind != y.Kind || x.Channel != y.Channel || x.Shopper != y.Shopper || !x.At.Equal(y.At) {
			t.Fatalf("record %d differs between two generators of the same config:\n%+v\n%+v", k, x, y)
		}
	}
	ga, gb := New(cfg), New(cfg)
	for i := 0; i < cfg.Members; i += 97 {
		if fmt.Sprint(ga.Shopper(i)) != fmt.Sprint(gb.Shopper(i)) {
			t.Fatalf("Shopper(%d) differs", i)
		}
	}

	// Another id prefix replays the same shoppers under new event and order ids.
	re := cfg
	re.IDPrefix = "run2"
	for k, r := range draw(New(re), 1000) {
		if !bytes.Equal(r.Key, a[k].Key) || r.EventID != "run2-"+strconv.Itoa(k+1) || (r.Malformed == "" && bytes.Equal(r.Value, a[k].Value)) {
			t.Fatalf("record %d with prefix run2: %+v, with the default: %+v", k, r, a[k])
		}
		if ev := (&mcv1.ChannelEvent{}); r.Kind == KindTransaction && r.Malformed == "" {
			if err := proto.Unmarshal(r.Value, ev); err != nil || !strings.Contains(ev.GetTransaction().GetOrderId(), "-run2-") {
				t.Fatalf("record %d: order id %q (%v)", k, ev.GetTransaction().GetOrderId(), err)
			}
		}
	}

	cfg.Seed = 43
	c := draw(New(cfg), 10_000)
	same := 0
	for k := range a {
		if bytes.Equal(a[k].Value, c[k].Value) {
			same++
		}
	}
	if same > 0 {
		t.Errorf("seeds 42 and 43 gave %d identical records of 10000", same)
	}
	if New(cfg).Shopper(0).Phone == New(Config{Seed: 42, Members: 2000, Start: testStart}).Shopper(0).Phone {
		t.Errorf("seeds 42 and 43 gave shopper 0 the same phone")
	}
}

// checker validates records the way ingest does: decode, protovalidate,
// identity normalisation, blocked values and routability.
type checker struct {
	t     *testing.T
	v     protovalidate.Validator
	norm  identity.Normalizer
	rules *identity.Rules
}

func newChecker(t *testing.T) *checker {
	t.Helper()
	v, err := protovalidate.New()
	if err != nil {
		t.Fatal(err)
	}
	return &checker{t: t, v: v, norm: identity.Normalizer{DefaultRegion: "CN"}, rules: identity.DefaultRules()}
}

// ruleIDs are the protovalidate rule ids an event violates.
func (c *checker) ruleIDs(ev *mcv1.ChannelEvent) []string {
	err := c.v.Validate(ev)
	if err == nil {
		return nil
	}
	var verr *protovalidate.ValidationError
	if !errors.As(err, &verr) {
		c.t.Fatalf("validate %s: %v", ev.GetEventId(), err)
	}
	var ids []string
	for _, v := range verr.Violations {
		ids = append(ids, v.Proto.GetRuleId())
	}
	return ids
}

// normalize returns the normalised values, or the first normaliser error.
func (c *checker) normalize(ids []*mcv1.Identifier) ([]string, error) {
	var out []string
	for _, id := range ids {
		v, err := c.norm.Normalize(id)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func payloadKind(ev *mcv1.ChannelEvent) string {
	switch ev.GetPayload().(type) {
	case *mcv1.ChannelEvent_Transaction:
		return KindTransaction
	case *mcv1.ChannelEvent_Refund:
		return KindRefund
	case *mcv1.ChannelEvent_Visit:
		return KindVisit
	case *mcv1.ChannelEvent_Browse:
		return KindBrowse
	case *mcv1.ChannelEvent_SignUp:
		return KindSignUp
	case *mcv1.ChannelEvent_CheckIn:
		return KindCheckIn
	case *mcv1.ChannelEvent_Share:
		return KindShare
	case *mcv1.ChannelEvent_Referral:
		return KindReferral
	case *mcv1.ChannelEvent_Review:
		return KindReview
	}
	return ""
}

func TestGoodRecordsPassIngest(t *testing.T) {
	const seed = 7
	cfg := Config{Seed: seed, Members: 3000, Start: testStart, Days: 30, Events: 60_000}
	g := New(cfg)
	recs := draw(g, 60_000)
	c := newChecker(t)
	known := map[string]bool{}
	for _, cat := range Categories() {
		known[cat] = true
	}
	cityOK := map[string]bool{}
	for _, ct := range cities {
		cityOK[ct.name] = true
	}
	type order struct {
		shopper int
		key     string
		total   int64
		order   string
	}
	orders := map[string]order{} // by event id
	// Devices presented with a creatable identifier, per Kafka key (one
	// partition): a device-only event must come after one of them.
	presented := map[string]map[string]bool{}
	seenIDs := map[string]bool{}
	last := time.Time{}
	good := 0
	for k, r := range recs {
		if r.Malformed != "" {
			continue
		}
		good++
		want := "lg-" + strconv.Itoa(seed) + "-" + strconv.Itoa(k+1)
		if r.EventID != want {
			t.Fatalf("record %d: event id %q, want %q", k, r.EventID, want)
		}
		ev := &mcv1.ChannelEvent{}
		if err := proto.Unmarshal(r.Value, ev); err != nil {
			t.Fatalf("%s does not decode: %v", r.EventID, err)
		}
		if ids := c.ruleIDs(ev); ids != nil {
			t.Fatalf("%s violates %v: %v", r.EventID, ids, ev)
		}
		if ev.GetEventId() != r.EventID || seenIDs[r.EventID] {
			t.Fatalf("%s: event id %q in the value, or seen twice", r.EventID, ev.GetEventId())
		}
		seenIDs[r.EventID] = true
		if payloadKind(ev) != r.Kind || ev.GetChannel() != r.Channel {
			t.Fatalf("%s: record says %s/%s, event is %s/%s", r.EventID, r.Kind, r.Channel, payloadKind(ev), ev.GetChannel())
		}
		at := ev.GetOccurredAt().AsTime()
		if !at.Equal(r.At) || at.Before(last) || at.Before(cfg.Start) || at.After(g.End()) {
			t.Fatalf("%s: occurred_at %s (record %s, previous %s, span %s–%s)", r.EventID, at, r.At, last, cfg.Start, g.End())
		}
		last = at

		// Identity: every identifier normalises; at least one is not a
		// placeholder; the event can find or create a member.
		norm, err := c.normalize(ev.GetIdentifiers())
		if err != nil {
			t.Fatalf("%s: identity normalisation refuses %v: %v", r.EventID, ev.GetIdentifiers(), err)
		}
		creatable, devices := false, []string{}
		for j, id := range ev.GetIdentifiers() {
			if c.rules.Blocked(id.GetType(), norm[j]) {
				if id.GetValue() != PlaceholderPhone {
					t.Fatalf("%s: blocked identifier %v", r.EventID, id)
				}
				continue
			}
			if c.rules.For(id.GetType()).MayCreate {
				creatable = true
			} else {
				devices = append(devices, id.GetValue())
			}
		}
		key := string(r.Key)
		if creatable {
			if presented[key] == nil {
				presented[key] = map[string]bool{}
			}
			for _, d := range devices {
				presented[key][d] = true
			}
		} else {
			if len(devices) == 0 {
				t.Fatalf("%s: no usable identifier: %v", r.EventID, ev.GetIdentifiers())
			}
			for _, d := range devices {
				if !presented[key][d] {
					t.Fatalf("%s: device-only event before device %s was presented with a creatable identifier under key %s", r.EventID, d, key)
				}
			}
		}
		// The key is one of the event's identifiers (a refund's too).
		if !slices.ContainsFunc(ev.GetIdentifiers(), func(id *mcv1.Identifier) bool { return id.GetValue() == key }) {
			t.Fatalf("%s: key %s is not among the identifiers %v", r.EventID, key, ev.GetIdentifiers())
		}
		// The identifiers are the shopper's own (or the shared tablet, or
		// the placeholder phone).
		if r.Shopper >= 0 {
			info := g.Shopper(r.Shopper)
			own := map[string]bool{info.Tablet: true, PlaceholderPhone: true}
			for _, id := range info.Identifiers() {
				own[id.GetValue()] = true
			}
			for _, id := range ev.GetIdentifiers() {
				if !own[id.GetValue()] && !strings.HasPrefix(id.GetValue(), "TABLET-") {
					t.Fatalf("%s: identifier %v is not shopper %d's (%+v)", r.EventID, id, r.Shopper, info)
				}
			}
		}

		switch p := ev.GetPayload().(type) {
		case *mcv1.ChannelEvent_Transaction:
			tx := p.Transaction
			var sum, disc int64
			for _, it := range tx.GetItems() {
				if !known[it.GetCategory()] || it.GetAmount().GetCurrency() != Currency || it.GetUnitPrice().GetCurrency() != Currency {
					t.Fatalf("%s: line %v", r.EventID, it)
				}
				sum += it.GetAmount().GetAmountMinor()
				disc += it.GetUnitPrice().GetAmountMinor()*int64(it.GetQuantity()) - it.GetAmount().GetAmountMinor()
			}
			if n := len(tx.GetItems()); n < 1 || n > 6 || sum != tx.GetTotal().GetAmountMinor() || disc != tx.GetDiscount().GetAmountMinor() ||
				tx.GetTotal().GetCurrency() != Currency {
				t.Fatalf("%s: %d lines summing to %d (discount %d) for %v", r.EventID, n, sum, disc, tx)
			}
			if pr := tx.GetPointsRedeemed(); pr%100 != 0 || pr > tx.GetTotal().GetAmountMinor()/2 {
				t.Fatalf("%s: redeems %d points on a basket of %d", r.EventID, pr, tx.GetTotal().GetAmountMinor())
			}
			orders[r.EventID] = order{shopper: r.Shopper, key: key, total: tx.GetTotal().GetAmountMinor(), order: tx.GetOrderId()}
		case *mcv1.ChannelEvent_Refund:
			rf := p.Refund
			o, ok := orders[rf.GetOriginalEventId()]
			if !ok || o.shopper != r.Shopper || o.key != key || o.order != rf.GetOrderId() ||
				rf.GetAmount().GetAmountMinor() <= 0 || rf.GetAmount().GetAmountMinor() > o.total {
				t.Fatalf("%s: refund %v of %+v (found %v)", r.EventID, rf, o, ok)
			}
		case *mcv1.ChannelEvent_SignUp:
			su := p.SignUp
			if !cityOK[su.GetCity()] || !su.GetBirthDate().AsTime().Before(at.AddDate(-15, 0, 0)) {
				t.Fatalf("%s: sign-up %v", r.EventID, su)
			}
		case *mcv1.ChannelEvent_Referral:
			if p.Referral.GetReferee().GetType() != tPhone || !strings.HasPrefix(p.Referral.GetReferralCode(), "RC") {
				t.Fatalf("%s: referral %v", r.EventID, p.Referral)
			}
		case *mcv1.ChannelEvent_Browse:
			if !known[p.Browse.GetCategory()] {
				t.Fatalf("%s: browse %v", r.EventID, p.Browse)
			}
		}
	}
	if good < 55_000 {
		t.Fatalf("only %d good records of 60000", good)
	}
	// Every shopper's phone is a valid mainland number and every
	// identifier normalises.
	for i := 0; i < cfg.Members; i++ {
		if _, err := c.normalize(g.Shopper(i).Identifiers()); err != nil {
			t.Fatalf("shopper %d: %v", i, err)
		}
	}
}

func TestMalformedRecordsAreRejected(t *testing.T) {
	cfg := Config{Seed: 11, Members: 2000, Start: testStart, Days: 30, Events: 30_000, MalformedRate: 0.2}
	recs := draw(New(cfg), 30_000)
	c := newChecker(t)
	goodDevices := map[string]bool{}
	for _, r := range recs {
		if r.Malformed != "" {
			continue
		}
		ev := &mcv1.ChannelEvent{}
		if err := proto.Unmarshal(r.Value, ev); err != nil {
			t.Fatal(err)
		}
		for _, id := range ev.GetIdentifiers() {
			goodDevices[id.GetValue()] = true
		}
	}
	// Rule ids each validation kind must violate.
	wantRules := map[string][]string{
		MalformedMissingIdentifiers: {"repeated.min_items"},
		MalformedNegativeAmount:     {"transaction.total_non_negative"},
		MalformedUnknownChannel:     {"enum.defined_only", "enum.not_in"},
		MalformedMissingTimestamp:   {"required"},
		MalformedMissingPayload:     {"required"},
		MalformedMissingEventID:     {"string.min_len"},
		MalformedBadCurrency:        {"string.pattern"},
		MalformedBadQuantity:        {"int32.gt_lte"},
		MalformedBadRating:          {"int32.gte_lte"},
	}
	counts := map[string]int{}
	for _, r := range recs {
		if r.Malformed == "" {
			continue
		}
		counts[r.Malformed]++
		ev := &mcv1.ChannelEvent{}
		err := proto.Unmarshal(r.Value, ev)
		if r.Malformed == MalformedUndecodable {
			if err == nil {
				t.Fatalf("%s (undecodable) decodes: %v", r.EventID, ev)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s (%s) does not decode: %v", r.EventID, r.Malformed, err)
		}
		rules := c.ruleIDs(ev)
		if want, ok := wantRules[r.Malformed]; ok {
			if !slices.ContainsFunc(rules, func(id string) bool { return slices.Contains(want, id) }) {
				t.Fatalf("%s (%s) violates %v, want one of %v", r.EventID, r.Malformed, rules, want)
			}
			continue
		}
		// The others are valid protobuf; identity resolution rejects them.
		if rules != nil {
			t.Fatalf("%s (%s) violates %v; it should pass validation and fail in identity", r.EventID, r.Malformed, rules)
		}
		norm, nerr := c.normalize(ev.GetIdentifiers())
		switch r.Malformed {
		case MalformedBadPhone, MalformedBadIdentifier:
			if !errors.Is(nerr, identity.ErrInvalidIdentifier) {
				t.Fatalf("%s (%s): identifiers %v normalise (%v)", r.EventID, r.Malformed, ev.GetIdentifiers(), nerr)
			}
		case MalformedPlaceholderIdentifiers:
			if nerr != nil {
				t.Fatalf("%s: %v", r.EventID, nerr)
			}
			for j, id := range ev.GetIdentifiers() {
				if !c.rules.Blocked(id.GetType(), norm[j]) {
					t.Fatalf("%s (%s): %v is not blocked", r.EventID, r.Malformed, id)
				}
			}
		case MalformedUnroutableDevice:
			if nerr != nil {
				t.Fatalf("%s: %v", r.EventID, nerr)
			}
			for _, id := range ev.GetIdentifiers() {
				if c.rules.For(id.GetType()).MayCreate || goodDevices[id.GetValue()] {
					t.Fatalf("%s (%s): %v may create a member or was seen in a good record", r.EventID, r.Malformed, id)
				}
			}
		default:
			t.Fatalf("unchecked kind %s", r.Malformed)
		}
	}
	for _, k := range MalformedKinds {
		if counts[k] < 50 {
			t.Errorf("only %d records of kind %s", counts[k], k)
		}
	}
	t.Logf("malformed by kind: %v", counts)
}

func TestRates(t *testing.T) {
	cfg := Config{Seed: 3, Members: 5000, Start: testStart, Days: 28, Events: 100_000}
	g := New(cfg)
	recs := draw(g, 100_000)
	var malformed, good int
	byChannel := map[mcv1.Channel]int{}
	byKind := map[string]int{}
	spend := make([]int64, cfg.Members)
	var weekendDays, weekdayDays [7]int
	byHour := [24]int{}
	redemptions, coupons := 0, 0
	for _, r := range recs {
		if r.Malformed != "" {
			malformed++
			continue
		}
		good++
		byChannel[r.Channel]++
		byKind[r.Kind]++
		local := r.At.In(cst)
		byHour[local.Hour()]++
		if wd := local.Weekday(); wd == time.Saturday || wd == time.Sunday {
			weekendDays[wd]++
		} else {
			weekdayDays[wd]++
		}
		if r.Kind == KindTransaction {
			ev := &mcv1.ChannelEvent{}
			if err := proto.Unmarshal(r.Value, ev); err != nil {
				t.Fatal(err)
			}
			tx := ev.GetTransaction()
			spend[r.Shopper] += tx.GetTotal().GetAmountMinor()
			if tx.GetPointsRedeemed() > 0 {
				redemptions++
			}
			if len(tx.GetCouponCodes()) > 0 {
				coupons++
			}
		}
	}
	n := float64(len(recs))
	if f := float64(malformed) / n; math.Abs(f-0.01) > 0.002 {
		t.Errorf("malformed fraction %.4f, want 0.01", f)
	}
	for ch, want := range map[mcv1.Channel]float64{mcv1.Channel_CHANNEL_POS: 0.60, mcv1.Channel_CHANNEL_APP: 0.25, mcv1.Channel_CHANNEL_MINIPROGRAM: 0.15} {
		if f := float64(byChannel[ch]) / float64(good); math.Abs(f-want) > 0.02 {
			t.Errorf("channel %s: %.3f of good records, want %.2f", ch, f, want)
		}
	}
	if f := float64(byKind[KindRefund]) / float64(byKind[KindTransaction]); f < 0.024 || f > 0.036 {
		t.Errorf("refunds are %.4f of transactions, want about 0.03", f)
	}
	for _, k := range []string{KindTransaction, KindRefund, KindVisit, KindBrowse, KindSignUp, KindCheckIn, KindShare, KindReferral, KindReview} {
		if byKind[k] == 0 {
			t.Errorf("no %s records", k)
		}
	}
	if redemptions < 100 || coupons < 50 {
		t.Errorf("%d redemptions and %d coupons, want some of each", redemptions, coupons)
	}
	// Pareto: the top 20% of shoppers spend most.
	sorted := slices.Clone(spend)
	slices.SortFunc(sorted, func(a, b int64) int { return int(b - a) })
	var top, all int64
	for k, s := range sorted {
		all += s
		if k < len(sorted)/5 {
			top += s
		}
	}
	share := float64(top) / float64(all)
	if share < 0.65 {
		t.Errorf("top 20%% of shoppers spend %.2f of the total, want a Pareto-like majority", share)
	}
	// Weekends are busier per day than weekdays; nights are quiet.
	var we, wd int
	for _, v := range weekendDays {
		we += v
	}
	for _, v := range weekdayDays {
		wd += v
	}
	if perWE, perWD := float64(we)/2, float64(wd)/5; perWE < 1.2*perWD {
		t.Errorf("weekend day %.0f records, weekday %.0f: want weekends busier", perWE, perWD)
	}
	if byHour[3]*10 > byHour[12] || byHour[19] < byHour[15] {
		t.Errorf("records by local hour %v: want quiet nights and an evening peak", byHour)
	}
	st := g.Stats()
	if st.Records != len(recs) || st.Malformed != malformed || st.ByKind[KindRefund] != byKind[KindRefund] {
		t.Errorf("stats %+v disagree with the records", st)
	}
	t.Logf("good %d, malformed %.4f, channels %v, kinds %v, refunds/transactions %.4f, redemptions %d, coupons %d, top-20%% spend share %.2f",
		good, float64(malformed)/n, byChannel, byKind, float64(byKind[KindRefund])/float64(byKind[KindTransaction]), redemptions, coupons, share)
}

// TestIdentityOverlaps checks the overlaps exist and replays the good
// records through a model of the identity rules (rules.yaml): unique
// identifiers find members and merge them, device ids attach but never
// merge, placeholders are ignored. Merges must happen, and only ever join
// records of one shopper.
func TestIdentityOverlaps(t *testing.T) {
	cfg := Config{Seed: 5, Members: 3000, Start: testStart, Days: 30, Events: 60_000}
	recs := draw(New(cfg), 60_000)
	rules := identity.DefaultRules()
	norm := identity.Normalizer{DefaultRegion: "CN"}

	cardsByPhone := map[string]map[string]bool{}
	devicesByPhone := map[string]map[string]bool{}
	phonesByDevice := map[string]map[string]bool{}
	add := func(m map[string]map[string]bool, k, v string) {
		if m[k] == nil {
			m[k] = map[string]bool{}
		}
		m[k][v] = true
	}

	// The model: members are union-find nodes.
	parent := []int{}
	find := func(m int) int {
		for parent[m] != m {
			parent[m] = parent[parent[m]]
			m = parent[m]
		}
		return m
	}
	shoppersOf := []map[int]bool{}
	unique := map[string]int{} // "type/value" -> member
	type link struct{ member, seq int }
	shared := map[string][]link{} // device -> members linked
	var created, merges, conflicts, sharedAttach, ignored int
	seq := 0
	for _, r := range recs {
		if r.Malformed != "" {
			continue
		}
		ev := &mcv1.ChannelEvent{}
		if err := proto.Unmarshal(r.Value, ev); err != nil {
			t.Fatal(err)
		}
		var phone string
		var cards, devices []string
		type nid struct {
			key    string
			unique bool
		}
		var ids []nid
		for _, id := range ev.GetIdentifiers() {
			v, err := norm.Normalize(id)
			if err != nil {
				t.Fatal(err)
			}
			if rules.Blocked(id.GetType(), v) {
				ignored++
				continue
			}
			switch id.GetType() {
			case tPhone:
				phone = v
			case tCard:
				cards = append(cards, v)
			case tDevice:
				devices = append(devices, v)
			}
			ids = append(ids, nid{key: id.GetType().String() + "/" + id.GetScope() + "/" + v, unique: rules.For(id.GetType()).Unique})
		}
		if phone != "" {
			for _, c := range cards {
				add(cardsByPhone, phone, c)
			}
			for _, d := range devices {
				add(devicesByPhone, phone, d)
				add(phonesByDevice, d, phone)
			}
		}
		// Resolve.
		var found []int
		newUnique := false
		for _, id := range ids {
			if !id.unique {
				continue
			}
			if m, ok := unique[id.key]; ok {
				if f := find(m); !slices.Contains(found, f) {
					found = append(found, f)
				}
			} else {
				newUnique = true
			}
		}
		target := -1
		switch {
		case len(found) > 0:
			target = found[0]
			for _, o := range found[1:] {
				if !rules.For(tPhone).MayMerge { // every unique type of the generator may merge
					conflicts++
					continue
				}
				parent[o] = target
				for s := range shoppersOf[o] {
					shoppersOf[target][s] = true
				}
				merges++
			}
		case !newUnique:
			// Only shared identifiers: the member last linked to them.
			best := link{-1, -1}
			for _, id := range ids {
				for _, l := range shared[id.key] {
					if l.seq > best.seq {
						best = l
					}
				}
			}
			if best.member < 0 {
				t.Fatalf("%s: unroutable %v", r.EventID, ev.GetIdentifiers())
			}
			target = find(best.member)
			sharedAttach++
		default:
			target = len(parent)
			parent = append(parent, target)
			shoppersOf = append(shoppersOf, map[int]bool{})
			created++
		}
		for _, id := range ids {
			if id.unique {
				if _, ok := unique[id.key]; !ok {
					unique[id.key] = target
				}
				continue
			}
			if !slices.ContainsFunc(shared[id.key], func(l link) bool { return find(l.member) == target }) {
				seq++
				shared[id.key] = append(shared[id.key], link{target, seq})
			}
		}
		if len(ids) > 1 || !strings.Contains(ids[0].key, "TABLET-") { // a tablet-only visit is attributed, not proof
			shoppersOf[target][r.Shopper] = true
		}
	}
	// Merges only ever join one shopper's records.
	members, impure := 0, 0
	for m := range parent {
		if find(m) != m {
			continue
		}
		members++
		if len(shoppersOf[m]) > 1 {
			impure++
		}
	}
	if impure > 0 {
		t.Errorf("%d members hold records of several shoppers", impure)
	}
	twoCards, twoDevices, sharedTablets := 0, 0, 0
	for _, cs := range cardsByPhone {
		if len(cs) > 1 {
			twoCards++
		}
	}
	for _, ds := range devicesByPhone {
		if len(ds) > 1 {
			twoDevices++
		}
	}
	for d, ps := range phonesByDevice {
		if len(ps) > 1 {
			if !strings.HasPrefix(d, "TABLET-") {
				t.Errorf("device %s used by %d phones", d, len(ps))
			}
			sharedTablets++
		}
	}
	multiMember := 0
	for k, ls := range shared {
		roots := map[int]bool{}
		for _, l := range ls {
			roots[find(l.member)] = true
		}
		if len(roots) > 1 && strings.Contains(k, "TABLET-") {
			multiMember++
		}
	}
	t.Logf("members %d (created %d, merges %d, conflicts %d), shared-only attributions %d, placeholders ignored %d; phones with 2 cards %d, with 2+ devices %d; tablets used by several phones %d, linked to several members %d",
		members, created, merges, conflicts, sharedAttach, ignored, twoCards, twoDevices, sharedTablets, multiMember)
	if merges < 50 || twoCards == 0 || twoDevices == 0 || sharedTablets == 0 || multiMember == 0 || ignored == 0 || sharedAttach == 0 {
		t.Errorf("missing overlaps: merges %d, phones with 2 cards %d, with 2 devices %d, shared tablets %d (%d multi-member), placeholders %d, shared-only %d",
			merges, twoCards, twoDevices, sharedTablets, multiMember, ignored, sharedAttach)
	}
}

func TestDefaultSpanEndsNow(t *testing.T) {
	before := time.Now()
	g := New(Config{Seed: 1, Members: 200, Events: 2000})
	if d := g.End().Sub(before); d < -time.Second || d > time.Second {
		t.Fatalf("end of span %s, want about now (%s)", g.End(), before)
	}
	var last time.Time
	for k := 0; k < 3000; k++ { // beyond Events: clamped at the end
		r := g.Next()
		if r.At.After(time.Now()) || r.At.Before(last) || r.At.Before(before.AddDate(0, 0, -DefaultDays).Add(-time.Second)) {
			t.Fatalf("record %d at %s (previous %s, now %s)", k, r.At, last, time.Now())
		}
		last = r.At
		if r.Malformed == "" {
			ev := &mcv1.ChannelEvent{}
			if err := proto.Unmarshal(r.Value, ev); err != nil || ev.GetOccurredAt().AsTime().After(time.Now()) {
				t.Fatalf("record %d: %v, occurred_at %s", k, err, ev.GetOccurredAt().AsTime())
			}
		}
	}
}

func TestSmallPopulations(t *testing.T) {
	for _, m := range []int{1, 2, 5} {
		g := New(Config{Seed: int64(m), Members: m, Start: testStart, Events: 500})
		for k := 0; k < 1000; k++ {
			if r := g.Next(); r.Shopper >= m {
				t.Fatalf("members %d: shopper %d", m, r.Shopper)
			}
		}
	}
}

func BenchmarkNext(b *testing.B) {
	g := New(Config{Seed: 1, Members: 100_000, Start: testStart, Events: 10_000_000})
	b.ReportAllocs()
	b.ResetTimer()
	bytes := 0
	for b.Loop() {
		bytes += len(g.Next().Value)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	b.SetBytes(int64(bytes / max(b.N, 1)))
}

func BenchmarkNew1M(b *testing.B) {
	for b.Loop() {
		New(Config{Seed: 1, Members: 1_000_000, Start: testStart})
	}
}
