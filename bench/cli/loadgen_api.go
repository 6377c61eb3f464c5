package cli

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"

	"github.com/membercenter/membercenter/bench/loadgen"
)

func loadgenAPICmd(stdout, stderr io.Writer) *cobra.Command {
	var cfg loadgen.Config
	var addr, token, rpcs string
	var rate, shoppers, subscribers int
	var duration time.Duration
	cmd := &cobra.Command{
		Use:   "api",
		Short: "Drive a running server's gRPC APIs with the generator's shoppers at a fixed rate, open loop",
		Long: `Resolves --shoppers of the generator's shoppers (unmeasured warm-up), then for
each of --rpcs (resolve, getprofile, quote, commit, health) sends --rate
requests per second for --duration, each in its own goroutine at its intended
send time, and times it from that intended time, so a queue in the server
cannot hide (no coordinated omission). With --subscribers it also holds that
many SyncService.Subscribe streams open and counts the changes they receive.
health (grpc.health.v1.Health/Check) is the no-op floor to compare with.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return err
			}
			defer conn.Close()
			if token != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
			}
			g := loadgen.New(cfg)
			run := fmt.Sprintf("lgapi%x", time.Now().UnixNano()&0xffffff)
			members, err := resolveShoppers(ctx, conn, g, shoppers, cfg.Members, run)
			if err != nil {
				return err
			}
			fmt.Fprintf(stderr, "loadgen api: %d shoppers resolved\n", len(members))
			var received atomic.Int64
			var streams sync.WaitGroup
			sctx, stopStreams := context.WithCancel(ctx)
			defer func() { stopStreams(); streams.Wait() }()
			for range subscribers {
				s, err := mcv1.NewSyncServiceClient(conn).Subscribe(sctx, &mcv1.SubscribeRequest{})
				if err != nil {
					return err
				}
				streams.Add(1)
				go func() {
					defer streams.Done()
					for {
						m, err := s.Recv()
						if err != nil {
							return
						}
						if m.GetChange() != nil {
							received.Add(1)
						}
					}
				}()
			}
			calls := apiCalls(conn, g, members, run, cfg.Members)
			fmt.Fprintf(stdout, "| RPC | requests | target rate (req/s) | achieved (req/s) | p50 ms | p99 ms | max ms | errors |\n|---|---|---|---|---|---|---|---|\n")
			for _, name := range strings.Split(rpcs, ",") {
				call, ok := calls[strings.TrimSpace(name)]
				if !ok {
					return fmt.Errorf("unknown rpc %q: choose from health, resolve, getprofile, quote, commit", name)
				}
				if len(members) == 0 && name != "health" && name != "resolve" {
					return fmt.Errorf("%s needs --shoppers > 0", name)
				}
				lat, errs, achieved := openLoopCalls(ctx, rate, duration, call)
				s := summarize(lat, duration)
				fmt.Fprintf(stdout, "| %s | %d | %d | %.0f | %s | %s | %s | %d |\n", name, len(lat)+errs, rate, achieved, ms(s.Median), ms(s.P99), ms(s.Max), errs)
			}
			if subscribers > 0 {
				fmt.Fprintf(stdout, "\n%d Subscribe streams received %d changes in all.\n", subscribers, received.Load())
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:50051", "gRPC address of a running membercenter serve")
	cmd.Flags().StringVar(&token, "token", "", "channel token (membercenter auth token) when authentication is on")
	cmd.Flags().StringVar(&rpcs, "rpcs", "health,resolve,getprofile,quote,commit", "RPCs to drive, one after the other")
	cmd.Flags().IntVar(&rate, "rate", 500, "requests per second, open loop")
	cmd.Flags().DurationVar(&duration, "duration", 10*time.Second, "per RPC")
	cmd.Flags().IntVar(&shoppers, "shoppers", 200, "shoppers resolved first (their members are used by getprofile, quote, commit)")
	cmd.Flags().IntVar(&subscribers, "subscribers", 0, "Subscribe streams held open meanwhile")
	cmd.Flags().Int64Var(&cfg.Seed, "seed", 1, "generator seed")
	cmd.Flags().IntVar(&cfg.Members, "members", 10_000, "generator shoppers")
	return cmd
}

// apiCalls are the RPCs the load generator drives: members are resolved
// members of its shoppers; run makes keys and order ids unique.
func apiCalls(conn *grpc.ClientConn, g *loadgen.Generator, members []string, run string, shoppers int) map[string]func(ctx context.Context, i int) error {
	ids := mcv1.NewIdentityServiceClient(conn)
	return map[string]func(ctx context.Context, i int) error{
		"health": func(ctx context.Context, _ int) error {
			_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
			return err
		},
		"resolve": func(ctx context.Context, i int) error {
			sh := g.Shopper(rand.IntN(max(shoppers, 1)))
			_, err := ids.Resolve(ctx, &mcv1.ResolveRequest{Identifiers: sh.Identifiers(), Channel: mcv1.Channel_CHANNEL_POS,
				CreateIfMissing: true, IdempotencyKey: fmt.Sprintf("%s-r-%d", run, i)})
			return err
		},
		"getprofile": func(ctx context.Context, _ int) error {
			_, err := mcv1.NewProfileServiceClient(conn).GetProfile(ctx, &mcv1.GetProfileRequest{MemberId: members[rand.IntN(len(members))]})
			return err
		},
		"quote": func(ctx context.Context, i int) error {
			_, err := mcv1.NewBenefitsServiceClient(conn).Quote(ctx, &mcv1.QuoteRequest{MemberId: members[rand.IntN(len(members))],
				Basket: apiBasket(fmt.Sprintf("%s-q-%d", run, i))})
			return err
		},
		"commit": func(ctx context.Context, i int) error {
			_, err := mcv1.NewBenefitsServiceClient(conn).Commit(ctx, &mcv1.CommitRequest{MemberId: members[rand.IntN(len(members))],
				Basket: apiBasket(fmt.Sprintf("%s-c-%d", run, i)), IdempotencyKey: fmt.Sprintf("%s-c-%d", run, i)})
			return err
		},
	}
}

// resolveShoppers resolves the first n of the generator's shoppers (creating
// missing members) and returns their member ids.
func resolveShoppers(ctx context.Context, conn *grpc.ClientConn, g *loadgen.Generator, n, shoppers int, run string) ([]string, error) {
	ids := mcv1.NewIdentityServiceClient(conn)
	members := make([]string, 0, n)
	for i := range n {
		sh := g.Shopper(i % max(shoppers, 1))
		r, err := ids.Resolve(ctx, &mcv1.ResolveRequest{Identifiers: sh.Identifiers(), Channel: mcv1.Channel_CHANNEL_POS,
			CreateIfMissing: true, IdempotencyKey: fmt.Sprintf("%s-warm-%d", run, i)})
		if err != nil {
			return nil, fmt.Errorf("warm-up resolve of shopper %d: %w", i, err)
		}
		members = append(members, r.GetMemberId())
	}
	return members, nil
}

func apiBasket(order string) *mcv1.Basket {
	total := int64(2000 + rand.IntN(30000))
	return &mcv1.Basket{OrderId: order, Channel: mcv1.Channel_CHANNEL_POS, StoreId: "LG-1", Total: &mcv1.Money{Currency: "CNY", AmountMinor: total},
		Items: []*mcv1.LineItem{{Sku: "LG-" + uuid.NewString()[:6], Category: "coffee", Quantity: 1, Amount: &mcv1.Money{Currency: "CNY", AmountMinor: total}}}}
}

// openLoopCalls sends rate calls per second for d, each in its own goroutine
// at its intended time, and returns the latencies of the successful ones
// measured from the intended time, the number of errors and the achieved
// rate.
func openLoopCalls(ctx context.Context, rate int, d time.Duration, call func(ctx context.Context, i int) error) ([]time.Duration, int, float64) {
	n := int(d.Seconds() * float64(rate))
	lat := make([]time.Duration, n)
	ok := make([]bool, n)
	var wg sync.WaitGroup
	start := time.Now().Add(20 * time.Millisecond)
	for i := range n {
		at := start.Add(time.Duration(i) * time.Second / time.Duration(rate))
		if w := time.Until(at); w > 0 {
			time.Sleep(w)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if err := call(cctx, i); err == nil {
				lat[i], ok[i] = time.Since(at), true
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var out []time.Duration
	for i := range n {
		if ok[i] {
			out = append(out, lat[i])
		}
	}
	errs := n - len(out)
	if len(out) == 0 {
		out = append(out, 0) // summarize needs one
	}
	return out, errs, float64(n) / elapsed.Seconds()
}
