//go:build !faults

package failpoint_test

import (
	"testing"

	"github.com/membercenter/membercenter/pipeline/failpoint"
)

// TestProductionBuildHasNoFailpoints: without the faults build tag,
// failpoints are compiled out; MC_FAILPOINTS changes nothing.
func TestProductionBuildHasNoFailpoints(t *testing.T) {
	t.Setenv("MC_FAILPOINTS", "relay-after-publish")
	if failpoint.Enabled {
		t.Fatal("failpoints enabled in a build without the faults tag")
	}
	failpoint.Inject("relay-after-publish") // returns: this process lives on
}
