package zincatiid

import (
	"regexp"
	"strings"
	"testing"
)

var zincatiID = regexp.MustCompile(`^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}$`)

// FuzzFromMachineID: any input either fails or gives a version-4, variant-1
// id of 32 lowercase hex digits, the same for every spelling of the same
// machine id; it never panics.
func FuzzFromMachineID(f *testing.F) {
	for _, seed := range []string{
		"1c09ca98649c4c7abc779cd04c96812e", "0123456789ABCDEF0123456789ABCDEF\n",
		"01234567-89ab-cdef-0123-456789abcdef", "", "zz", "0123456789abcdef0123456789abcde",
		"01234567-89ab-cdef-0123-456789abcdef-", "  1c09ca98649c4c7abc779cd04c96812e  ",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, m string) {
		id, err := FromMachineID(m)
		if err != nil {
			if id != "" {
				t.Fatalf("FromMachineID(%q) = %q with error %v", m, id, err)
			}
			return
		}
		if !zincatiID.MatchString(id) {
			t.Fatalf("FromMachineID(%q) = %q, not a version-4 variant-1 id", m, id)
		}
		for _, other := range []string{strings.ToUpper(m), strings.ToLower(m), strings.ReplaceAll(m, "-", "")} {
			if again, err := FromMachineID(other); err == nil && again != id {
				t.Fatalf("FromMachineID(%q) = %q but FromMachineID(%q) = %q", m, id, other, again)
			}
		}
	})
}
