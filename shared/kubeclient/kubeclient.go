// Package kubeclient builds a Kubernetes client configuration from a
// kubeconfig path, $KUBECONFIG, or the in-cluster service account.
package kubeclient

import (
	"fmt"
	"os"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Config returns a rest.Config. An explicit path wins; otherwise the
// in-cluster configuration is used when running in a pod, then $KUBECONFIG
// and ~/.kube/config. userAgent names the program in the API server's logs.
func Config(kubeconfig, userAgent string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	switch {
	case kubeconfig != "":
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		cfg, err = rest.InClusterConfig()
	default:
		rules := clientcmd.NewDefaultClientConfigLoadingRules()
		cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("load Kubernetes client configuration: %w", err)
	}
	cfg.UserAgent = userAgent
	// The defaults (5 QPS) are too low for draining a node with many pods.
	cfg.QPS, cfg.Burst = 50, 100
	return cfg, nil
}

// New returns a clientset built from Config.
func New(kubeconfig, userAgent string) (kubernetes.Interface, *rest.Config, error) {
	cfg, err := Config(kubeconfig, userAgent)
	if err != nil {
		return nil, nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("build Kubernetes client: %w", err)
	}
	return cs, cfg, nil
}
