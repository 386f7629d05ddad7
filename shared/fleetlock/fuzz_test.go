package fleetlock

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzDecode: any body either decodes to valid client params or fails with
// a bad_request *Error; it never panics.
func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		"{\n  \"client_params\": {\n    \"id\": \"978a225b3d7b40e9acd7ce9b62f68444\",\n    \"group\": \"default\"\n  }\n}",
		`{"client_params":{"id":"a","group":"Group-A.1"}}`,
		`{"client_params":{"id":"","group":"g"}}`,
		`{"client_params":null}`,
		`{"client_params":{"id":1}}`,
		`[]`, `null`, ``, `{`, "\xff\xfe",
		`{"client_params":{"id":"a","group":"a b"},"client_params":{"id":"b","group":"c"}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := Decode(bytes.NewReader(body))
		if err != nil {
			var fe *Error
			if !errors.As(err, &fe) || fe.Kind != KindBadRequest || fe.Value == "" {
				t.Fatalf("Decode error %#v is not a bad_request *Error with a value", err)
			}
			return
		}
		if p.ID == "" || len(p.ID) > MaxIDLength || !ValidGroup(p.Group) {
			t.Fatalf("Decode accepted invalid params %+v", p)
		}
	})
}
