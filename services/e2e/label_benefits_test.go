package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/jackc/pgx/v5/pgxpool"
	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/services/benefits"
	"github.com/membercenter/membercenter/services/platform"
)

// TestBenefitsFollowLabels: benefits whose condition is a label are granted
// when the tag worker sets the label, whatever event set it — three shares
// give the sharer label and its perk, though a share is no event the
// benefit stage acts on — and every new member's first purchase gives
// bought_365d and its perk, whichever worker got to the purchase first.
func TestBenefitsFollowLabels(t *testing.T) {
	const version = "labels-e2e"
	// The programme is loaded before the platform starts, so the workers
	// find it in force.
	var url string
	e := startAfter(t, platform.AllStages, func() {
		pool, err := pgxpool.New(context.Background(), url)
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		src := bytes.Replace(benefits.DefaultProgramSource(), []byte("benefits:\n"), []byte("benefits:\n"+
			"  - {id: sharer_perk, name: Sharer perk, labels: [sharer]}\n"+
			"  - {id: buyer_perk, name: Buyer perk, labels: [bought_365d]}\n"), 1)
		src = bytes.Replace(src, []byte("version: default-1"), []byte("version: "+version), 1)
		if _, err := benefits.LoadProgram(context.Background(), pool, src); err != nil {
			t.Fatal(err)
		}
	}, func(c *platform.Config) { url = c.Postgres.URL })
	ctx := within(t, 120*time.Second)
	bs := mcv1.NewBenefitsServiceClient(e.conn)
	member := func(phone string) string {
		return e.createMember(t, ctx, mcv1.Channel_CHANNEL_APP, "create-"+phone, phone, "")
	}
	// The programme is in force once a quote names its version.
	probe := member("13600000000")
	eventually(t, "programme "+version+" in force", func() (bool, error) {
		q, err := bs.Quote(ctx, &mcv1.QuoteRequest{MemberId: probe, Basket: &mcv1.Basket{OrderId: "probe",
			Total: &mcv1.Money{Currency: "CNY", AmountMinor: 1000}, Channel: mcv1.Channel_CHANNEL_POS,
			Items: []*mcv1.LineItem{{Sku: "TEA-L", Category: "tea", Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: 1000}}}}})
		return slices.ContainsFunc(q.GetTrace(), func(tr *mcv1.RuleTrace) bool { return tr.GetRuleVersion() == version }), err
	})
	holds := func(m, benefit string) func() (bool, error) {
		return func() (bool, error) {
			r, err := bs.ListBenefits(ctx, &mcv1.ListBenefitsRequest{MemberId: m})
			return slices.ContainsFunc(r.GetBenefits(), func(b *mcv1.Benefit) bool { return b.GetBenefitId() == benefit }), err
		}
	}
	at := e.clock.Now().Add(-time.Hour)
	event := func(id, phone string) *mcv1.ChannelEvent {
		return &mcv1.ChannelEvent{EventId: id, Channel: mcv1.Channel_CHANNEL_APP, OccurredAt: timestamppb.New(at),
			Identifiers: []*mcv1.Identifier{{Type: mcv1.IdentifierType_IDENTIFIER_TYPE_PHONE, Value: phone}}}
	}

	// Three shares: sharer (shares_90d >= 3).
	const sharerPhone = "13600000001"
	sharer := member(sharerPhone)
	for i := range 3 {
		ce := event(fmt.Sprintf("share-%d", i), sharerPhone)
		ce.Payload = &mcv1.ChannelEvent_Share{Share: &mcv1.Share{ContentId: fmt.Sprintf("post-%d", i), Target: "wechat"}}
		e.publishEvent(t, ctx, sharerPhone, ce)
	}
	// Five new shoppers, one purchase each.
	var buyers []string
	for i := range 5 {
		phone := fmt.Sprintf("136000001%02d", i)
		ce := event(fmt.Sprintf("first-buy-%d", i), phone)
		ce.Channel, ce.StoreId = mcv1.Channel_CHANNEL_POS, "SH-001"
		ce.Payload = &mcv1.ChannelEvent_Transaction{Transaction: &mcv1.Transaction{OrderId: fmt.Sprintf("O-first-%d", i),
			Total: &mcv1.Money{Currency: "CNY", AmountMinor: 8800}}}
		e.publishEvent(t, ctx, phone, ce)
		buyers = append(buyers, phone)
	}

	eventually(t, "sharer_perk granted after three shares", holds(sharer, "sharer_perk"))
	if ok, err := holds(sharer, "buyer_perk")(); err != nil || ok {
		t.Errorf("a member who never bought holds buyer_perk (%v)", err)
	}
	for _, phone := range buyers {
		m := member(phone) // the member the purchase created
		eventually(t, "buyer_perk of "+phone, holds(m, "buyer_perk"))
		if ok, err := holds(m, "sharer_perk")(); err != nil || ok {
			t.Errorf("buyer %s holds sharer_perk without sharing (%v)", phone, err)
		}
	}
}
