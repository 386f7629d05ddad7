package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestServiceURL(t *testing.T) {
	svc := func(clusterIP string, ports []corev1.ServicePort, lb []corev1.LoadBalancerIngress, ext []string) *corev1.Service {
		s := &corev1.Service{Spec: corev1.ServiceSpec{ClusterIP: clusterIP, Ports: ports, ExternalIPs: ext}}
		s.Status.LoadBalancer.Ingress = lb
		s.Namespace, s.Name = "reboot-manager", "arbiter"
		return s
	}
	p80 := []corev1.ServicePort{{Port: 80}}
	tests := []struct {
		name     string
		svc      *corev1.Service
		external bool
		want     string
		wantErr  string
	}{
		{"cluster IP", svc("10.0.0.5", p80, nil, nil), false, "http://10.0.0.5:80/", ""},
		{"IPv6 cluster IP", svc("fd00::5", p80, nil, nil), false, "http://[fd00::5]:80/", ""},
		{"other port", svc("10.0.0.5", []corev1.ServicePort{{Port: 8080}}, nil, nil), false, "http://10.0.0.5:8080/", ""},
		{"load balancer", svc("10.0.0.5", p80, []corev1.LoadBalancerIngress{{Hostname: "lb.example"}, {IP: "192.0.2.7"}}, nil), true, "http://192.0.2.7:80/", ""},
		{"external IP", svc("10.0.0.5", p80, nil, []string{"198.51.100.2"}), true, "http://198.51.100.2:80/", ""},
		{"external wanted, none yet", svc("10.0.0.5", p80, nil, nil), true, "", "no usable IP"},
		{"headless", svc("None", p80, nil, nil), false, "", "no usable IP"},
		{"no ports", svc("10.0.0.5", nil, nil, nil), false, "", "no ports"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ServiceURL(tt.svc, tt.external)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ServiceURL() = %q, %v; want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ServiceURL() = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestOSVersion(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  string
		err   bool
	}{
		{"usr/lib first", map[string]string{"usr/lib/os-release": "NAME=x\nVERSION=\"41.20241109.3.0 (CoreOS)\"\n", "etc/os-release": "VERSION=other\n"}, "41.20241109.3.0 (CoreOS)", false},
		{"etc only, unquoted", map[string]string{"etc/os-release": "VERSION=12\n"}, "12", false},
		{"no VERSION", map[string]string{"etc/os-release": "NAME=x\n"}, "", false},
		{"no os-release", nil, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for p, c := range tc.files {
				if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(root, p), []byte(c), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := osVersion(root)
			if got != tc.want || (err != nil) != tc.err {
				t.Fatalf("osVersion = %q, %v; want %q, error %v", got, err, tc.want, tc.err)
			}
		})
	}
}
