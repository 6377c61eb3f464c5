package services_test

import (
	"bufio"
	"bytes"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The import rules of docs/architecture.md, checked on the whole workspace.

const module = "github.com/membercenter/membercenter/"

// stagePackages are the stream stages and their plumbing: only the
// composition root (and tests, and tooling) starts them.
var stagePackages = []string{"pipeline/ingest", "pipeline/worker", "pipeline/relay", "pipeline/sink", "pipeline/consumer", "pipeline/dlq", "pipeline/cdc"}

// domainPackages are the domain: they implement pipeline/contract and
// declare the stores they need; they never start a stage.
var domainPackages = []string{"services/identity", "services/benefits", "services/tags", "services/profile",
	"services/changes", "services/facts", "services/changefeed", "services/versioned", "services/auth", "services/attributes", "services/audit",
	"services/migration", "services/members"}

// tooling is never part of the product.
var tooling = []string{"bench/", "storage/postgres/pgbench", "storage/clickhouse/chbench", "services/faultsuite", "services/e2e"}

type pkg struct {
	path    string // without the module prefix
	imports []string
	test    bool // a …test helper package
}

func workspace(t *testing.T) (root string, pkgs []pkg) {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root = filepath.Dir(wd)
	patterns := []string{"./proto/...", "./storage/...", "./pipeline/...", "./services/...", "./bench/..."}
	cmd := exec.Command("go", append([]string{"list", "-f", "{{.ImportPath}} {{join .Imports \" \"}}"}, patterns...)...)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		p := pkg{path: strings.TrimPrefix(f[0], module)}
		p.test = strings.HasSuffix(p.path, "test")
		for _, imp := range f[1:] {
			if strings.HasPrefix(imp, module) {
				p.imports = append(p.imports, strings.TrimPrefix(imp, module))
			}
		}
		pkgs = append(pkgs, p)
	}
	return root, pkgs
}

func under(path string, prefixes ...string) bool {
	for _, pre := range prefixes {
		if path == strings.TrimSuffix(pre, "/") || strings.HasPrefix(path, strings.TrimSuffix(pre, "/")+"/") {
			return true
		}
	}
	return false
}

func TestImportRules(t *testing.T) {
	_, pkgs := workspace(t)
	if len(pkgs) < 20 {
		t.Fatalf("go list found %d packages", len(pkgs))
	}
	for _, p := range pkgs {
		for _, imp := range p.imports {
			var broken string
			switch {
			case under(p.path, "proto") && !under(imp, "proto"):
				broken = "proto is the contract: it imports nothing of the platform"
			case under(p.path, "storage") && !under(imp, "storage", "proto"):
				broken = "storage imports only storage (and the contract)"
			case under(p.path, "pipeline") && !under(imp, "pipeline", "proto"):
				broken = "pipeline imports only pipeline and proto: the domain is behind pipeline/contract"
			case under(p.path, domainPackages...) && under(imp, stagePackages...):
				broken = "a domain package implements pipeline/contract and never imports a stage"
			case !p.test && under(p.path, "services/server", "services/gateway", "services/telemetry") && under(imp, domainPackages...):
				broken = "the edge (server, gateway, telemetry) knows no domain package"
			case !p.test && !under(p.path, tooling...) && under(imp, tooling...):
				broken = "the product never imports tooling"
			case !p.test && !under(p.path, tooling...) && strings.HasSuffix(imp, "test"):
				broken = "the product never imports a …test helper package"
			}
			if broken != "" {
				t.Errorf("%s imports %s: %s", p.path, imp, broken)
			}
		}
	}
}

// TestProductionBinaryHoldsNoTooling: membercenter's dependencies hold no
// benchmark, load generator, demo or oracle.
func TestProductionBinaryHoldsNoTooling(t *testing.T) {
	root, _ := workspace(t)
	cmd := exec.Command("go", "list", "-deps", "./services/cmd/membercenter")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		p := strings.TrimPrefix(dep, module)
		if p == dep {
			continue
		}
		if under(p, tooling...) || strings.HasSuffix(p, "test") {
			t.Errorf("membercenter depends on %s (tooling)", p)
		}
	}
}

// sqlStatement is the start of an SQL statement in a string literal.
var sqlStatement = regexp.MustCompile(`(?s)^\s*(SELECT\s|INSERT\s+INTO\s|UPDATE\s+\w+\s+(AS\s+\w+\s+)?SET\s|DELETE\s+FROM\s|WITH\s+(RECURSIVE\s+)?\w+|CREATE\s+(TABLE|INDEX|DATABASE)\s|ALTER\s+TABLE\s|DROP\s+TABLE\s|LISTEN\s|VACUUM|ANALYZE\s)`)

// TestSQLOnlyInStorage: every SQL statement lives under storage/ (tests
// aside), in the store of its aggregate.
func TestSQLOnlyInStorage(t *testing.T) {
	root, _ := workspace(t)
	for _, dir := range []string{"services", "pipeline", "bench"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d os.DirEntry, err error) error {
			if err != nil {
				if os.IsNotExist(err) {
					return filepath.SkipDir
				}
				return err
			}
			if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, path)
			if under(filepath.ToSlash(filepath.Dir(rel)), tooling...) && strings.HasSuffix(filepath.ToSlash(filepath.Dir(rel)), "e2e") {
				return nil
			}
			ast.Inspect(f, func(n ast.Node) bool {
				lit, ok := n.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					return true
				}
				s, err := strconv.Unquote(lit.Value)
				if err == nil && sqlStatement.MatchString(s) {
					t.Errorf("%s: SQL outside storage/: %.60q", rel, strings.TrimSpace(s))
				}
				return true
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}
