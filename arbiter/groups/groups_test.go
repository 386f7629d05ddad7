package groups

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestStore(t *testing.T) {
	cm := func(doc string) *corev1.ConfigMap {
		return &corev1.ConfigMap{Data: map[string]string{ConfigKey: doc}}
	}
	tests := []struct {
		name    string
		cm      *corev1.ConfigMap
		group   string
		want    int
		wantErr bool
	}{
		{"no configmap", nil, "any", 1, false},
		{"no key", &corev1.ConfigMap{}, "any", 1, false},
		{"default slots", cm("defaults: {slots: 3}"), "any", 3, false},
		{"group slots", cm("groups: {workers: {slots: 2}}"), "workers", 2, false},
		{"other group keeps default", cm("groups: {workers: {slots: 2}}"), "Group-A", 1, false},
		{"raw group names", cm("groups: {Group-A.1: {slots: 4}}"), "Group-A.1", 4, false},
		{"zero slots pauses", cm("groups: {db: {slots: 0}}"), "db", 0, false},
		{"negative rejected keeps last", cm("defaults: {slots: -1}"), "any", 5, true},
		{"unknown key rejected keeps last", cm("defaults: {slot: 2}"), "any", 5, true},
		{"not yaml rejected keeps last", cm("defaults: ["), "any", 5, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewStore()
			if err := s.Set(cm("defaults: {slots: 5}")); err != nil {
				t.Fatal(err)
			}
			err := s.Set(tt.cm)
			if (err != nil) != tt.wantErr || (s.Err() != nil) != tt.wantErr {
				t.Fatalf("Set() error = %v, Err() = %v, want error %v", err, s.Err(), tt.wantErr)
			}
			if got := s.For(tt.group).Slots; got != tt.want {
				t.Errorf("For(%q).Slots = %d, want %d", tt.group, got, tt.want)
			}
		})
	}
}
