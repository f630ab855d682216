package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// writeManifest writes m as dir's manifest.json and syncs it.
func writeManifest(dir string, m *Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, manifestFile))
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write manifest: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write manifest: %w", err)
	}
	return f.Close()
}

// syncDir flushes a directory's entries (and, for a build dir, its files).
func syncDir(dir string) error {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Type().IsRegular() {
			if f, err := os.Open(filepath.Join(dir, e.Name())); err == nil {
				err = f.Sync()
				f.Close()
				if err != nil {
					return fmt.Errorf("sync %s: %w", e.Name(), err)
				}
			}
		}
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// tmpPrefix names the temporary build directories of one image.
func tmpPrefix(name string) string { return ".tmp-" + name + "-" }

// cleanStale removes build directories left by killed builds; the caller
// holds the image lock, so none of them is in use.
func cleanStale(cacheDir, name string) {
	m, _ := filepath.Glob(filepath.Join(cacheDir, tmpPrefix(name)+"*"))
	for _, d := range m {
		os.RemoveAll(d)
	}
}

// lockImage takes the image's lock file, waiting until ctx is done.
func lockImage(ctx context.Context, cacheDir, name string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(cacheDir, "."+name+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("image lock: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("image lock: %w", err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for image lock: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Get returns a complete image from the cache: its manifest parses and every
// file it lists exists with the recorded size. Otherwise the error wraps
// ErrNotFound.
func Get(cacheDir, name string) (*Image, error) {
	dir := filepath.Join(cacheDir, name)
	b, err := os.ReadFile(filepath.Join(dir, manifestFile))
	if err != nil {
		return nil, fmt.Errorf("%w: %s in %s", ErrNotFound, name, cacheDir)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil || m.Name != name || m.Fingerprint == "" {
		return nil, fmt.Errorf("%w: %s in %s (bad manifest)", ErrNotFound, name, cacheDir)
	}
	img := &Image{Name: name, Dir: dir, Manifest: m}
	for _, f := range m.Files {
		p := filepath.Join(dir, f.Name)
		st, err := os.Stat(p)
		if err != nil || st.Size() != f.Size {
			return nil, fmt.Errorf("%w: %s in %s (file %s missing or changed)", ErrNotFound, name, cacheDir, f.Name)
		}
		switch f.Name {
		case kernelFile:
			img.Kernel = p
		case vmlinuxFile:
			img.Vmlinux = p
		case initrdFile:
			img.Initrd = p
		case rootfsFile:
			img.Rootfs = p
		}
	}
	if img.Kernel == "" && m.KernelKind == KernelELFPVH {
		img.Kernel = img.Vmlinux
	}
	if img.Vmlinux == "" || img.Initrd == "" || img.Rootfs == "" {
		return nil, fmt.Errorf("%w: %s in %s (incomplete)", ErrNotFound, name, cacheDir)
	}
	return img, nil
}

// List returns the complete images in the cache, sorted by name.
func List(cacheDir string) ([]*Image, error) {
	entries, err := os.ReadDir(cacheDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	var out []*Image
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if img, err := Get(cacheDir, e.Name()); err == nil {
			out = append(out, img)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Remove deletes an image from the cache. It waits for a build of the same
// image to finish first. Removing an image that is not there wraps ErrNotFound.
func Remove(ctx context.Context, cacheDir, name string) error {
	if name == "" || strings.ContainsAny(name, "/\x00") || strings.HasPrefix(name, ".") {
		return fmt.Errorf("%w: bad image name %q", ErrNotFound, name)
	}
	dir := filepath.Join(cacheDir, name)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %s in %s", ErrNotFound, name, cacheDir)
	}
	unlock, err := lockImage(ctx, cacheDir, name)
	if err != nil {
		return err
	}
	defer unlock()
	// Drop the manifest first so a half-removed image never looks complete.
	if err := os.Remove(filepath.Join(dir, manifestFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove image %s: %w", name, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove image %s: %w", name, err)
	}
	cleanStale(cacheDir, name)
	return nil
}

// installImage renames the finished build directory tmp to the image's
// place in the cache, atomically replacing an older image.
func installImage(tmp, cacheDir, name string) error {
	final := filepath.Join(cacheDir, name)
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, final, unix.RENAME_EXCHANGE); err == nil {
		// tmp now holds the old image.
		os.RemoveAll(tmp)
	} else if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("install image: %w", err)
	}
	_ = syncDir(cacheDir)
	return nil
}
