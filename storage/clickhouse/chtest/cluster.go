package chtest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/membercenter/membercenter/storage/clickhouse"
)

// ClusterName is the two-shard cluster's name in the remote_servers of the
// servers StartCluster starts.
const ClusterName = "mc_two_shards"

// Cluster is two ClickHouse servers started for one test on loopback, each
// one shard of ClusterName (one replica each), both defining the cluster
// in their remote_servers. The running deps.sh server is left alone.
type Cluster struct {
	// Addrs are the servers' native-protocol addresses: shard 1's first.
	Addrs []string
}

// serverBinary finds clickhouse-server: on PATH, or where the Debian
// package puts it (/usr/sbin is not on every user's PATH).
func serverBinary() string {
	if p, err := exec.LookPath("clickhouse-server"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/clickhouse-server"); err == nil {
		return "/usr/sbin/clickhouse-server"
	}
	return ""
}

// StartCluster starts the two servers, waits until both answer, and stops
// them (and removes their data) when t ends. It skips t when
// clickhouse-server is not installed.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	bin := serverBinary()
	if bin == "" {
		t.Skip("clickhouse-server is not installed (scripts/deps.sh installs it): no two-shard cluster to start")
	}
	ports := freePorts(t, 2)
	c := &Cluster{}
	for _, p := range ports {
		c.Addrs = append(c.Addrs, net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	}
	// TempDir's removal is registered first, so it runs after the
	// servers' cleanups below have stopped them.
	root := t.TempDir()
	users := filepath.Join(root, "users.xml")
	if err := os.WriteFile(users, []byte(usersXML), 0o644); err != nil {
		t.Fatal(err)
	}
	type server struct {
		dir    string
		cmd    *exec.Cmd
		exited chan struct{}
	}
	servers := make([]*server, len(ports))
	for i, port := range ports {
		dir := filepath.Join(root, "shard"+strconv.Itoa(i+1))
		for _, sub := range []string{"data", "tmp", "user_files", "log"} {
			if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		conf := filepath.Join(dir, "config.xml")
		if err := os.WriteFile(conf, []byte(serverXML(dir, users, port, ports)), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := os.Create(filepath.Join(dir, "stdout.log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "--config-file="+conf)
		cmd.Stdout, cmd.Stderr = out, out
		// Should the test binary die without running its cleanups (a
		// panic, a -timeout), the kernel stops the server too.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			out.Close()
			t.Fatalf("chtest: start clickhouse-server: %v", err)
		}
		s := &server{dir: dir, cmd: cmd, exited: make(chan struct{})}
		servers[i] = s
		go func() {
			_ = cmd.Wait()
			out.Close()
			close(s.exited)
		}()
		t.Cleanup(func() {
			// Nothing on these servers outlives the test: no graceful
			// shutdown to wait for.
			_ = cmd.Process.Kill()
			select {
			case <-s.exited:
			case <-time.After(30 * time.Second):
				t.Errorf("chtest: clickhouse-server %d did not exit after SIGKILL", cmd.Process.Pid)
			}
		})
	}
	deadline := time.Now().Add(30 * time.Second)
	for i, s := range servers {
		cfg := clickhouse.Config{Addr: c.Addrs[i], Database: "default", User: "default"}
		for {
			err := ping(cfg)
			if err == nil {
				break
			}
			select {
			case <-s.exited:
				t.Fatalf("chtest: clickhouse-server for shard %d exited at start:\n%s", i+1, logTail(s.dir))
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("chtest: clickhouse-server for shard %d not answering on %s within 30s: %v\n%s", i+1, cfg.Addr, err, logTail(s.dir))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return c
}

func ping(cfg clickhouse.Config) error {
	conn, err := clickhouse.Dial(cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return conn.Ping(ctx)
}

// freePorts returns n ports free on loopback a moment ago.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("chtest: find a free port: %v", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

func logTail(dir string) string {
	var b bytes.Buffer
	for _, f := range []string{"stdout.log", "log/error.log"} {
		data, _ := os.ReadFile(filepath.Join(dir, f))
		if len(data) > 4000 {
			data = data[len(data)-4000:]
		}
		fmt.Fprintf(&b, "--- %s\n%s\n", f, data)
	}
	return b.String()
}

// serverXML is one shard's server: native protocol only (no HTTP or
// interserver port), everything under dir, and the cluster of both.
func serverXML(dir, users string, port int, shards []int) string {
	var remote bytes.Buffer
	for _, p := range shards {
		fmt.Fprintf(&remote, "      <shard><replica><host>127.0.0.1</host><port>%d</port></replica></shard>\n", p)
	}
	return `<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>` + dir + `/log/server.log</log>
    <errorlog>` + dir + `/log/error.log</errorlog>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>` + strconv.Itoa(port) + `</tcp_port>
  <max_connections>256</max_connections>
  <max_concurrent_queries>100</max_concurrent_queries>
  <mark_cache_size>67108864</mark_cache_size>
  <path>` + dir + `/data/</path>
  <tmp_path>` + dir + `/tmp/</tmp_path>
  <user_files_path>` + dir + `/user_files/</user_files_path>
  <users_config>` + users + `</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mlock_executable>false</mlock_executable>
  <remote_servers>
    <` + ClusterName + `>
` + remote.String() + `    </` + ClusterName + `>
  </remote_servers>
</yandex>
`
}

const usersXML = `<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
`

// Config returns the settings of a new, not yet created database sharded
// over the cluster, reached through shard 1's server.
func (c *Cluster) Config() clickhouse.Config {
	cfg := Config()
	cfg.Addr, cfg.Cluster = c.Addrs[0], ClusterName
	return cfg
}

// NewDB creates and migrates (clickhouse.Schema) a database sharded over
// the cluster and returns a connection to it through shard 1 and its
// config. It goes with the servers.
func (c *Cluster) NewDB(t testing.TB) (driver.Conn, clickhouse.Config) {
	t.Helper()
	return c.open(t, c.Config())
}

// NewUnshardedDB creates and migrates a database with plain tables on
// shard 1's server: the same data written there gives the answers one
// server gives.
func (c *Cluster) NewUnshardedDB(t testing.TB) (driver.Conn, clickhouse.Config) {
	t.Helper()
	cfg := Config()
	cfg.Addr = c.Addrs[0]
	return c.open(t, cfg)
}

func (c *Cluster) open(t testing.TB, cfg clickhouse.Config) (driver.Conn, clickhouse.Config) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := clickhouse.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("chtest: open %s: %v", cfg.Addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := clickhouse.NewSchema(cfg, conn).Migrate(ctx); err != nil {
		t.Fatalf("chtest: migrate: %v", err)
	}
	return conn, cfg
}

// Shards returns a connection to cfg's database on each shard's server,
// shard 1's first, for reading what each holds in its local tables.
func (c *Cluster) Shards(t testing.TB, cfg clickhouse.Config) []driver.Conn {
	t.Helper()
	var out []driver.Conn
	for _, addr := range c.Addrs {
		node := cfg
		node.Addr, node.Cluster = addr, ""
		conn, err := clickhouse.Dial(node)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		out = append(out, conn)
	}
	return out
}
