package cli

import (
	"fmt"
	"testing"
)

func TestBenchSKUIsTheFormattedSKU(t *testing.T) {
	for _, n := range []int{0, 7, 42, 100, 499, 1234} {
		if got, want := benchSKU("coffee", n), fmt.Sprintf("SKU-%s-%03d", "coffee", n); got != want {
			t.Errorf("benchSKU(coffee, %d) = %q, want %q", n, got, want)
		}
	}
}
