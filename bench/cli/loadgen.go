package cli

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/membercenter/membercenter/bench/loadgen"
	"github.com/membercenter/membercenter/pipeline/kafka"
)

func loadgenCmd(stdout, stderr io.Writer) *cobra.Command {
	var cfg loadgen.Config
	var events, rate int
	var topic string
	cmd := &cobra.Command{
		Use:   "loadgen",
		Short: "Publish a deterministic omnichannel retailer's events to Kafka",
		Long: `Generates a synthetic omnichannel retailer, deterministic from --seed:
shoppers with several identifiers and deliberate overlaps (the same phone at
POS and in the app, reissued cards, shared store tablets), Pareto spend, a
POS / app / mini-program mix, weekday and time-of-day patterns, refunds,
redemptions, check-ins, referrals, reviews, sign-ups and a fraction of
malformed records. Publishes --events records to channel.events.v1 (or
--topic) at --rate per second, open loop, or as fast as Kafka takes them
with --rate 0, and reports what it sent by kind and how many were malformed
(each of which must end in dlq.v1).`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			e, err := setup(ctx, io.Discard)
			if err != nil {
				return err
			}
			defer e.Close()
			if topic == "" {
				topic = e.Config.Kafka.Topics.ChannelEvents
			}
			ktel := e.Kafka()
			producer, err := kafka.NewClient(e.Config.Kafka, ktel, "")
			if err != nil {
				return err
			}
			defer producer.Close()
			cfg.Events = events
			return publishLoad(ctx, producer, loadgen.New(cfg), topic, events, rate, stdout, stderr)
		},
	}
	cmd.Flags().Int64Var(&cfg.Seed, "seed", 1, "seed: the same seed gives the same events")
	cmd.Flags().IntVar(&cfg.Members, "members", 10_000, "distinct shoppers")
	cmd.Flags().IntVar(&cfg.Days, "days", 90, "simulated days, ending now")
	cmd.Flags().Float64Var(&cfg.MalformedRate, "malformed", 0.01, "fraction of malformed records (negative: none)")
	cmd.Flags().StringVar(&cfg.IDPrefix, "id-prefix", "", "event id prefix (default lg-<seed>); change it to publish the same workload again")
	cmd.Flags().IntVar(&events, "events", 10_000, "records to publish")
	cmd.Flags().IntVar(&rate, "rate", 0, "records per second, open loop (0: as fast as Kafka takes them)")
	cmd.Flags().StringVar(&topic, "topic", "", "topic (default: the configured channel events topic)")
	cmd.AddCommand(loadgenAPICmd(stdout, stderr))
	return cmd
}

// publishLoad sends n generated records, open loop at rate (or flat out),
// and prints a summary.
func publishLoad(ctx context.Context, producer *kafka.Client, g *loadgen.Generator, topic string, n, rate int, stdout, stderr io.Writer) error {
	kinds := map[string]int{}
	malformed := map[string]int{}
	start := time.Now()
	var mu sync.Mutex
	var failed error
	for i := range n {
		if rate > 0 {
			if d := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))); d > 0 {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(d):
				}
			}
		}
		r := g.Next()
		if r.Malformed != "" {
			malformed[r.Malformed]++
		} else {
			kinds[r.Kind]++
		}
		producer.Produce(ctx, &kgo.Record{Topic: topic, Key: r.Key, Value: r.Value}, func(_ *kgo.Record, err error) {
			mu.Lock()
			defer mu.Unlock()
			if err != nil && failed == nil {
				failed = err
			}
		})
		if (i+1)%10_000 == 0 {
			fmt.Fprintf(stderr, "loadgen: %d records, %.0f/s\n", i+1, float64(i+1)/time.Since(start).Seconds())
		}
	}
	if err := producer.Flush(ctx); err != nil {
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	if failed != nil {
		return fmt.Errorf("produce: %w", failed)
	}
	elapsed := time.Since(start)
	bad := 0
	for _, c := range malformed {
		bad += c
	}
	fmt.Fprintf(stdout, "published %d records to %s in %s (%.0f/s): %v; malformed %d %v (each must end in the dead-letter topic)\n",
		n, topic, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), kinds, bad, malformed)
	return nil
}
