package identity

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"

	mcv1 "github.com/membercenter/membercenter/proto/gen/membercenter/v1"
)

//go:embed rules.yaml
var defaultRules []byte

// TypeRule is the policy of one identifier type.
type TypeRule struct {
	Priority     int      `yaml:"priority"`
	Unique       bool     `yaml:"unique"`
	MaxPerMember int      `yaml:"max_per_member"`
	MayMerge     bool     `yaml:"may_merge"`
	MayCreate    bool     `yaml:"may_create"`
	Blocked      []string `yaml:"blocked"`
}

// Limits protect members from runaway merges.
type Limits struct {
	MaxIdentifiers int `yaml:"max_identifiers"`
	MaxMerges      int `yaml:"max_merges"`
}

// Rules is the identity policy.
type Rules struct {
	Types             map[string]TypeRule `yaml:"types"`
	BlockedEverywhere []string            `yaml:"blocked_everywhere"`
	Limits            Limits              `yaml:"limits"`

	byType  map[mcv1.IdentifierType]TypeRule
	blocked map[mcv1.IdentifierType]map[string]bool
}

// TypeName is the rules-file name of an identifier type: "phone", "device_id".
func TypeName(t mcv1.IdentifierType) string {
	return strings.ToLower(strings.TrimPrefix(t.String(), "IDENTIFIER_TYPE_"))
}

// DefaultRules returns the rules in rules.yaml.
func DefaultRules() *Rules {
	r, err := ParseRules(defaultRules)
	if err != nil {
		panic(fmt.Sprintf("embedded rules.yaml: %v", err)) // covered by tests
	}
	return r
}

// LoadRules reads rules from path, or the defaults when path is empty.
func LoadRules(path string) (*Rules, error) {
	if path == "" {
		return DefaultRules(), nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("identity rules: %w", err)
	}
	r, err := ParseRules(b)
	if err != nil {
		return nil, fmt.Errorf("identity rules %s: %w", path, err)
	}
	return r, nil
}

// ParseRules validates and indexes a rules document. Every problem is
// reported, each naming the type and field.
func ParseRules(b []byte) (*Rules, error) {
	var r Rules
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	var errs []error
	r.byType = map[mcv1.IdentifierType]TypeRule{}
	for name, tr := range r.Types {
		v, ok := mcv1.IdentifierType_value["IDENTIFIER_TYPE_"+strings.ToUpper(name)]
		if !ok || v == 0 {
			errs = append(errs, fmt.Errorf("types.%s: unknown identifier type", name))
			continue
		}
		if tr.Priority < 1 {
			errs = append(errs, fmt.Errorf("types.%s.priority must be at least 1", name))
		}
		if tr.MaxPerMember < 1 {
			errs = append(errs, fmt.Errorf("types.%s.max_per_member must be at least 1", name))
		}
		if tr.MayMerge && !tr.Unique {
			errs = append(errs, fmt.Errorf("types.%s: may_merge needs unique (a shared value cannot prove two members are one person)", name))
		}
		r.byType[mcv1.IdentifierType(v)] = tr
	}
	for v := range mcv1.IdentifierType_name {
		t := mcv1.IdentifierType(v)
		if t == mcv1.IdentifierType_IDENTIFIER_TYPE_UNSPECIFIED {
			continue
		}
		if _, ok := r.byType[t]; !ok {
			errs = append(errs, fmt.Errorf("types.%s: missing", TypeName(t)))
		}
	}
	if r.Limits.MaxIdentifiers < 1 || r.Limits.MaxMerges < 1 {
		errs = append(errs, errors.New("limits.max_identifiers and limits.max_merges must be at least 1"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	// Blocked values are compared in normalised form.
	n := Normalizer{}
	r.blocked = map[mcv1.IdentifierType]map[string]bool{}
	for t, tr := range r.byType {
		set := map[string]bool{}
		for _, v := range append(append([]string(nil), tr.Blocked...), r.BlockedEverywhere...) {
			set[strings.ToLower(v)] = true
			if norm, err := n.Normalize(&mcv1.Identifier{Type: t, Value: v, Scope: "x"}); err == nil {
				set[strings.ToLower(norm)] = true
			}
		}
		r.blocked[t] = set
	}
	return &r, nil
}

// For returns the rule of a type.
func (r *Rules) For(t mcv1.IdentifierType) TypeRule { return r.byType[t] }

// Blocked reports whether a normalised value is on the type's blocked list.
func (r *Rules) Blocked(t mcv1.IdentifierType, normalized string) bool {
	return r.blocked[t][strings.ToLower(normalized)]
}
