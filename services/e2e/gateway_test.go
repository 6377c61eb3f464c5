package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

func postJSON(t *testing.T, ctx context.Context, url, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]any{}
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s: %s is not JSON: %v", url, b, err)
	}
	return resp.StatusCode, out
}

type event struct{ id, kind, data string }

// readEvent reads one server-sent event.
func readEvent(t *testing.T, r *bufio.Reader) event {
	t.Helper()
	var e event
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("event stream: %v", err)
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "":
			if e.kind != "" {
				return e
			}
		case strings.HasPrefix(line, "id: "):
			e.id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			e.kind = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			e.data = strings.TrimPrefix(line, "data: ")
		}
	}
}

// TestHTTPGatewayAndServerSentEvents: a mini-program back end that speaks
// only HTTP resolves a shopper, reads the profile, follows the member's
// changes as server-sent events, and after a reconnect with Last-Event-ID
// receives exactly the change it missed.
func TestHTTPGatewayAndServerSentEvents(t *testing.T) {
	e, ctx := startWithin(t, 90*time.Second)
	const phone, card = "13500000088", "c-http"
	code, out := postJSON(t, ctx, e.http+"/membercenter.v1.IdentityService/Resolve",
		`{"identifiers":[{"type":"IDENTIFIER_TYPE_PHONE","value":"`+phone+`"},{"type":"IDENTIFIER_TYPE_MEMBER_CARD","value":"`+card+`"}],
		  "channel":"CHANNEL_MINIPROGRAM","createIfMissing":true,"idempotencyKey":"http-1"}`)
	member, _ := out["memberId"].(string)
	if code != http.StatusOK || member == "" {
		t.Fatalf("Resolve over HTTP: %d %v", code, out)
	}
	code, out = postJSON(t, ctx, e.http+"/membercenter.v1.ProfileService/GetProfile", `{"memberId":"`+member+`"}`)
	if p, _ := out["profile"].(map[string]any); code != http.StatusOK || p["memberId"] != member {
		t.Fatalf("GetProfile over HTTP: %d %v", code, out)
	}
	// The same validation as gRPC: 400 naming the field.
	code, out = postJSON(t, ctx, e.http+"/membercenter.v1.ProfileService/GetProfile", `{"memberId":"nope"}`)
	if msg, _ := out["message"].(string); code != http.StatusBadRequest || !strings.Contains(msg, "member_id") {
		t.Fatalf("invalid GetProfile over HTTP: %d %v; want 400 naming member_id", code, out)
	}

	subscribe := func(lastID string) (*bufio.Reader, func()) {
		sctx, stop := context.WithCancel(ctx)
		req, _ := http.NewRequestWithContext(sctx, http.MethodGet, e.http+"/v1/sync/subscribe?member_ids="+member, nil)
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("subscribe: %d %s", resp.StatusCode, b)
		}
		return bufio.NewReader(resp.Body), func() { stop(); resp.Body.Close() }
	}
	r, closeStream := subscribe("")
	if ev := readEvent(t, r); ev.kind != "ready" || ev.id == "" {
		t.Fatalf("first event %+v, want ready with an id", ev)
	}
	publishTxn := func(id string) {
		e.publishEvent(t, ctx, phone, posTransaction(id, phone, card, 8_800))
	}
	publishTxn("http-e1")
	lastID := ""
	for {
		ev := readEvent(t, r)
		msg := &mcv1.SubscribeResponse{}
		if err := protojson.Unmarshal([]byte(ev.data), msg); err != nil {
			t.Fatalf("event data %q: %v", ev.data, err)
		}
		if ev.kind != "change" || msg.GetChange().GetMemberId() != member || ev.id != msg.GetResumeToken() {
			t.Fatalf("event %+v", ev)
		}
		lastID = ev.id
		if msg.GetChange().GetPointsChanged() != nil {
			break
		}
	}
	closeStream()

	publishTxn("http-e2")
	eventually(t, "the second purchase credited and published", func() (bool, error) {
		var n int
		err := e.pool.QueryRow(ctx, `SELECT count(*) FROM outbox_pending WHERE member_id = $1`, member).Scan(&n)
		if err != nil || n > 0 {
			return false, err
		}
		err = e.pool.QueryRow(ctx, `SELECT count(*) FROM processed_events WHERE event_id = 'http-e2'`).Scan(&n)
		return n == 2, err
	})
	r, closeStream = subscribe(lastID)
	defer closeStream()
	// The change made while away comes once: replayed before "ready", or
	// live after it when the hub had not yet read what the relay published.
	gotPoints := false
	for !gotPoints {
		ev := readEvent(t, r)
		if ev.kind == "ready" {
			continue
		}
		msg := &mcv1.SubscribeResponse{}
		if err := protojson.Unmarshal([]byte(ev.data), msg); err != nil {
			t.Fatal(err)
		}
		if p := msg.GetChange().GetPointsChanged(); p != nil {
			if gotPoints || p.GetDelta() != 88 {
				t.Fatalf("missed points change %v (seen before: %v), want one +88", p, gotPoints)
			}
			gotPoints = true
		}
	}

	// A bad token is refused before the stream starts.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.http+"/v1/sync/subscribe?resume_token=garbage", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !bytes.Contains(b, []byte("take a snapshot")) {
		t.Errorf("bad token: %d %s; want 400 telling to take a snapshot", resp.StatusCode, b)
	}
}
