package wasm

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/tetratelabs/wazero"
)

// The on-disk compilation cache is a directory per image, named after the
// image's digest ("sha256-<hex>"), each holding wazero's own cache. wazero
// names its entries by a hash of the bytes it compiled (which are Dust's
// rewrite of the image, or a reactor's snapshot, not the image itself),
// its version and the CPU's features, none of which Dust can recompute
// from outside; a directory per image is what makes "the compiled code of
// this image" something that can be found and removed (PruneCache).
const imageDirPrefix = "sha256-"

// legacyPrefix starts the directory wazero made directly in the cache
// directory before it was split per image: no image owns what is in it.
const legacyPrefix = "wazero-"

// Caches are per directory and per process: wazero's cache is safe to
// share between runtimes, and sharing it means a module deployed twice is
// compiled once.
var caches struct {
	sync.Mutex
	byDir map[string]wazero.CompilationCache
}

// ImageDigest is how the compilation cache names an image: "sha256:" and
// the SHA-256 of its bytes in lower-case hex, as the store names images.
func ImageDigest(image []byte) string {
	sum := sha256.Sum256(image)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// DefaultCacheDir is where compiled code is kept when Options.CacheDir is
// empty.
func DefaultCacheDir() (string, error) {
	if d := os.Getenv(CacheEnv); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "dust", "wazero"), nil
}

// cacheDir is the cache directory Options o name, "" for none.
func cacheDir(o Options) string {
	if o.NoDiskCache {
		return ""
	}
	if o.CacheDir != "" {
		return o.CacheDir
	}
	d, err := DefaultCacheDir()
	if err != nil {
		// No home directory: compile per process rather than fail.
		return ""
	}
	return d
}

func compilationCache(o Options, digest string) (wazero.CompilationCache, error) {
	dir := cacheDir(o)
	if dir != "" {
		abs, err := filepath.Abs(filepath.Join(dir, imageDirPrefix+strings.TrimPrefix(digest, "sha256:")))
		if err != nil {
			return nil, fmt.Errorf("wasm: compilation cache %s: %w", dir, err)
		}
		dir = abs
	}
	caches.Lock()
	defer caches.Unlock()
	if c, ok := caches.byDir[dir]; ok {
		// Unless the directory went (PruneCache, or by hand): wazero
		// would fail to write into it.
		if _, err := os.Stat(dir); dir == "" || err == nil {
			return c, nil
		}
	}
	var c wazero.CompilationCache
	if dir == "" {
		c = wazero.NewCompilationCache()
	} else {
		var err error
		if c, err = wazero.NewCompilationCacheWithDir(dir); err != nil {
			return nil, fmt.Errorf("wasm: compilation cache %s: %w", dir, err)
		}
	}
	if caches.byDir == nil {
		caches.byDir = map[string]wazero.CompilationCache{}
	}
	caches.byDir[dir] = c
	return c, nil
}

// PruneCache removes from the compilation cache in dir ("" for
// DefaultCacheDir) the compiled code of every image whose digest (see
// ImageDigest) is not in keep, and what an older Dust left there for no
// image in particular, and reports the bytes it freed. Anything else in
// dir is left alone.
//
// keep must name every image that is prepared or being prepared with
// this cache directory: the compiled code of a live image is in memory
// and survives, but a Prepare of an image not kept can fail if its
// directory is removed while it compiles.
func PruneCache(dir string, keep []string) (int64, error) {
	if dir == "" {
		d, err := DefaultCacheDir()
		if err != nil {
			return 0, fmt.Errorf("wasm: pruning the compilation cache: %w", err)
		}
		dir = d
	}
	// As compilationCache spells it, for caches.byDir.
	dir, err := filepath.Abs(dir)
	if err != nil {
		return 0, fmt.Errorf("wasm: pruning the compilation cache: %w", err)
	}
	kept := make(map[string]bool, len(keep))
	for _, d := range keep {
		h, ok := strings.CutPrefix(d, "sha256:")
		if !ok || !isHexDigest(h) {
			return 0, fmt.Errorf("wasm: pruning the compilation cache: digest %q is not sha256:<64 lower-case hex digits>", d)
		}
		kept[imageDirPrefix+h] = true
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("wasm: pruning the compilation cache: %w", err)
	}
	caches.Lock()
	defer caches.Unlock()
	var freed int64
	var errs []error
	for _, e := range entries {
		name := e.Name()
		owned := strings.HasPrefix(name, imageDirPrefix) && isHexDigest(name[len(imageDirPrefix):])
		if !e.IsDir() || kept[name] || !owned && !strings.HasPrefix(name, legacyPrefix) {
			continue
		}
		p := filepath.Join(dir, name)
		n := diskUsage(p)
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
			continue
		}
		freed += n
		// The next Prepare of that image makes the directory anew.
		delete(caches.byDir, p)
	}
	if err := errors.Join(errs...); err != nil {
		return freed, fmt.Errorf("wasm: pruning the compilation cache: %w", err)
	}
	return freed, nil
}

func isHexDigest(h string) bool {
	if len(h) != 2*sha256.Size {
		return false
	}
	for _, c := range h {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// diskUsage is the size of the regular files under p.
func diskUsage(p string) int64 {
	var n int64
	filepath.WalkDir(p, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
