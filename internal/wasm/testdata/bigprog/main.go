package main

import (
	"archive/tar"
	"archive/zip"
	"compress/bzip2"
	"compress/flate"
	"compress/gzip"
	"compress/lzw"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/mlkem"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"debug/dwarf"
	"debug/elf"
	"encoding/asn1"
	"encoding/csv"
	"encoding/gob"
	"encoding/json"
	"encoding/xml"
	"expvar"
	"fmt"
	"go/doc"
	"go/format"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"html"
	htmltemplate "html/template"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"log/slog"
	"math/big"
	"mime/multipart"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/http/httputil"
	"net/http/pprof"
	"net/mail"
	"net/rpc"
	"net/smtp"
	"os"
	"regexp"
	"testing/fstest"
	"text/tabwriter"
	"text/template"
	"unicode/utf16"
)

// bigprog is a large WASI command (≈ 19 MB) for measuring what real Go
// programs declare: it links much of the standard library.
func main() {
	fmt.Printf("Content-Type: text/plain\n\n")
	_ = zip.NewWriter(os.Stdout)
	_, _ = gzip.NewReader(os.Stdin)
	_ = &tls.Config{}
	_, _ = x509.ParseCertificate(nil)
	_ = sql.Drivers()
	b, _ := json.Marshal(map[string]any{"a": 1})
	_, _ = xml.Marshal(struct{ A int }{1})
	t := template.Must(template.New("x").Parse("{{.}}"))
	ht := htmltemplate.Must(htmltemplate.New("x").Parse("{{.}}"))
	_ = t.Execute(io.Discard, string(b))
	_ = ht.Execute(io.Discard, string(b))
	_, _ = png.Decode(os.Stdin)
	_ = new(big.Int).Exp(big.NewInt(2), big.NewInt(100), nil)
	_ = regexp.MustCompile("a+b")
	rec := httptest.NewRecorder()
	http.NotFound(rec, httptest.NewRequest("GET", "/", nil))
	fmt.Printf("%d\n", rec.Code)
	_ = http.ListenAndServe
	_ = http.Get
	fset := token.NewFileSet()
	f, _ := parser.ParseFile(fset, "x.go", "package x", 0)
	conf := types.Config{Importer: importer.Default()}
	_, _ = conf.Check("x", fset, nil, nil)
	_ = format.Node(io.Discard, fset, f)
	_ = doc.New
	_, _ = elf.Open("x")
	_ = dwarf.New
	_ = rpc.NewServer()
	_ = smtp.Dial
	_, _ = mail.ParseAddress("a@b")
	_ = ecdsa.GenerateKey
	_ = ed25519.GenerateKey
	_ = rsa.GenerateKey
	_ = mlkem.GenerateKey768
	_ = jpeg.Decode
	_ = gif.Decode
	_ = csv.NewReader(os.Stdin)
	_ = gob.NewEncoder(os.Stdout)
	_, _ = asn1.Marshal(1)
	_ = html.EscapeString("x")
	_ = pprof.Index
	_ = expvar.NewInt("x")
	slog.Info("x")
	_ = fstest.MapFS{}
	_ = tabwriter.NewWriter(os.Stdout, 1, 1, 1, ' ', 0)
	_ = utf16.Encode(nil)
	_ = flate.NewReader(os.Stdin)
	_ = bzip2.NewReader(os.Stdin)
	_ = lzw.NewReader(os.Stdin, lzw.LSB, 8)
	_ = tar.NewReader(os.Stdin)
	_ = multipart.NewReader(os.Stdin, "x")
	_, _ = cookiejar.New(nil)
	_ = httputil.DumpRequest
}
