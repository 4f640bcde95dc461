// Command image builds switchboard's container image without Docker or a
// registry: a static binary (CGO_ENABLED=0) as the one file of a one-layer
// image, written as a tarball that holds both an OCI image layout
// (index.json, blobs/) and Docker's manifest.json, so `docker load`,
// `podman load`, `ctr images import`, `kind load image-archive` and
// `skopeo copy oci-archive:...` all take it:
//
//	go run ./deploy/image -o switchboard.tar -tag switchboard:latest
//
// The image needs no nft, iptables or conntrack binary: the proxy speaks
// netlink. It holds no shell and no CA bundle (in-cluster config brings the
// cluster's CA). The build is reproducible: every timestamp is
// SOURCE_DATE_EPOCH (default 0) and the layer is gzipped without a name or
// time, so the same binary gives the same digests.
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Media types of the OCI image spec.
const (
	mediaIndex    = "application/vnd.oci.image.index.v1+json"
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
)

// binaryPath is where the binary sits in the image, and the entrypoint.
const binaryPath = "/switchboard"

func main() {
	out := flag.String("o", "switchboard.tar", "output tarball")
	tag := flag.String("tag", "switchboard:latest", "image reference recorded in the tarball (what docker load and ctr import name it)")
	bin := flag.String("binary", "", "an already built static switchboard binary (default: build ./cmd/switchboard with CGO_ENABLED=0)")
	arch := flag.String("arch", runtime.GOARCH, "GOARCH of the image")
	flag.Parse()
	if err := run(*out, *tag, *bin, *arch); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(out, tag, bin, arch string) error {
	start := time.Now()
	created := time.Unix(0, 0).UTC()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH %q: %w", s, err)
		}
		created = time.Unix(sec, 0).UTC()
	}
	if bin == "" {
		dir, err := os.MkdirTemp("", "switchboard-image-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		bin = filepath.Join(dir, "switchboard")
		if err := buildStatic(bin, arch); err != nil {
			return err
		}
	}
	built := time.Since(start)
	exe, err := os.ReadFile(bin)
	if err != nil {
		return fmt.Errorf("read binary: %w", err)
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	img, err := Write(f, exe, Options{Ref: tag, Arch: arch, Created: created})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(out)
		return err
	}
	st, err := os.Stat(out)
	if err != nil {
		return err
	}
	fmt.Printf("%s: %s (%s/%s) manifest %s\n  binary %.1f MB, layer %.1f MB gzipped, tarball %.1f MB; build %v, image %v\n",
		out, tag, "linux", arch, img.Manifest, mb(int64(len(exe))), mb(img.LayerSize), mb(st.Size()),
		built.Round(time.Second), (time.Since(start) - built).Round(time.Millisecond))
	return nil
}

func mb(n int64) float64 { return float64(n) / 1e6 }

// buildStatic builds ./cmd/switchboard with cgo off, so the binary runs on
// an image with no libc. Nothing switchboard links needs cgo: netlink,
// nftables and DNS are pure Go.
func buildStatic(out, arch string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, "./cmd/switchboard")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build ./cmd/switchboard (CGO_ENABLED=0): %w", err)
	}
	return nil
}

// Options describe the image.
type Options struct {
	Ref     string    // e.g. switchboard:latest
	Arch    string    // GOARCH
	Created time.Time // every timestamp in the image
}

// Image names what Write wrote.
type Image struct {
	Manifest, Config, Layer string // digests, "sha256:..."
	LayerSize               int64  // compressed
}

// Write writes a one-layer image holding exe at /switchboard to w, as an
// OCI image layout plus Docker's manifest.json.
func Write(w io.Writer, exe []byte, o Options) (Image, error) {
	layer, diffID, err := layerOf(exe, o.Created)
	if err != nil {
		return Image{}, err
	}
	config, err := json.Marshal(map[string]any{
		"created":      o.Created.Format(time.RFC3339),
		"architecture": o.Arch,
		"os":           "linux",
		"config": map[string]any{
			"Entrypoint": []string{binaryPath},
			"Env":        []string{"PATH=/"},
			"Labels": map[string]string{
				"org.opencontainers.image.title":       "switchboard",
				"org.opencontainers.image.description": "Kubernetes Service networking: EndpointSlice controller, nftables node proxy, cluster DNS",
			},
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{diffID}},
		"history": []map[string]string{{"created": o.Created.Format(time.RFC3339), "created_by": "go run ./deploy/image"}},
	})
	if err != nil {
		return Image{}, err
	}
	desc := func(media string, b []byte) map[string]any {
		return map[string]any{"mediaType": media, "digest": digest(b), "size": len(b)}
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaManifest,
		"config":        desc(mediaConfig, config),
		"layers":        []any{desc(mediaLayer, layer)},
	})
	if err != nil {
		return Image{}, err
	}
	md := desc(mediaManifest, manifest)
	md["annotations"] = map[string]string{
		// The tag (OCI) and the full name (containerd's import reads it).
		"org.opencontainers.image.ref.name": tagOf(o.Ref),
		"io.containerd.image.name":          o.Ref,
	}
	md["platform"] = map[string]string{"architecture": o.Arch, "os": "linux"}
	index, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": mediaIndex, "manifests": []any{md}})
	if err != nil {
		return Image{}, err
	}
	blob := func(b []byte) string { return "blobs/sha256/" + strings.TrimPrefix(digest(b), "sha256:") }
	docker, err := json.Marshal([]map[string]any{{
		"Config":   blob(config),
		"RepoTags": []string{o.Ref},
		"Layers":   []string{blob(layer)},
	}})
	if err != nil {
		return Image{}, err
	}

	tw := tar.NewWriter(w)
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: o.Created, Format: tar.FormatPAX})
	}
	file := func(name string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: o.Created, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	steps := []func() error{
		func() error { return file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)) },
		func() error { return file("index.json", index) },
		func() error { return file("manifest.json", docker) },
		func() error { return dir("blobs/") },
		func() error { return dir("blobs/sha256/") },
		func() error { return file(blob(manifest), manifest) },
		func() error { return file(blob(config), config) },
		func() error { return file(blob(layer), layer) },
		tw.Close,
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return Image{}, fmt.Errorf("write image tarball: %w", err)
		}
	}
	return Image{Manifest: digest(manifest), Config: digest(config), Layer: digest(layer), LayerSize: int64(len(layer))}, nil
}

// layerOf is the gzipped layer holding exe, and the digest of its
// uncompressed tar (the config's diff_id).
func layerOf(exe []byte, created time.Time) (layer []byte, diffID string, err error) {
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(binaryPath, "/"), Mode: 0o755,
		Size: int64(len(exe)), ModTime: created, Format: tar.FormatPAX}); err != nil {
		return nil, "", err
	}
	if _, err := tw.Write(exe); err != nil {
		return nil, "", err
	}
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.DefaultCompression)
	if err != nil {
		return nil, "", err
	}
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return nil, "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	return gz.Bytes(), digest(raw.Bytes()), nil
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// tagOf is the tag of a reference (after the last colon past the last
// slash), "latest" when it has none.
func tagOf(ref string) string {
	name := ref[strings.LastIndex(ref, "/")+1:]
	if i := strings.LastIndex(name, ":"); i >= 0 {
		return name[i+1:]
	}
	return "latest"
}
