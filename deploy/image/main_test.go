package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"
)

// TestWriteIsALoadableImage reads the tarball back the way an image loader
// does: index.json to the manifest, the manifest to the config and the
// layer, each blob checked against its digest and size; the layer holds
// the binary at /switchboard, executable; Docker's manifest.json names the
// same blobs; and the same input gives the same bytes.
func TestWriteIsALoadableImage(t *testing.T) {
	exe := []byte("\x7fELF not really, but bytes all the same")
	opts := Options{Ref: "example.test/switchboard:v1", Arch: "amd64", Created: time.Unix(1700000000, 0).UTC()}
	var buf bytes.Buffer
	img, err := Write(&buf, exe, opts)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(buf.Bytes()))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = b
	}
	type descriptor struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int               `json:"size"`
		Annotations map[string]string `json:"annotations"`
	}
	blob := func(d descriptor) []byte {
		t.Helper()
		b, ok := files["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]
		if !ok {
			t.Fatalf("blob %s missing", d.Digest)
		}
		if digest(b) != d.Digest || len(b) != d.Size {
			t.Fatalf("blob %s: digest %s size %d, descriptor says size %d", d.Digest, digest(b), len(b), d.Size)
		}
		return b
	}
	if string(files["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout = %q", files["oci-layout"])
	}
	var index struct{ Manifests []descriptor }
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json %s: %v", files["index.json"], err)
	}
	md := index.Manifests[0]
	if md.MediaType != mediaManifest || md.Annotations["org.opencontainers.image.ref.name"] != "v1" ||
		md.Annotations["io.containerd.image.name"] != opts.Ref || md.Digest != img.Manifest {
		t.Errorf("index entry %+v", md)
	}
	var manifest struct {
		Config descriptor
		Layers []descriptor
	}
	if err := json.Unmarshal(blob(md), &manifest); err != nil || len(manifest.Layers) != 1 {
		t.Fatalf("manifest: %v", err)
	}
	var config struct {
		Architecture, OS string
		Config           struct{ Entrypoint []string }
		RootFS           struct {
			DiffIDs []string `json:"diff_ids"`
		}
	}
	if err := json.Unmarshal(blob(manifest.Config), &config); err != nil {
		t.Fatal(err)
	}
	if config.Architecture != "amd64" || config.OS != "linux" || len(config.Config.Entrypoint) != 1 || config.Config.Entrypoint[0] != "/switchboard" {
		t.Errorf("config %+v", config)
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob(manifest.Layers[0])))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0] != digest(raw) {
		t.Errorf("diff_ids %v, uncompressed layer %s", config.RootFS.DiffIDs, digest(raw))
	}
	lr := tar.NewReader(bytes.NewReader(raw))
	h, err := lr.Next()
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(lr)
	if h.Name != "switchboard" || h.Mode&0o111 == 0 || !bytes.Equal(got, exe) {
		t.Errorf("layer entry %s mode %o, %d bytes; want switchboard, executable, the binary", h.Name, h.Mode, len(got))
	}
	if _, err := lr.Next(); err != io.EOF {
		t.Errorf("layer holds more than the binary: %v", err)
	}
	var docker []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(files["manifest.json"], &docker); err != nil || len(docker) != 1 {
		t.Fatalf("manifest.json %s: %v", files["manifest.json"], err)
	}
	if _, ok := files[docker[0].Config]; !ok || docker[0].RepoTags[0] != opts.Ref || len(docker[0].Layers) != 1 {
		t.Errorf("manifest.json %+v", docker[0])
	}
	if _, ok := files[docker[0].Layers[0]]; !ok {
		t.Errorf("manifest.json layer %s missing", docker[0].Layers[0])
	}

	var again bytes.Buffer
	if _, err := Write(&again, exe, opts); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("same input, different tarball: the build is not reproducible")
	}
}
