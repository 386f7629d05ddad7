package zincatiid

import "testing"

func TestFromMachineID(t *testing.T) {
	tests := []struct {
		name, machineID, want string
	}{
		// The two vectors from Zincati's notes; the rest were made on this
		// machine with systemd's own `systemd-id128 machine-id -a`.
		{"notes vector 1", "1c09ca98649c4c7abc779cd04c96812e", "978a225b3d7b40e9acd7ce9b62f68444"},
		{"notes vector 2", "0123456789abcdef0123456789abcdef", "583627a932274834a8ebd99f4ed41c0d"},
		{"systemd-id128 1", "b5f3c2a9e1d84f7c9a6e3b2d1c0f9e8a", "d14f7c46f91c44c88237bb58a02c9bf8"},
		{"systemd-id128 2", "7e1a9c3b5d2f4e6a8b0c1d3e5f7a9b2c", "7f751c0ab1914424a51345223b1a0685"},
		{"dashed", "1c09ca98-649c-4c7a-bc77-9cd04c96812e", "978a225b3d7b40e9acd7ce9b62f68444"},
		{"uppercase", "1C09CA98649C4C7ABC779CD04C96812E", "978a225b3d7b40e9acd7ce9b62f68444"},
		{"trailing newline", "0123456789abcdef0123456789abcdef\n", "583627a932274834a8ebd99f4ed41c0d"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FromMachineID(tt.machineID)
			if err != nil {
				t.Fatalf("FromMachineID(%q): %v", tt.machineID, err)
			}
			if got != tt.want {
				t.Errorf("FromMachineID(%q) = %s, want %s", tt.machineID, got, tt.want)
			}
		})
	}
}

func TestFromMachineIDRejects(t *testing.T) {
	for _, in := range []string{"", "abc", "zz09ca98649c4c7abc779cd04c96812e", "00000000000000000000000000000000",
		"1c09ca98649c4c7abc779cd04c96812e00", "1c09ca98-649c4c7a-bc77-9cd04c96812e"} {
		if got, err := FromMachineID(in); err == nil {
			t.Errorf("FromMachineID(%q) = %q, want an error", in, got)
		}
	}
}
