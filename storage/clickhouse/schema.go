package clickhouse

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// ShardedTables are the per-member tables. On a cluster (Config.Cluster)
// each is a local table <name>_local on every node plus a Distributed table
// <name> over the cluster's local tables, sharded by ShardingKey: readers
// and writers keep using <name>. Every one is ordered by member_id first,
// so all the rows a ReplacingMergeTree collapses into one live on one shard
// and FINAL, evaluated on each shard, is exact across the cluster.
// operator_audit's configuration records (no member: an empty member_id)
// all go to one shard: a few a month.
var ShardedTables = []string{"member_events", "member_changes", "identity_audit", "label_changes", "operator_audit", ProfilesTable}

// LocalSuffix ends the name of a sharded table's per-node table.
const LocalSuffix = "_local"

// ShardingKey picks a row's shard: a hash of its member id, so one
// member's rows (facts, label history, audit, profile versions) share a
// shard, and members spread evenly whatever their ids look like.
const ShardingKey = "cityHash64(member_id)"

// Schema applies Member Center's DDL — the migrations and member_profiles
// with its analyst views — to the configured database. Without a cluster
// it runs on the one connection it was given. With Config.Cluster it runs
// on the same database of every node of that cluster (read from the
// configured server's system.clusters; creating the database where
// missing): a statement reaches every node before the next is sent, so a
// Distributed table never has a column its shards' local tables lack.
// Distributed DDL (ON CLUSTER) is not used: it needs ZooKeeper.
type Schema struct {
	cfg  Config
	conn driver.Conn
	opts []Option
}

// NewSchema returns the schema of cfg's database; conn is a connection to
// it (Open, Dial). Nodes of a cluster are connected to, with opts, only
// while DDL runs.
func NewSchema(cfg Config, conn driver.Conn, opts ...Option) *Schema {
	return &Schema{cfg: cfg, conn: conn, opts: opts}
}

// Node is one server of a cluster: one replica of one shard.
type Node struct {
	Shard, Replica uint32
	// Addr is the node's native-protocol address as the cluster
	// definition names it (host:port).
	Addr string
	// Local is set for the server the connection reached.
	Local bool
}

