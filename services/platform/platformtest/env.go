package platformtest

import (
	"strings"
	"testing"

	"github.com/membercenter/membercenter/storage/clickhouse/chtest"
	"github.com/membercenter/membercenter/storage/postgres/pgtest"

	"github.com/membercenter/membercenter/pipeline/kafka/kafkatest"
)

// Setenv points the configuration the environment gives (MC_PG_URL,
// MC_KAFKA_BROKERS, MC_CLICKHOUSE_ADDR, ...) at databases and topics of t's
// own, and every listen address at a free loopback port, for tests of
// commands that read their configuration from the environment.
func Setenv(t testing.TB) {
	t.Helper()
	_, ch := chtest.NewDB(t)
	k := kafkatest.Config(t)
	for name, v := range map[string]string{
		"MC_PG_URL": pgtest.NewDB(t), "MC_CLICKHOUSE_ADDR": ch.Addr, "MC_CLICKHOUSE_DB": ch.Database,
		"MC_KAFKA_BROKERS": strings.Join(k.Brokers, ","), "MC_KAFKA_GROUP_PREFIX": k.GroupPrefix, "MC_INSTANCE_ID": k.InstanceID,
		"MC_TOPIC_CHANNEL_EVENTS": k.Topics.ChannelEvents, "MC_TOPIC_MEMBER_EVENTS": k.Topics.MemberEvents,
		"MC_TOPIC_MEMBER_CHANGES": k.Topics.MemberChanges, "MC_TOPIC_DLQ": k.Topics.DLQ,
		"MC_GRPC_ADDR": "127.0.0.1:0", "MC_HTTP_ADDR": "127.0.0.1:0", "MC_ADMIN_ADDR": "127.0.0.1:0",
	} {
		t.Setenv(name, v)
	}
}
