// Differential reader: Go's net/http and encoding/json, standard library only. It echoes what a plain Go handler
// reads: r.Method, r.URL.Path, r.URL.Query(), r.ParseMultipartForm / r.PostForm (errors ignored, as r.FormValue
// ignores them), r.MultipartForm.File, and the body decoded with json.NewDecoder(r.Body).Decode into typed
// structs (encoding/json matches field names case-insensitively). Go has no method override.
//
//	go build -o build/reader reader.go && build/reader PORT
package main

import (
	"encoding/json"
	"io"
	"log"
	"mime"
	"net/http"
	"os"
	"sort"
)

// The model the typed binders share. Plain value fields, as Go code usually declares them: an absent or null
// field reads as its zero value ("" or an empty struct), and a JSON null leaves a value already bound in place.
type Platform struct {
	ApplicationID string `json:"applicationId"`
	EntityID      string `json:"entityId"`
}

type Options struct {
	Platform Platform `json:"platform"`
}

type Message struct {
	ApplicationID string  `json:"applicationId"`
	EntityID      string  `json:"entityId"`
	Options       Options `json:"options"`
}

type Event struct {
	Options Options `json:"options"`
}

type FilterBy struct {
	ApplicationID string     `json:"applicationId"`
	EntityID      string     `json:"entityId"`
	Platforms     []Platform `json:"platforms"`
}

type Req struct {
	FilterBy FilterBy `json:"filterBy"`
}

type Doc struct {
	ApplicationID string    `json:"applicationId"`
	EntityID      string    `json:"entityId"`
	Platform      Platform  `json:"platform"`
	Options       Options   `json:"options"`
	Messages      []Message `json:"messages"`
	Events        []Event   `json:"events"`
	Request       Req       `json:"request"`
}

type echo struct {
	Reader   string              `json:"reader"`
	Method   string              `json:"method"`
	Path     string              `json:"path"`
	Query    map[string]string   `json:"query"`
	QueryAll map[string][]string `json:"query_all"`
	Form     map[string]string   `json:"form"`
	Files    []string            `json:"files"`
	JSON     *Doc                `json:"json"`
	Error    string              `json:"error,omitempty"`
}

const maxMemory = 32 << 20 // net/http's defaultMaxMemory, what r.FormValue uses

func first(values map[string][]string) map[string]string {
	out := make(map[string]string, len(values))
	for name, list := range values {
		if len(list) > 0 {
			out[name] = list[0]
		} else {
			out[name] = ""
		}
	}
	return out
}

func handle(w http.ResponseWriter, r *http.Request) {
	query := r.URL.Query()
	out := echo{
		Reader:   "go",
		Method:   r.Method,
		Path:     r.URL.Path,
		Query:    first(query),
		QueryAll: map[string][]string(query),
		Files:    []string{},
	}

	mediaType, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	isForm := mediaType == "application/x-www-form-urlencoded" || mediaType == "multipart/form-data"
	if isForm {
		// What r.FormValue / r.PostFormValue do: parse once, keep whatever was parsed, ignore the error.
		_ = r.ParseMultipartForm(maxMemory)
		out.Form = first(r.PostForm)
		if out.Form == nil {
			out.Form = map[string]string{}
		}
		if r.MultipartForm != nil {
			for name := range r.MultipartForm.File {
				out.Files = append(out.Files, name)
			}
			sort.Strings(out.Files)
		}
	} else if r.Body != nil {
		// The usual handler idiom: decode whatever body came, whatever its Content-Type says; the first JSON value
		// is bound and anything after it is never read.
		var doc Doc
		err := json.NewDecoder(r.Body).Decode(&doc)
		switch {
		case err == nil:
			out.JSON = &doc
		case err == io.EOF:
			// no body, or only white space
		default:
			out.JSON = &doc
			out.Error = "json: " + err.Error()
		}
	}

	status := http.StatusOK
	if out.Error != "" {
		status = http.StatusBadRequest
	}
	body, err := json.Marshal(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func main() {
	if len(os.Args) != 2 {
		log.Fatal("usage: reader PORT")
	}
	server := &http.Server{Addr: "127.0.0.1:" + os.Args[1], Handler: http.HandlerFunc(handle)}
	log.Fatal(server.ListenAndServe())
}
