package cli

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/membercenter/membercenter/services/platform"
	"github.com/membercenter/membercenter/services/platform/platformtest"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// phaseResult is one open-loop scenario: the distribution of successful
// requests' latencies, the requests sent and the failures by status code.
type phaseResult struct {
	Summary
	sent, errors int
	byCode       map[string]int
}

// openPhase is an open-loop scenario of gRPC requests: an unmeasured
// warm-up of resolveWarmup at rate, then n requests at rate, each sent in
// its own goroutine, over the clients in turn, to the target pick gives at
// its send time, and timed from its intended send time (so a queue in the
// server cannot hide). Idempotency keys are prefix+"warm-"+i, then
// prefix+i.
type openPhase[T any] struct {
	clients []*grpc.ClientConn
	rate, n int
	timeout time.Duration
	prefix  string
	pick    func() T
	call    func(ctx context.Context, conn *grpc.ClientConn, key string, target T) error
	// measure, when set, starts with the measured requests; what it
	// returns is called when they have all returned.
	measure func() (stop func(), err error)
}

func (p openPhase[T]) run(ctx context.Context) (phaseResult, error) {
	loop := &latencyBench{rate: p.rate}
	send := func(prefix string, n int, done []time.Time, errs []error) ([]time.Time, error) {
		var wg sync.WaitGroup
		intended, err := loop.openLoop(ctx, n, func(i int) {
			target := p.pick()
			wg.Add(1)
			go func() {
				defer wg.Done()
				rctx, cancel := context.WithTimeout(ctx, p.timeout)
				defer cancel()
				err := p.call(rctx, p.clients[i%len(p.clients)], prefix+strconv.Itoa(i), target)
				if done != nil {
					done[i], errs[i] = time.Now(), err
				}
			}()
		})
		wg.Wait()
		return intended, err
	}
	if _, err := send(p.prefix+"warm-", int(float64(p.rate)*resolveWarmup.Seconds()), nil, nil); err != nil {
		return phaseResult{}, err
	}
	stop := func() {}
	if p.measure != nil {
		var err error
		if stop, err = p.measure(); err != nil {
			return phaseResult{}, err
		}
	}
	done, errs := make([]time.Time, p.n), make([]error, p.n)
	intended, err := send(p.prefix, p.n, done, errs)
	stop()
	if err != nil {
		return phaseResult{}, err
	}
	res := phaseResult{sent: p.n, byCode: map[string]int{}}
	ds := make([]time.Duration, 0, p.n)
	last := intended[0]
	for i := range p.n {
		if done[i].After(last) {
			last = done[i]
		}
		if errs[i] != nil {
			res.errors++
			res.byCode[errorCode(errs[i])]++
			continue
		}
		ds = append(ds, done[i].Sub(intended[i]))
	}
	if len(ds) > 0 {
		res.Summary = summarize(ds, last.Sub(intended[0]))
	}
	return res, nil
}

// healthCheck is the floor of every gRPC scenario: grpc.health.v1's Check
// on the same server, a call that does nothing.
func healthCheck[T any](ctx context.Context, conn *grpc.ClientConn, _ string, _ T) error {
	_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

// ratio is a latency ÷ its floor's, "–" when either is missing.
func ratio(a, f time.Duration) string {
	if f <= 0 || a <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f×", float64(a)/float64(f))
}

func errorCode(err error) string {
	if s, ok := status.FromError(err); ok {
		return s.Code().String()
	}
	return "client check failed: " + err.Error()
}

// serve runs o's services of p behind the production gRPC stack (platform.Run
// builds the server with server.NewGRPC: otelgrpc, recovery, protovalidate,
// the platform's error translation, health and reflection; and registers
// each service exactly as `membercenter serve` does) and dials conns
// connections to it, which Stop closes.
func serve(ctx context.Context, p *platform.Platform, o platform.Options, conns int) (*platformtest.Running, []*grpc.ClientConn, error) {
	running, err := platformtest.Start(ctx, p, o)
	if err != nil {
		return nil, nil, err
	}
	clients, err := running.Conns(conns)
	if err != nil {
		_ = running.Stop()
		return nil, nil, err
	}
	return running, clients, nil
}