// ClusterNodes lists the nodes of the named cluster as the server conn
// reaches defines it, in shard and replica order.
func ClusterNodes(ctx context.Context, conn driver.Conn, cluster string) ([]Node, error) {
	rows, err := conn.Query(ctx, `SELECT shard_num, replica_num, host_name, port, is_local
		FROM system.clusters WHERE cluster = ? ORDER BY shard_num, replica_num`, cluster)
	if err != nil {
		return nil, fmt.Errorf("read cluster %s: %w", cluster, err)
	}
	defer rows.Close()
	var out []Node
	for rows.Next() {
		var n Node
		var host string
		var port uint16
		var local uint8
		if err := rows.Scan(&n.Shard, &n.Replica, &host, &port, &local); err != nil {
			return nil, fmt.Errorf("read cluster %s: %w", cluster, err)
		}
		n.Addr, n.Local = net.JoinHostPort(host, strconv.Itoa(int(port))), local == 1
		out = append(out, n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read cluster %s: %w", cluster, err)
	}
	return out, nil
}

// layout is how the per-member tables are laid out in one database.
type layout struct {
	cluster  string // "" unsharded
	database string
}

func (l layout) sharded() bool { return l.cluster != "" }

// distributed is the DDL of table's Distributed table over its local
// tables. Every argument is a quoted literal: the cluster name may hold
// dots and dashes.
func (l layout) distributed(table string) string {
	return "CREATE TABLE IF NOT EXISTS " + table + " AS " + table + LocalSuffix +
		" ENGINE = Distributed('" + l.cluster + "', '" + l.database + "', '" + table + LocalSuffix + "', " + ShardingKey + ")"
}

// nodes connects to the servers DDL must reach: the given connection
// unsharded, otherwise every node of the cluster (the caller closes them).
func (s *Schema) nodes(ctx context.Context) ([]driver.Conn, layout, error) {
	if s.cfg.Cluster == "" {
		return []driver.Conn{s.conn}, layout{}, nil
	}
	l := layout{cluster: s.cfg.Cluster, database: s.cfg.Database}
	nodes, err := ClusterNodes(ctx, s.conn, s.cfg.Cluster)
	if err != nil {
		return nil, l, err
	}
	if len(nodes) == 0 {
		return nil, l, fmt.Errorf("MC_CLICKHOUSE_CLUSTER %s: no such cluster in the remote_servers of %s", s.cfg.Cluster, s.cfg.Addr)
	}
	if !slices.ContainsFunc(nodes, func(n Node) bool { return n.Local }) {
		return nil, l, fmt.Errorf("MC_CLICKHOUSE_ADDR %s is not a node of cluster %s: the Distributed tables are created on its nodes", s.cfg.Addr, s.cfg.Cluster)
	}
	var conns []driver.Conn
	for _, n := range nodes {
		cfg := s.cfg
		cfg.Addr = n.Addr
		c, err := Open(ctx, cfg, s.opts...)
		if err != nil {
			closeAll(conns)
			return nil, l, fmt.Errorf("cluster %s shard %d replica %d: %w", s.cfg.Cluster, n.Shard, n.Replica, err)
		}
		conns = append(conns, c)
	}
	return conns, l, nil
}

func (s *Schema) release(conns []driver.Conn) {
	if s.cfg.Cluster != "" {
		closeAll(conns)
	}
}

func closeAll(conns []driver.Conn) {
	for _, c := range conns {
		_ = c.Close()
	}
}

// Migrate applies the migrations a node has not recorded, on every node
// (see Migrate).
func (s *Schema) Migrate(ctx context.Context) (applied []string, err error) {
	conns, l, err := s.nodes(ctx)
	if err != nil {
		return nil, err
	}
	defer s.release(conns)
	return migrate(ctx, conns, l)
}

// EnsureProfiles makes member_profiles fit cols on every node (see
// EnsureProfiles): on a cluster the local tables first, then the
// Distributed tables over them, then the views.
func (s *Schema) EnsureProfiles(ctx context.Context, cols []ProfileColumn) error {
	if err := validateProfileColumns(cols); err != nil {
		return fmt.Errorf("member_profiles columns: %w", err)
	}
	conns, l, err := s.nodes(ctx)
	if err != nil {
		return err
	}
	defer s.release(conns)
	return ensureProfiles(ctx, conns, l, cols)
}

// checkLayout refuses DDL of one layout on a database laid out the other
// way: a database migrated on one server keeps its plain tables when a
// cluster is configured later (its rows would stay on that server, and
// migrations recorded there would not run again), and one whose tables are
// Distributed cannot take a plain table's ALTER. Moving between them is a
// copy (docs/scaling-clickhouse.md).
func checkLayout(ctx context.Context, conn driver.Conn, l layout) error {
	rows, err := conn.Query(ctx, `SELECT name, engine, engine_full FROM system.tables
		WHERE database = currentDatabase() AND has(['`+strings.Join(ShardedTables, "','")+`'], name)`)
	if err != nil {
		return fmt.Errorf("read tables: %w", err)
	}
	defer rows.Close()
	var errs []error
	for rows.Next() {
		var name, engine, full string
		if err := rows.Scan(&name, &engine, &full); err != nil {
			return fmt.Errorf("read tables: %w", err)
		}
		switch {
		case l.sharded() && engine != "Distributed":
			errs = append(errs, fmt.Errorf("%s is a %s table, not Distributed over cluster %s: the database was created without MC_CLICKHOUSE_CLUSTER", name, engine, l.cluster))
		case l.sharded() && !strings.Contains(full, "'"+l.cluster+"'") && !strings.Contains(full, "("+l.cluster+","):
			errs = append(errs, fmt.Errorf("%s is %s, not over cluster %s", name, full, l.cluster))
		case !l.sharded() && engine == "Distributed":
			errs = append(errs, fmt.Errorf("%s is %s: the database is sharded, set MC_CLICKHOUSE_CLUSTER", name, full))
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read tables: %w", err)
	}
	return errors.Join(errs...)
}

var (
	createTable = regexp.MustCompile(`(?is)^CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+([A-Za-z_][A-Za-z0-9_]*)(\s*\(.*)$`)
	alterTable  = regexp.MustCompile(`(?is)^ALTER\s+TABLE\s+([A-Za-z_][A-Za-z0-9_]*)(\s.*)$`)
	// columnAlter is an ALTER a Distributed table must follow: it holds
	// the columns its shards have. Other ALTERs (mutations, partitions)
	// concern the local tables' data only.
	columnAlter = regexp.MustCompile(`(?is)^\s*(ADD|DROP|MODIFY)\s+COLUMN\s`)
)

// shardStatements rewrites one migration statement for l: unsharded it is
// unchanged; sharded, a per-member table is created as its local table,
// then as the Distributed table over it, and a column ALTER changes the
// local table, then the Distributed one. A new table that is not in
// ShardedTables is refused: whether it is per member (and how it shards)
// is a decision for its author.
func shardStatements(stmt string, l layout) ([]string, error) {
	if !l.sharded() {
		return []string{stmt}, nil
	}
	if m := createTable.FindStringSubmatch(stmt); m != nil {
		if !slices.Contains(ShardedTables, m[1]) {
			return nil, fmt.Errorf("table %s is not in ShardedTables: say how it is laid out on a cluster", m[1])
		}
		return []string{"CREATE TABLE IF NOT EXISTS " + m[1] + LocalSuffix + m[2], l.distributed(m[1])}, nil
	}
	if m := alterTable.FindStringSubmatch(stmt); m != nil && slices.Contains(ShardedTables, m[1]) {
		local := "ALTER TABLE " + m[1] + LocalSuffix + m[2]
		if columnAlter.MatchString(m[2]) {
			return []string{local, "ALTER TABLE " + m[1] + m[2]}, nil
		}
		return []string{local}, nil
	}
	return []string{stmt}, nil
}
