package controlplane

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// PKI holds the file paths of the cluster's certificate authority and the
// key pairs signed by it. Everything lives under one directory so that a
// restarted cluster keeps its identity and old kubeconfigs keep working.
type PKI struct {
	Dir string
}

// Paths of the files inside the PKI directory.
func (p PKI) CACert() string            { return filepath.Join(p.Dir, "ca.crt") }
func (p PKI) CAKey() string             { return filepath.Join(p.Dir, "ca.key") }
func (p PKI) ServingCert() string       { return filepath.Join(p.Dir, "apiserver.crt") }
func (p PKI) ServingKey() string        { return filepath.Join(p.Dir, "apiserver.key") }
func (p PKI) AdminCert() string         { return filepath.Join(p.Dir, "admin.crt") }
func (p PKI) AdminKey() string          { return filepath.Join(p.Dir, "admin.key") }
func (p PKI) ServiceAccountKey() string { return filepath.Join(p.Dir, "sa.key") }
func (p PKI) ServiceAccountPub() string { return filepath.Join(p.Dir, "sa.pub") }
func (p PKI) KubeletClientCert() string { return filepath.Join(p.Dir, "apiserver-kubelet-client.crt") }
func (p PKI) KubeletClientKey() string  { return filepath.Join(p.Dir, "apiserver-kubelet-client.key") }

// certValidity is long because a local cluster must not stop working after a
// year on somebody's laptop, and nothing here is reachable off the machine.
const certValidity = 10 * 365 * 24 * time.Hour

// Ensure creates whatever part of the PKI is missing and keeps what exists.
// The serving certificate is reissued when its SANs do not cover the
// requested IPs (the Service CIDR's first address, the advertised address),
// so a changed flag never leaves clients failing verification.
func (p PKI) Ensure(serviceIP net.IP, extraIPs ...net.IP) error {
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return fmt.Errorf("create pki dir: %w", err)
	}
	caCert, caKey, err := p.loadOrCreateCA()
	if err != nil {
		return err
	}
	servingIPs := append([]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, serviceIP}, extraIPs...)
	servingNames := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	if !certCovers(p.ServingCert(), servingIPs) {
		if err := issue(caCert, caKey, p.ServingCert(), p.ServingKey(), x509.Certificate{
			Subject:     pkix.Name{CommonName: "kube-apiserver"},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			IPAddresses: servingIPs,
			DNSNames:    servingNames,
		}); err != nil {
			return fmt.Errorf("issue serving certificate: %w", err)
		}
	}
	if !fileExists(p.AdminCert()) || !fileExists(p.AdminKey()) {
		if err := issue(caCert, caKey, p.AdminCert(), p.AdminKey(), x509.Certificate{
			// system:masters is what kubeadm's admin.conf uses: full access
			// without needing any RBAC objects to exist first.
			Subject:     pkix.Name{CommonName: "kubernetes-admin", Organization: []string{"system:masters"}},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}); err != nil {
			return fmt.Errorf("issue admin certificate: %w", err)
		}
	}
	if !fileExists(p.KubeletClientCert()) || !fileExists(p.KubeletClientKey()) {
		if err := issue(caCert, caKey, p.KubeletClientCert(), p.KubeletClientKey(), x509.Certificate{
			// What the API server shows kubelets (kubeadm's
			// apiserver-kubelet-client); kubelets authorize it through the
			// API server, where system:masters may do anything.
			Subject:     pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}); err != nil {
			return fmt.Errorf("issue kubelet client certificate: %w", err)
		}
	}
	if !fileExists(p.ServiceAccountKey()) || !fileExists(p.ServiceAccountPub()) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		if err := writeKey(p.ServiceAccountKey(), key); err != nil {
			return err
		}
		der, err := x509.MarshalPKIXPublicKey(key.Public())
		if err != nil {
			return err
		}
		if err := os.WriteFile(p.ServiceAccountPub(), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// KubeletServing returns the paths of node's kubelet serving certificate
// and key, issuing them from the cluster CA when missing or when they do not
// cover ip: the API server verifies kubelets against the CA and dials them
// by address.
func (p PKI) KubeletServing(node string, ip net.IP) (certPath, keyPath string, err error) {
	certPath = filepath.Join(p.Dir, "kubelet-"+node+".crt")
	keyPath = filepath.Join(p.Dir, "kubelet-"+node+".key")
	if certCovers(certPath, []net.IP{ip}) && fileExists(keyPath) {
		return certPath, keyPath, nil
	}
	caCert, caKey, err := p.loadOrCreateCA()
	if err != nil {
		return "", "", err
	}
	if err := issue(caCert, caKey, certPath, keyPath, x509.Certificate{
		// The kubelet's own serving certificate names the node so.
		Subject:     pkix.Name{CommonName: "system:node:" + node, Organization: []string{"system:nodes"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{ip},
		DNSNames:    []string{node},
	}); err != nil {
		return "", "", fmt.Errorf("issue kubelet serving certificate of node %s: %w", node, err)
	}
	return certPath, keyPath, nil
}

func (p PKI) loadOrCreateCA() (*x509.Certificate, crypto.Signer, error) {
	if fileExists(p.CACert()) && fileExists(p.CAKey()) {
		cert, err := readCert(p.CACert())
		if err != nil {
			return nil, nil, err
		}
		key, err := readKey(p.CAKey())
		if err != nil {
			return nil, nil, err
		}
		return cert, key, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := x509.Certificate{
		SerialNumber:          newSerial(),
		Subject:               pkix.Name{CommonName: "switchboard-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA: %w", err)
	}
	if err := os.WriteFile(p.CACert(), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, nil, err
	}
	if err := writeKey(p.CAKey(), key); err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func issue(ca *x509.Certificate, caKey crypto.Signer, certPath, keyPath string, tmpl x509.Certificate) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl.SerialNumber = newSerial()
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(certValidity)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, ca, key.Public(), caKey)
	if err != nil {
		return err
	}
	if err := writeKey(keyPath, key); err != nil {
		return err
	}
	return os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func certCovers(path string, ips []net.IP) bool {
	cert, err := readCert(path)
	if err != nil || time.Now().After(cert.NotAfter) {
		return false
	}
	for _, want := range ips {
		found := false
		for _, have := range cert.IPAddresses {
			if have.Equal(want) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func newSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n.Add(n, big.NewInt(1))
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}

func readCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM data", path)
	}
	return x509.ParseCertificate(block.Bytes)
}

func readKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM data", path)
	}
	return x509.ParseECPrivateKey(block.Bytes)
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, os.ErrNotExist)
}
