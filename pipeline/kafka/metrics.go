package kafka

import (
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// StageMetrics are the instruments every stage reports to, defined once
// (on one meter) so that each name has one definition.
type StageMetrics struct {
	// Records counts records handled, by stage and outcome (ok, dlq).
	Records metric.Int64Counter
	// Handle is the time to apply a record's (or batch's) effects.
	Handle metric.Float64Histogram
	// Latency is the time from a record's timestamp to its effects being
	// durable.
	Latency metric.Float64Histogram
}

// RecordOutcomes are the attribute sets Records counts stage's records
// under: handled (ok) and dead-lettered (dlq). A stage makes them once; a
// set made for every record cost more than recording it.
func RecordOutcomes(stage string) (ok, dlq metric.MeasurementOption) {
	return metric.WithAttributes(attribute.String("stage", stage), attribute.String("outcome", "ok")),
		metric.WithAttributes(attribute.String("stage", stage), attribute.String("outcome", "dlq"))
}

// NewStageMetrics returns the stage instruments of mp.
func NewStageMetrics(mp metric.MeterProvider) (StageMetrics, error) {
	m := mp.Meter("github.com/membercenter/membercenter/pipeline")
	var sm StageMetrics
	var err error
	if sm.Records, err = m.Int64Counter("mc.stage.records",
		metric.WithDescription("Records handled by a stage, by outcome (ok, dlq)")); err != nil {
		return sm, err
	}
	if sm.Handle, err = m.Float64Histogram("mc.stage.handle.duration", metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(LatencyBuckets...),
		metric.WithDescription("Time to apply a record's (or batch's) effects")); err != nil {
		return sm, err
	}
	if sm.Latency, err = m.Float64Histogram("mc.stage.latency", metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(LatencyBuckets...),
		metric.WithDescription("Time from a record's timestamp to its effects being durable")); err != nil {
		return sm, err
	}
	return sm, nil
}
