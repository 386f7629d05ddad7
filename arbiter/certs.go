package arbiter

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"
)

// CertReloader serves a TLS certificate from files and picks up new ones
// without a restart (cert-manager or a Secret volume rewriting them): at
// most once per CheckEvery, a handshake looks at the files' modification
// times and reloads when they changed. A pair that fails to load keeps the
// last good certificate.
type CertReloader struct {
	certFile, keyFile string
	// CheckEvery bounds how often the files are looked at.
	CheckEvery time.Duration

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   string // the files' modification times when cert was loaded
	checked time.Time
}

// NewCertReloader loads the pair once, so a bad pair fails at start.
func NewCertReloader(certFile, keyFile string) (*CertReloader, error) {
	r := &CertReloader{certFile: certFile, keyFile: keyFile, CheckEvery: time.Second}
	if err := r.reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (r *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checked) >= r.CheckEvery {
		r.checked = time.Now()
		if s, err := r.stampNow(); err == nil && s != r.stamp {
			_ = r.reloadLocked() // a half-written pair keeps the old certificate
		}
	}
	return r.cert, nil
}

func (r *CertReloader) reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reloadLocked()
}

func (r *CertReloader) reloadLocked() error {
	stamp, err := r.stampNow()
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("load TLS certificate %s and key %s: %w", r.certFile, r.keyFile, err)
	}
	r.cert, r.stamp = &cert, stamp
	return nil
}

func (r *CertReloader) stampNow() (string, error) {
	var stamp string
	for _, f := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return "", fmt.Errorf("stat %s: %w", f, err)
		}
		stamp += fmt.Sprintf("%d/%d;", fi.ModTime().UnixNano(), fi.Size())
	}
	return stamp, nil
}
