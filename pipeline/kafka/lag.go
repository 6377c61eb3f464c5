package kafka

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// LatencyBuckets are histogram boundaries, in seconds, for pipeline latencies:
// from a millisecond (one hop on loopback) to a minute (a stage catching up).
var LatencyBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// Lag polling: a poll may take up to lagTimeout (a busy broker answers the
// first one, which opens connections and finds the coordinator, slowly);
// the gauge shows the last answer for at most lagStale.
const (
	lagEvery   = 2 * time.Second
	lagTimeout = 15 * time.Second
	lagStale   = 30 * time.Second
)

// RegisterLag exports the lag of the given consumer groups as the gauge
// messaging.kafka.consumer.lag (records between the committed offset and the
// end of each partition). The brokers are asked in the background every two
// seconds, never by a collection, so a slow or absent Kafka never delays the
// process's other metrics; while they do not answer, the gauge shows the
// last answer for 30 seconds, then is absent (one warning when it goes, one
// note when it is back). Unregister stops the polling.
func RegisterLag(meters metric.MeterProvider, log *slog.Logger, cl *kgo.Client, groups ...string) (metric.Registration, error) {
	m := meters.Meter("github.com/membercenter/membercenter/pipeline/kafka")
	gauge, err := m.Int64ObservableGauge("messaging.kafka.consumer.lag",
		metric.WithDescription("Records between a consumer group's committed offset and the partition end"),
		metric.WithUnit("{record}"))
	if err != nil {
		return nil, fmt.Errorf("lag gauge: %w", err)
	}
	type observed struct {
		lag   int64
		attrs metric.MeasurementOption
	}
	var (
		mu   sync.Mutex
		last []observed
		at   time.Time
	)
	adm := kadm.NewClient(cl)
	poll := func(ctx context.Context, failing *bool) {
		ctx, cancel := context.WithTimeout(ctx, lagTimeout)
		defer cancel()
		lags, err := adm.Lag(ctx, groups...)
		if err != nil {
			if !*failing {
				log.WarnContext(ctx, "consumer lag unavailable until Kafka answers", "groups", groups, "err", err)
			}
			*failing = true
			return
		}
		if *failing {
			log.InfoContext(ctx, "consumer lag available again", "groups", groups)
		}
		*failing = false
		var now []observed
		lags.Each(func(l kadm.DescribedGroupLag) {
			for topic, parts := range l.Lag {
				for p, ml := range parts {
					if ml.Lag < 0 {
						continue
					}
					now = append(now, observed{ml.Lag, metric.WithAttributes(
						attribute.String("messaging.consumer.group.name", l.Group),
						attribute.String("messaging.destination.name", topic),
						attribute.Int("messaging.destination.partition.id", int(p)),
					)})
				}
			}
		})
		mu.Lock()
		last, at = now, time.Now()
		mu.Unlock()
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		failing := false
		t := time.NewTicker(lagEvery)
		defer t.Stop()
		for {
			poll(ctx, &failing)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	reg, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(at) > lagStale {
			return nil
		}
		for _, x := range last {
			o.ObserveInt64(gauge, x.lag, x.attrs)
		}
		return nil
	}, gauge)
	if err != nil {
		stop()
		<-done
		return nil, err
	}
	return &lagRegistration{Registration: reg, stop: func() { stop(); <-done }}, nil
}

// lagRegistration stops the polling with the callback.
type lagRegistration struct {
	metric.Registration
	stop func()
}

func (r *lagRegistration) Unregister() error {
	r.stop()
	return r.Registration.Unregister()
}
