package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"os"
	"strconv"
	"strings"

	"github.com/dust-run/dust/internal/gateway"
	"github.com/dust-run/dust/internal/store"
)

// checkArgs refuses --arg values the server would, naming the flag.
func checkArgs(args []string) error {
	if len(args) > store.MaxArgs {
		return badUsage("--arg: %d arguments, at most %d allowed", len(args), store.MaxArgs)
	}
	total := 0
	for _, a := range args {
		total += len(a) + 1
	}
	if total > store.MaxArgBytes {
		return badUsage("--arg: %d bytes of arguments, at most %d allowed", total, store.MaxArgBytes)
	}
	return nil
}

// packFiles packs the --files directory into a files layer. What a layer
// cannot hold (a symbolic link, a device, too much) is a bad flag value;
// a directory that cannot be read is an I/O error, as a missing image is.
func packFiles(dir string) ([]byte, error) {
	if dir == "" {
		return nil, badUsage(`--files "": want a directory (--no-files removes the app's files)`)
	}
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("--files %s: %w", dir, err)
	}
	if !st.IsDir() {
		return nil, badUsage("--files %s is not a directory; want the directory to mount at /app", dir)
	}
	var b bytes.Buffer
	if _, err := store.PackDir(&b, dir); err != nil {
		if errors.Is(err, store.ErrBadLayer) || errors.Is(err, store.ErrLayerTooLarge) {
			return nil, badUsage("--files %s: %v", dir, err)
		}
		return nil, fmt.Errorf("--files %s: %w", dir, err)
	}
	return b.Bytes(), nil
}

// withFiles is the multipart deploy body holding the files layer and then
// the image, streamed as the image is read.
func withFiles(image io.Reader, layer []byte) (io.Reader, string) {
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		err := func() error {
			w, err := mw.CreateFormFile(gateway.PartFiles, "files.tar")
			if err != nil {
				return err
			}
			if _, err := w.Write(layer); err != nil {
				return err
			}
			if w, err = mw.CreateFormFile(gateway.PartImage, "image"); err != nil {
				return err
			}
			if _, err := io.Copy(w, image); err != nil {
				return err
			}
			return mw.Close()
		}()
		// The transport closes pr when the request ends, which ends a
		// write blocked here.
		pw.CloseWithError(err)
	}()
	return pr, mw.FormDataContentType()
}

// argsText shows fixed arguments as a shell would need them typed.
func argsText(args []string) string {
	if len(args) == 0 {
		return "none"
	}
	var b strings.Builder
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		if a != "" && !strings.ContainsAny(a, " \t\n\"'\\$`*?[]{}()<>|&;#~") {
			b.WriteString(a)
		} else {
			b.WriteString(strconv.Quote(a))
		}
	}
	return b.String()
}

// filesText shows an app's files layer.
func filesText(s gateway.SettingsView) string {
	if s.Files == "" {
		return "none"
	}
	t := "at /app, layer " + shortDigest(s.Files)
	if s.FilesSize != "" {
		t += ", " + s.FilesSize
	}
	return t
}
