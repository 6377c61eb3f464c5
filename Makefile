# Member Center. The two commands a new machine needs:
#   make demo   start the servers, migrate, run the platform with a simulated workload
#               (mc-bench demo: the tooling binary, built apart from membercenter)
#   make test   start the servers, then run every check and test of every module
SHELL := /bin/bash
MODULES := ./proto/... ./storage/... ./pipeline/... ./services/... ./bench/...
BIN := .bin/membercenter
# The tooling: benchmarks, load generator and demo workload (bench/).
BENCH := .bin/mc-bench

.PHONY: deps build mc-bench test check unit smoke testdates faults demo bench gen lint stop clean

deps:
	scripts/deps.sh >/dev/null

## build: -buildvcs=auto stamps the commit `membercenter version` reports
## (and traces carry as service.version) even where GOFLAGS turns it off.
build:
	go build -buildvcs=auto -o $(BIN) ./services/cmd/membercenter

mc-bench:
	go build -o $(BENCH) ./bench/cmd/mc-bench

## test: every check and every test, against the real servers deps.sh starts.
test: deps check unit smoke

## check: generated code, formatting, vet, tidy modules.
check:
	scripts/gen.sh --check
	scripts/lint.sh

unit:
	go test -count=1 -timeout 30m $(MODULES)

## testdates: the unit and integration tests with the test clock pinned to a
## weekday, a weekend, a month end, 29 February and 31 December.
testdates: deps
	scripts/testdates.sh

## smoke: the built binary serves, answers health and reflection, and shuts down.
smoke: build
	scripts/smoke.sh $(BIN)

demo: deps mc-bench
	$(BENCH) demo

## faults: the fault suite (processes killed, servers restarted under a
## workload); restarts the shared servers, so it runs alone.
faults: deps
	scripts/faults.sh

## bench: latency and throughput figures for BENCHMARKS.md.
bench: deps mc-bench
	scripts/bench.sh $(BENCH)

gen:
	scripts/gen.sh

lint:
	scripts/lint.sh

stop:
	scripts/deps.sh stop

clean:
	rm -rf .bin
