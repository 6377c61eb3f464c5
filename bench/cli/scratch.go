package cli

import (
	"context"

	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/membercenter/membercenter/pipeline/kafka"
)

// scratchKafka is the configured Kafka with topics and groups of its own,
// named after prefix.
func scratchKafka(kcfg kafka.Config, prefix string) kafka.Config {
	kcfg.GroupPrefix = prefix
	kcfg.Topics = kafka.Topics{
		ChannelEvents: prefix + ".channel.events.v1", MemberEvents: prefix + ".member.events.v1",
		MemberChanges: prefix + ".member.changes.v1", DLQ: prefix + ".dlq.v1",
	}
	return kcfg
}

// scratchTopics are a run's topics on Kafka: the four of a scratch
// configuration and any extra ones (a floor's, say).
type scratchTopics struct {
	admin *kafka.Client
	adm   *kadm.Client
	names []string
}

// openScratch creates kcfg's topics and the extra ones, each extra one
// with partitions partitions.
func openScratch(ctx context.Context, kcfg kafka.Config, ktel kafka.Telemetry, partitions int32, extra ...string) (*scratchTopics, error) {
	admin, err := kafka.NewClient(kcfg, ktel, "")
	if err != nil {
		return nil, err
	}
	s := &scratchTopics{admin: admin, adm: kadm.NewClient(admin.Client), names: extra}
	for n := range kcfg.Topics.All() {
		s.names = append(s.names, n)
	}
	if err := kafka.EnsureTopics(ctx, admin.Client, kcfg.Topics); err != nil {
		s.close()
		return nil, err
	}
	for _, t := range extra {
		if _, err := s.adm.CreateTopic(ctx, partitions, 1, nil, t); err != nil {
			s.close()
			return nil, err
		}
	}
	return s, nil
}

// close removes the topics and the consumer groups named.
func (s *scratchTopics) close(groups ...string) {
	_, _ = s.adm.DeleteTopics(context.Background(), s.names...)
	if len(groups) > 0 {
		_, _ = s.adm.DeleteGroups(context.Background(), groups...)
	}
	s.admin.Close()
}
