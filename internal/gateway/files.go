package gateway

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"slices"
	"strconv"

	"github.com/dust-run/dust/internal/store"
)

// A deploy's body is the image, or a multipart/form-data body whose parts
// are "image" and, optionally, "files": the app's files layer (a tar
// stream, store.PutLayer), which a deploy carries with its image so that
// both are stored, pinned, and given back together if the deploy is
// refused.

// Deploy body part names.
const (
	PartImage = "image"
	PartFiles = "files"
)

// staged is what a deploy has stored before taking the deploy lock: its
// image and maybe a files layer, each pinned (see pin) until the deploy
// ends.
type staged struct {
	image  string
	files  string // a layer uploaded with this deploy; "" none
	unpins []func()
}

func (st *staged) release() {
	for _, u := range st.unpins {
		u()
	}
}

// uploaded is what this deploy stored, for dropping when it is refused.
func (st *staged) uploaded() []string {
	var d []string
	for _, x := range []string{st.image, st.files} {
		if x != "" {
			d = append(d, x)
		}
	}
	return d
}

// stage stores one blob with put and pins it.
func (s *Server) stage(st *staged, put func() (string, error)) (string, error) {
	digest, err := put()
	if err != nil {
		return "", err
	}
	unpin := s.pin(digest)
	// A refused deploy of the same bytes may have removed them between
	// the store's rename and the pin; now that the pin holds, they stay.
	if _, err := s.store.StatImage(digest); err != nil {
		unpin()
		return "", fmt.Errorf("%w: the same upload was removed while storing it; deploy again: %w", store.ErrConflict, err)
	}
	st.unpins = append(st.unpins, unpin)
	return digest, nil
}

func (s *Server) stageImage(st *staged, image io.Reader) error {
	d, err := s.stage(st, func() (string, error) {
		d, _, err := s.store.PutImage(image, s.cfg.MaxImageSize)
		return d, err
	})
	st.image = d
	return err
}

func (s *Server) stageFiles(st *staged, layer io.Reader) error {
	d, err := s.stage(st, func() (string, error) {
		d, _, err := s.store.PutLayer(layer)
		return d, err
	})
	st.files = d
	return err
}

// maxDeployBody bounds a deploy's body: the image, a files layer, and the
// multipart framing around them.
func (s *Server) maxDeployBody() int64 { return s.cfg.MaxImageSize + store.MaxLayerUpload + 1<<20 }

// stageBody stores what the body of deploy request r carries.
func (s *Server) stageBody(st *staged, r *http.Request) error {
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" {
		// Anything else is the image itself, as it always was.
		return s.stageImage(st, r.Body)
	}
	if params["boundary"] == "" {
		return fmt.Errorf("%w: a multipart/form-data deploy body needs a boundary", errBadSetting)
	}
	mr := multipart.NewReader(r.Body, params["boundary"])
	seen := map[string]bool{}
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return bodyError(err, "the multipart deploy body")
		}
		name := part.FormName()
		if seen[name] {
			return fmt.Errorf("%w: the deploy body has two %q parts", errBadSetting, name)
		}
		seen[name] = true
		switch name {
		case PartImage:
			err = s.stageImage(st, part)
		case PartFiles:
			err = s.stageFiles(st, part)
		default:
			return fmt.Errorf("%w: deploy body part %q: want %q and, optionally, %q", errBadSetting, name, PartImage, PartFiles)
		}
		if err != nil {
			return err
		}
	}
	if st.image == "" {
		return fmt.Errorf("%w: the multipart deploy body has no %q part", errBadSetting, PartImage)
	}
	return nil
}

// bodyError words a multipart framing error; a deadline passed stays
// recognisable (apiDeploy answers it with 408).
func bodyError(err error, where string) error {
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return err
	}
	return fmt.Errorf("%w: %s: %w", errBadSetting, where, err)
}

// agedOut is the blobs (images and files layers) that versions of before
// used and that after no longer keeps: candidates for removal once a
// deploy pushed them out of the history.
func agedOut(before *store.App, after store.App) []string {
	if before == nil {
		return nil
	}
	keep := blobsOf(after)
	var out []string
	for _, d := range blobsOf(*before) {
		if !slices.Contains(keep, d) && !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out
}

// blobsOf is every image and files layer a's kept versions use.
func blobsOf(a store.App) []string {
	var out []string
	for _, v := range a.History {
		out = append(out, v.Digest)
		if v.Settings.Files != "" {
			out = append(out, v.Settings.Files)
		}
	}
	return out
}

// argsFromQuery reads a deploy's fixed args, query_args and files:
// arg=X (repeatable) replaces the app's fixed args in that order,
// no_args=true removes them; query_args=true|false; files= removes the
// app's files layer and files=sha256:... names one already stored. Absent,
// each is inherited.
func argsFromQuery(q url.Values, p *store.Patch) error {
	get := func(k string) (string, bool) {
		if v, ok := q[k]; ok && len(v) > 0 {
			return v[len(v)-1], true
		}
		return "", false
	}
	args, given := q["arg"]
	if v, ok := get("no_args"); ok {
		none, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%w: no_args=%q: want true or false", errBadSetting, v)
		}
		if none && given {
			return fmt.Errorf("%w: arg= and no_args=true together: give the arguments or remove them", errBadSetting)
		}
		if none {
			args, given = []string{}, true
		}
	}
	if given {
		args = slices.Clone(args)
		p.Args = &args
	}
	if v, ok := get("query_args"); ok {
		b := false
		if v != "" {
			var err error
			if b, err = strconv.ParseBool(v); err != nil {
				return fmt.Errorf("%w: query_args=%q: want true or false", errBadSetting, v)
			}
		}
		p.QueryArgs = &b
	}
	if v, ok := get("files"); ok {
		if v != "" {
			if err := store.ValidateDigest(v); err != nil {
				return fmt.Errorf("%w: files=%q: want a files layer digest (sha256:<64 hex digits>), or empty to remove the app's files", errBadSetting, v)
			}
		}
		p.Files = &v
	}
	return nil
}
