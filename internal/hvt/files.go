package hvt

import (
	"github.com/dust-run/dust/internal/machine"
)

// PrepareApp implements machine.AppKind: a Linux program sees files at
// /app (Options.Files) and may be a server app (Options.Server); a libdust
// program has no file system and is refused as a server.
func (Kind) PrepareApp(elf []byte, limits machine.Limits, app machine.App) (machine.Image, error) {
	opt := Options{Files: app.Files}
	if s := app.Server; s != nil {
		opt.Server = &ServerOptions{Args: s.Args, Env: s.Env}
	}
	im, err := PrepareWith(elf, limits, opt)
	if err != nil {
		return nil, err // not a nil *Image in a non-nil interface
	}
	return im, nil
}
