package machine

import (
	"fmt"
	"io/fs"
)

// FilesPath is where a machine sees its app's read-only files.
const FilesPath = "/app"

// App is what an image carries besides its program and limits.
type App struct {
	// Files are mounted read-only at FilesPath (nil: none). They must be
	// read-only and bounded (the gateway gives a store.Layer); a kind may
	// copy them.
	Files fs.FS
	// Server, when set, makes the program an HTTP server app: started
	// once at Prepare with this argv and environment, and given one
	// connection per request. Such an image's Run takes the raw HTTP/1.1
	// request as the request's Body (until EOF) and writes the raw HTTP
	// response to stdout; the program's own output goes to the log.
	Server *Server
}

// Server is a server app's start-up.
type Server struct {
	Args []string // argv (nil: the kind's default program name)
	Env  []string // KEY=VALUE; the kind adds PORT unless it is set
}

// AppKind is implemented by kinds whose images can carry more than a
// program: files at FilesPath (a wasm preopen, the hvt monitor's /app for
// Linux programs), a server start-up (hvt Linux programs).
type AppKind interface {
	Kind
	// PrepareApp is Prepare with app. A kind refuses what it cannot do
	// (ErrBadImage) rather than run an app without part of it.
	PrepareApp(image []byte, limits Limits, app App) (Image, error)
}

// Prepare prepares image on kind with files at FilesPath, or none when
// files is nil.
func Prepare(kind Kind, image []byte, limits Limits, files fs.FS) (Image, error) {
	return PrepareApp(kind, image, limits, App{Files: files})
}

// PrepareApp prepares image on kind with app: the one way every caller
// gives any kind an app's files or server start-up.
func PrepareApp(kind Kind, image []byte, limits Limits, app App) (Image, error) {
	if app.Files == nil && app.Server == nil {
		return kind.Prepare(image, limits)
	}
	ak, ok := kind.(AppKind)
	if !ok {
		what := "mount an app's files at " + FilesPath
		if app.Server != nil {
			what = "run a server app"
		}
		return nil, fmt.Errorf("%w: machine kind %s cannot %s", ErrBadImage, kind.Name(), what)
	}
	return ak.PrepareApp(image, limits, app)
}
