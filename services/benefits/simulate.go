package benefits

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"go.yaml.in/yaml/v3"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
	"github.com/membercenter/membercenter/storage/clickhouse"
)

// ErrNoFacts is returned by SimulateCampaign when no ClickHouse connection
// is configured.
var ErrNoFacts = errors.New("campaign simulation needs the ClickHouse facts")

// SetFacts gives the service the ClickHouse connection SimulateCampaign
// reads past purchases from.
func (s *Service) SetFacts(conn driver.Conn) { s.facts = conn }

// campaignProgram returns the programme in force with its campaigns replaced
// by the one given (YAML), validated like any programme.
func (s *Service) campaignProgram(campaignYAML string) (*Program, error) {
	var camp map[string]any
	if err := yaml.Unmarshal([]byte(campaignYAML), &camp); err != nil {
		return nil, fmt.Errorf("campaign_yaml: %v: %w", err, ErrInvalid)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(s.program().Source, &doc); err != nil {
		return nil, err
	}
	doc["version"] = "simulation"
	doc["campaigns"] = []any{camp}
	src, err := yaml.Marshal(doc)
	if err != nil {
		return nil, err
	}
	p, err := ParseProgram(src)
	if err != nil {
		return nil, fmt.Errorf("campaign_yaml: %v: %w", err, ErrInvalid)
	}
	return p, nil
}

// SimulateCampaign replays the purchases ClickHouse recorded in [from,
// until) through the programme with only the given campaign, in time order,
// each member starting from an empty state, and reports what the campaign
// would have cost: points after and before its caps and budget, purchases
// matched and members affected. It writes nothing.
func (s *Service) SimulateCampaign(ctx context.Context, req *mcv1.SimulateCampaignRequest) (*mcv1.SimulateCampaignResponse, error) {
	if s.facts == nil {
		return nil, ErrNoFacts
	}
	from, until := req.GetFrom().AsTime(), req.GetUntil().AsTime()
	if !from.Before(until) {
		return nil, fmt.Errorf("from must be before until: %w", ErrInvalid)
	}
	capped, err := s.campaignProgram(req.GetCampaignYaml())
	if err != nil {
		return nil, err
	}
	uncapped, _ := s.campaignProgram(req.GetCampaignYaml())
	c := uncapped.Campaigns[0]
	c.CapDay, c.CapMonth, c.Budget = 0, 0, 0

	runs := []*simRun{newSimRun(capped), newSimRun(uncapped)}
	resp := &mcv1.SimulateCampaignResponse{}
	affected := map[string]bool{}
	err = clickhouse.ReadPurchases(ctx, s.facts, from, until, func(pu clickhouse.Purchase) error {
		op := Op{Kind: OpPurchase, At: pu.OccurredAt, OrderID: pu.OrderID, Total: pu.AmountMinor, Channel: pu.Channel, Store: pu.StoreID,
			Cause: "simulation", Origin: pu.MemberID}
		for _, it := range pu.Items {
			op.Items = append(op.Items, Item{SKU: it.SKU, Category: it.Category, Brand: it.Brand, Quantity: int64(it.Quantity), Amount: it.AmountMinor})
		}
		resp.PurchasesScanned++
		got := runs[0].purchase(pu.MemberID, op)
		resp.PointsUncapped += runs[1].purchase(pu.MemberID, op)
		if got > 0 {
			resp.PointsCost += got
			resp.PurchasesMatched++
			affected[pu.MemberID] = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	resp.MembersAffected = int64(len(affected))
	return resp, nil
}

// simRun is an in-memory run of a programme over purchases.
type simRun struct {
	e       Engine
	states  map[string]*State
	budgets map[string]int64
}

func newSimRun(p *Program) *simRun {
	return &simRun{e: Engine{P: p}, states: map[string]*State{}, budgets: map[string]int64{}}
}

// purchase applies op and returns the campaign's points in it.
func (r *simRun) purchase(member string, op Op) int64 {
	st := r.states[member]
	if st == nil {
		st = NewState(member)
		r.states[member] = st
	}
	st.Budgets = maps.Clone(r.budgets)
	fx, err := r.e.Apply(st, op)
	if err != nil || fx.Order == nil {
		return 0
	}
	r.budgets = st.Budgets
	// Keep the in-memory state small: the simulation needs campaign usage
	// and the tier inputs, not the lots.
	st.Lots, st.Orders = nil, map[string]*Order{}
	st.MonthDelta, st.UsageDelta, st.BudgetDelta, st.TplDelta = nil, nil, nil, nil
	var extra int64
	for _, v := range fx.Order.Extras {
		extra += v
	}
	return extra
}

// SimulateCampaign implements BenefitsService.SimulateCampaign.
func (s *Server) SimulateCampaign(ctx context.Context, req *mcv1.SimulateCampaignRequest) (*mcv1.SimulateCampaignResponse, error) {
	return s.svc.SimulateCampaign(ctx, req)
}
