package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"
)

// writeJSON encodes v with HTML escaping (so "<" becomes \u003c) and the
// headers every JSON response carries.
func writeJSON(w http.ResponseWriter, status int, v interface{}) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(true)
	if err := enc.Encode(v); err != nil {
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"error":"internal server error"}` + "\n")
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

type errorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, errorBody{Error: msg})
}

// requestError is a client mistake with the status to answer.
type requestError struct {
	status int
	msg    string
}

func (e *requestError) Error() string { return e.msg }

func badRequest(format string, args ...interface{}) error {
	return &requestError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

// decodeJSON reads exactly one JSON value into dst, rejecting unknown
// fields, wrong types, trailing data and oversized bodies.
func decodeJSON(r *http.Request, dst interface{}) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return classifyDecodeError(err)
	}
	var extra json.RawMessage
	if err := dec.Decode(&extra); err != io.EOF {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return classifyDecodeError(err)
		}
		return badRequest("request body must contain a single JSON object")
	}
	return nil
}

func classifyDecodeError(err error) error {
	var syntax *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return &requestError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("request body too large (limit %d bytes)", MaxBodyBytes)}
	case errors.Is(err, io.EOF):
		return badRequest("request body is empty")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("malformed JSON: unexpected end of input")
	case errors.As(err, &syntax):
		return badRequest("malformed JSON at byte %d", syntax.Offset)
	case errors.As(err, &typeErr):
		if typeErr.Field == "" {
			return badRequest("request body must be a JSON object")
		}
		return badRequest("field %q must be of type %s", typeErr.Field, jsonType(typeErr.Type.Kind().String()))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return badRequest("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return badRequest("invalid JSON body")
}

func jsonType(kind string) string {
	switch kind {
	case "string":
		return "string"
	case "bool":
		return "boolean"
	case "map", "struct":
		return "object"
	case "slice", "array":
		return "array"
	}
	return "number"
}

// respondError writes a requestError as such and anything else as a 500.
func (s *Server) respondError(w http.ResponseWriter, r *http.Request, err error) {
	var re *requestError
	if errors.As(err, &re) {
		writeError(w, re.status, re.msg)
		return
	}
	s.log.Error("request failed", map[string]interface{}{"path": r.URL.Path, "error": err.Error()})
	writeError(w, http.StatusInternalServerError, "internal server error")
}

// requiredString validates a required string field by length in characters.
func requiredString(name string, v *string, min, max int) (string, error) {
	if v == nil {
		return "", badRequest("%s is required", name)
	}
	n := utf8.RuneCountInString(*v)
	if min > 0 && strings.TrimSpace(*v) == "" {
		return "", badRequest("%s must not be empty", name)
	}
	if n < min || n > max {
		return "", badRequest("%s must be %d to %d characters", name, min, max)
	}
	return *v, nil
}

func optionalString(name string, v *string, max int) (string, error) {
	if v == nil {
		return "", nil
	}
	return requiredString(name, v, 0, max)
}

// page is the shape of every list response.
type page struct {
	Items  interface{} `json:"items"`
	Total  int64       `json:"total"`
	Limit  int         `json:"limit"`
	Offset int         `json:"offset"`
}

// pagination reads ?limit= (1..100, default 20) and ?offset= (>= 0).
func pagination(r *http.Request) (limit, offset int, err error) {
	q := r.URL.Query()
	limit, offset = 20, 0
	if v := q.Get("limit"); v != "" {
		n, convErr := strconv.Atoi(v)
		if convErr != nil || n < 1 || n > 100 {
			return 0, 0, badRequest("limit must be an integer from 1 to 100")
		}
		limit = n
	}
	if v := q.Get("offset"); v != "" {
		n, convErr := strconv.Atoi(v)
		if convErr != nil || n < 0 || n > 1<<31-1 {
			return 0, 0, badRequest("offset must be a non-negative integer")
		}
		offset = n
	}
	return limit, offset, nil
}

func pathID(p params) (int64, error) {
	id, err := strconv.ParseInt(p["id"], 10, 64)
	if err != nil || id < 1 {
		return 0, badRequest("id must be a positive integer")
	}
	return id, nil
}
