package tags

import "testing"

// mustParse parses a catalogue, failing the test when it is refused.
func mustParse(t testing.TB, src string) *Catalog {
	t.Helper()
	c, err := ParseCatalog([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// shipped is the shipped catalogue, parsed.
func shipped(t testing.TB) *Catalog {
	t.Helper()
	return mustParse(t, string(DefaultCatalog()))
}
