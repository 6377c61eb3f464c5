package kafka

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// RegisterLag exports the lag of the given consumer groups as the gauge
// messaging.kafka.consumer.lag (records between the committed offset and the
// end of each partition), measured from the broker at every collection.
func RegisterLag(meters metric.MeterProvider, cl *kgo.Client, groups ...string) (metric.Registration, error) {
	m := meters.Meter("github.com/membercenter/membercenter/pipeline/kafka")
	gauge, err := m.Int64ObservableGauge("messaging.kafka.consumer.lag",
		metric.WithDescription("Records between a consumer group's committed offset and the partition end"),
		metric.WithUnit("{record}"))
	if err != nil {
		return nil, fmt.Errorf("lag gauge: %w", err)
	}
	adm := kadm.NewClient(cl)
	return m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		lags, err := adm.Lag(ctx, groups...)
		if err != nil {
			return err
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
