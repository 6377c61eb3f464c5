package e2e_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/membercenter/membercenter/pipeline/fault/faulttest"
	"github.com/membercenter/membercenter/services/platform"
)

// A platform that starts while ClickHouse is away runs everything else,
// says it is not ready, and writes the facts once ClickHouse is back.
func TestPlatformStartsWhileClickHouseIsAway(t *testing.T) {
	var proxy *faulttest.Proxy
	e := startAfter(t, platform.AllStages, func() { proxy.Cut() }, func(c *platform.Config) {
		proxy = faulttest.NewProxy(t, c.ClickHouse.Addr)
		c.ClickHouse.Addr = proxy.Addr()
	})
	ctx := within(t, 120*time.Second)
	ready := func() int {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.admin+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := ready(); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d while ClickHouse is away, want 503", code)
	}
	const phone, card = "13500000123", "c-ch-away"
	e.publishEvent(t, ctx, phone, posTransaction("ch-away-1", phone, card, 3_000))
	eventually(t, "the purchase applied while ClickHouse is away", func() (bool, error) {
		var n int
		err := e.pool.QueryRow(ctx, `SELECT count(*) FROM processed_events WHERE event_id = 'ch-away-1'`).Scan(&n)
		return n == 2, err
	})
	proxy.Restore()
	eventually(t, "the purchase in ClickHouse once it is back", func() (bool, error) {
		var n uint64
		err := e.ch.QueryRow(ctx, `SELECT count() FROM member_events WHERE event_id = 'ch-away-1'`).Scan(&n)
		return n == 1, err
	})
	eventually(t, "ready again", func() (bool, error) { return ready() == http.StatusOK, nil })
}
