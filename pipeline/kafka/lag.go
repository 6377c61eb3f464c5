package kafka

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// LatencyBuckets are histogram boundaries, in seconds, for pipeline latencies:
// from a millisecond (one hop on loopback) to a minute (a stage catching up).
var LatencyBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// RegisterLag exports the lag of the given consumer groups as the gauge
// messaging.kafka.consumer.lag (records between the committed offset and the
// end of each partition), measured from the broker at every collection.
// While the brokers do not answer, the gauge is absent (one warning when it
// goes, one note when it is back): a collection waits at most two seconds
// for them and never fails the process's other metrics.
func RegisterLag(meters metric.MeterProvider, log *slog.Logger, cl *kgo.Client, groups ...string) (metric.Registration, error) {
	m := meters.Meter("github.com/membercenter/membercenter/pipeline/kafka")
	gauge, err := m.Int64ObservableGauge("messaging.kafka.consumer.lag",
		metric.WithDescription("Records between a consumer group's committed offset and the partition end"),
		metric.WithUnit("{record}"))
	if err != nil {
		return nil, fmt.Errorf("lag gauge: %w", err)
	}
	adm := kadm.NewClient(cl)
	var failing atomic.Bool
	return m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		lags, err := adm.Lag(ctx, groups...)
		if err != nil {
			if !failing.Swap(true) {
				log.WarnContext(ctx, "consumer lag unavailable until Kafka answers", "groups", groups, "err", err)
			}
			return nil
		}
		if failing.Swap(false) {
			log.InfoContext(ctx, "consumer lag available again", "groups", groups)
		}
		lags.Each(func(l kadm.DescribedGroupLag) {
			for topic, parts := range l.Lag {
				for p, ml := range parts {
					if ml.Lag < 0 {
						continue
					}
					o.ObserveInt64(gauge, ml.Lag, metric.WithAttributes(
						attribute.String("messaging.consumer.group.name", l.Group),
						attribute.String("messaging.destination.name", topic),
						attribute.Int("messaging.destination.partition.id", int(p)),
					))
				}
			}
		})
		return nil
	}, gauge)
}
