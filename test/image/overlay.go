package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// defaultPrefix is where deploy/ names the images: reboot-manager/<program>.
const defaultPrefix = "reboot-manager"

// writeOverlay writes outDir/kustomization.yaml: deploy/ as its only
// resource, with each program's image set to REGISTRY/<program>:version
// (reboot-manager/<program>:version when registry is empty), as
// `kustomize edit set image` would set it, so deploy/ itself is never
// edited.
func writeOverlay(deployDir, outDir, registry, version string) (string, error) {
	if err := checkVersion(version); err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString("# Written by test/image (make manifests): deploy/ with the images of one version.\n")
	b.WriteString("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n")
	absDeploy, err := filepath.Abs(deployDir)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", deployDir, err)
	}
	if _, err := os.Stat(filepath.Join(absDeploy, "kustomization.yaml")); err != nil {
		return "", fmt.Errorf("-deploy %s: %w", deployDir, err)
	}
	absOut, err := filepath.Abs(outDir)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", outDir, err)
	}
	rel, err := filepath.Rel(absOut, absDeploy)
	if err != nil {
		return "", fmt.Errorf("find %s from %s: %w", deployDir, outDir, err)
	}
	fmt.Fprintf(&b, "resources:\n- %s\nimages:\n", strconv.Quote(filepath.ToSlash(rel)))
	for _, p := range programs() {
		newName := defaultPrefix + "/" + p.name
		if registry != "" {
			if _, err := repository(registry, p.name); err != nil {
				return "", err
			}
			newName = registry + "/" + p.name
		}
		fmt.Fprintf(&b, "- name: %s\n  newName: %s\n  newTag: %s\n",
			strconv.Quote(defaultPrefix+"/"+p.name), strconv.Quote(newName), strconv.Quote(version))
	}
	if err := os.MkdirAll(absOut, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", outDir, err)
	}
	path := filepath.Join(absOut, "kustomization.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return path, nil
}
