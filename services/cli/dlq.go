package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/membercenter/membercenter/services/identity"
	"github.com/membercenter/membercenter/services/platform"
	"github.com/membercenter/membercenter/storage/postgres"

	"github.com/membercenter/membercenter/pipeline/dlq"
	"github.com/membercenter/membercenter/pipeline/kafka"
)

func dlqCmd(stdout, logOut io.Writer) *cobra.Command {
	var since time.Duration
	var stage, topic string
	var force bool
	keep := func(l dlq.Letter) bool {
		return (stage == "" || l.Stage == stage) && (topic == "" || l.Topic == topic)
	}
	flags := func(c *cobra.Command) {
		c.Flags().DurationVar(&since, "since", 24*time.Hour, "letters written within this long ago")
		c.Flags().StringVar(&stage, "stage", "", "only letters of this stage (e.g. ingest)")
		c.Flags().StringVar(&topic, "topic", "", "only letters that came from this topic")
	}
	// withClient is a RunE that runs run with a client that reads committed
	// records, closed when run returns.
	withClient := func(run func(cmd *cobra.Command, e *env, cl *kafka.Client) error) func(*cobra.Command, []string) error {
		withRun := withEnv(logOut, func(cmd *cobra.Command, _ []string, e *env) error {
			cl, err := kafka.NewClient(e.cfg.Kafka, platform.KafkaTelemetry(e.tel), "", kgo.FetchIsolationLevel(kgo.ReadCommitted()))
			if err != nil {
				return err
			}
			defer cl.Close()
			return run(cmd, e, cl)
		})
		return func(cmd *cobra.Command, args []string) error {
			if since <= 0 {
				return usage(cmd, fmt.Errorf("--since %s: a positive duration (how long ago the oldest letter was written)", since))
			}
			return withRun(cmd, args)
		}
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "Print dead letters with their reasons",
		RunE: withClient(func(cmd *cobra.Command, e *env, cl *kafka.Client) error {
			n := 0
			err := dlq.Scan(cmd.Context(), cl.Client, e.cfg.Kafka.Topics.DLQ, time.Now().Add(-since), func(l dlq.Letter) error {
				if keep(l) {
					n++
					// A sealed letter's key and value stay sealed here:
					// they may be a channel's raw identifiers.
					key := fmt.Sprintf("key=%q  %d bytes", l.Record.Key, len(l.Record.Value))
					if l.Sealed {
						key = fmt.Sprintf("sealed (key %s)  %d bytes", l.SealedKeyID, len(l.Record.Value))
					}
					fmt.Fprintf(stdout, "%s  %s/%d@%d  stage=%s  %s\n  reason: %s\n",
						l.At.Format(time.RFC3339), l.Topic, l.Partition, l.Offset, l.Stage, key,
						strings.ReplaceAll(l.Reason, "\n", " "))
				}
				return nil
			})
			fmt.Fprintf(stdout, "%d dead letters\n", n)
			return err
		}),
	}
	replay := &cobra.Command{
		Use:   "replay",
		Short: "Re-publish dead letters to the topics they came from, each once (stages deduplicate by event id)",
		RunE: withClient(func(cmd *cobra.Command, e *env, cl *kafka.Client) error {
			// Sealed letters are opened with the platform's PII keys, and
			// a letter of a member's record with the member's data key,
			// from the key store.
			keys, err := identity.NewPII(e.cfg.Identity.Keys)
			if err != nil {
				return err
			}
			keys.UseKeyStore(e.p.KeyStore())
			res, err := dlq.Replay(cmd.Context(), cl.Client, e.cfg.Kafka.Topics.DLQ, dlq.ReplayOptions{
				Since: time.Now().Add(-since), Keep: keep, Force: force, Replays: pgReplays{e.p.Pool()}, Sealer: keys,
			})
			for _, p := range res.Problems {
				fmt.Fprintf(stdout, "cannot replay %s\n", p)
			}
			fmt.Fprintln(stdout, res)
			return err
		}),
	}
	replay.Flags().BoolVar(&force, "force", false, "replay letters replayed before too (each original once)")
	flags(list)
	flags(replay)
	return group("dlq", "Inspect and replay dead letters (dlq.v1)", list, replay)
}

// pgReplays records replayed dead letters in PostgreSQL.
type pgReplays struct{ pool *pgxpool.Pool }

var _ dlq.Replays = pgReplays{}

func (r pgReplays) Replayed(ctx context.Context, id dlq.LetterID) (bool, error) {
	return postgres.DLQReplayed(ctx, r.pool, id.Topic, id.Partition, id.Offset)
}

func (r pgReplays) Record(ctx context.Context, id dlq.LetterID, to *kgo.Record) error {
	return postgres.RecordDLQReplay(ctx, r.pool, id.Topic, id.Partition, id.Offset, to.Topic, to.Partition, to.Offset)
}
