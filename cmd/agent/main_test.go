package main

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	env := func(kv map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := kv[k]; return v, ok }
	}
	tests := []struct {
		name                string
		args                []string
		env                 map[string]string
		wantErr             string
		dbus, journal       string
		force, cleanup, ext bool
	}{
		{name: "defaults: the bus and the journal under the host root", args: []string{"--node-name", "n"},
			dbus: "unix:path=/host/run/dbus/system_bus_socket", journal: "/host/run/systemd/journal/socket"},
		{name: "another host root", args: []string{"--node-name", "n", "--host-root", "/h"},
			dbus: "unix:path=/h/run/dbus/system_bus_socket", journal: "/h/run/systemd/journal/socket"},
		{name: "DBUS_SYSTEM_BUS_ADDRESS wins over the default", args: []string{"--node-name", "n"}, env: map[string]string{"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/x"},
			dbus: "unix:path=/x", journal: "/host/run/systemd/journal/socket"},
		{name: "flags win over both", args: []string{"--node-name", "n", "--dbus-address", "unix:path=/y", "--journal-socket", "/j"}, env: map[string]string{"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/x"},
			dbus: "unix:path=/y", journal: "/j"},
		{name: "AGENT_FORCE", env: map[string]string{"AGENT_NODE_NAME": "n", "AGENT_FORCE": "true"}, force: true,
			dbus: "unix:path=/host/run/dbus/system_bus_socket", journal: "/host/run/systemd/journal/socket"},
		{name: "cleanup needs no node name", args: []string{"--cleanup"}, cleanup: true,
			dbus: "unix:path=/host/run/dbus/system_bus_socket", journal: "/host/run/systemd/journal/socket"},
		{name: "external", args: []string{"--node-name", "n", "--address-type", "external"}, ext: true,
			dbus: "unix:path=/host/run/dbus/system_bus_socket", journal: "/host/run/systemd/journal/socket"},
		{name: "no node name", args: nil, wantErr: "-node-name (AGENT_NODE_NAME) is required"},
		{name: "bad address type", args: []string{"--node-name", "n", "--address-type", "lb"}, wantErr: "-address-type must be cluster or external"},
		{name: "bad force", args: []string{"--node-name", "n"}, env: map[string]string{"AGENT_FORCE": "maybe"}, wantErr: "AGENT_FORCE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parse(tt.args, env(tt.env))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parse = %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.dbusAddress != tt.dbus || c.journalSocket != tt.journal || c.agent.Force != tt.force || c.cleanup != tt.cleanup || c.agent.External != tt.ext {
				t.Errorf("parse = dbus %q, journal %q, force %v, cleanup %v, external %v; want %q, %q, %v, %v, %v",
					c.dbusAddress, c.journalSocket, c.agent.Force, c.cleanup, c.agent.External, tt.dbus, tt.journal, tt.force, tt.cleanup, tt.ext)
			}
		})
	}
}
