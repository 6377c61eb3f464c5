package migration

import (
	"fmt"
	"testing"
)

// TestOrderIDsRemembersLines: among many distinct ids none is taken for
// another, and an id seen again reports the line it was first seen on.
func TestOrderIDsRemembersLines(t *testing.T) {
	seen := newOrderIDs()
	const n = 200_000
	for i := range n {
		id := fmt.Sprintf("O-%d", i)
		if l, dup := seen.line(id); dup {
			t.Fatalf("%s seen before, on line %d", id, l)
		}
		seen.add(id, i+1)
	}
	for _, i := range []int{0, 1, n / 2, n - 1} {
		if l, dup := seen.line(fmt.Sprintf("O-%d", i)); !dup || l != i+1 {
			t.Errorf("O-%d: line %d, seen %v; want line %d", i, l, dup, i+1)
		}
	}
	if _, dup := seen.line(fmt.Sprintf("O-%d", n)); dup {
		t.Error("an id never added is seen")
	}
}
