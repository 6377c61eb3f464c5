package benefits_test

import (
	"slices"
	"strings"
	"testing"
)

// TestProgrammeReadsOnlyTheLabelsItNames: a programme reads of a member's
// labels those its benefits name; a campaign condition that may read
// member.labels, whichever way, makes it read every one, and one that reads
// other fields of member or labels of nothing else does not.
func TestProgrammeReadsOnlyTheLabelsItNames(t *testing.T) {
	withCondition := func(cond string) func(string) string {
		return func(src string) string {
			return strings.Replace(src, "    condition: basket.total >= 50000\n", "    condition: '"+cond+"'\n", 1)
		}
	}
	withBenefits := func(src string) string {
		return strings.Replace(src, "benefits:\n", "benefits:\n  - {id: sharer_perk, name: Sharer perk, labels: [sharer]}\n  - {id: buyer_perk, name: Buyer perk, labels: [bought_365d, sharer]}\n", 1)
	}
	cases := []struct {
		name string
		edit func(string) string
		all  bool
		only []string
	}{
		{"the default programme", nil, false, nil},
		{"benefits naming labels", withBenefits, false, []string{"sharer", "bought_365d"}},
		{"a condition on the tier and birth date", withCondition(`member.tier == "gold" && member["attributes"].birth_date != ""`), false, nil},
		{"a condition on a basket's labels field", withCondition(`basket.items.exists(i, i.category == "labels")`), false, nil},
		{"a condition reading member.labels", withCondition(`"vip" in member.labels`), true, nil},
		{"a condition indexing member by labels", withCondition(`member["labels"].size() > 0`), true, nil},
		{"a condition testing labels' presence", withCondition(`has(member.labels)`), true, nil},
		{"a condition over member's keys", withCondition(`member.exists(k, k.startsWith("lab"))`), true, nil},
		{"a condition indexing member by a computed key", withCondition(`size(member["lab" + "els"]) > 0`), true, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := program(t, c.edit).LabelsRead()
			if got.Named == c.all || !slices.Equal(got.Only, c.only) {
				t.Errorf("reads %+v; want every label %v, else only %q", got, c.all, c.only)
			}
		})
	}
}
