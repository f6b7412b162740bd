package server

import (
	"errors"
	"net/http"

	"github.com/architect-team/architect-go/internal/store"
)

// The events, errors and notifications resources share four request shapes:
// create from a JSON body, list a page, act on one row named by {id}, delete
// one row by {id}. The helpers below hold the HTTP side of each shape
// (decoding, pagination, path ids, status codes) once; handlers.go holds only
// what differs: validation and the store call.

type (
	createFunc[Req, T any] func(r *http.Request, req *Req, sess store.Session) (T, error)
	listFunc[T any]        func(r *http.Request, limit, offset int, sess store.Session) ([]T, int64, error)
	rowFunc[T any]         func(r *http.Request, id int64, sess store.Session) (T, error)
)

// creates decodes the body into a Req and answers 201 with the created row.
func creates[Req, T any](s *Server, create createFunc[Req, T]) authedFunc {
	return func(w http.ResponseWriter, r *http.Request, _ params, sess store.Session) {
		var req Req
		if err := decodeJSON(r, &req); err != nil {
			s.respondError(w, r, err)
			return
		}
		v, err := create(r, &req, sess)
		s.reply(w, r, http.StatusCreated, v, err)
	}
}

// lists reads ?limit=&offset= and answers 200 with a page. Any query
// parameter besides those and filters is refused with 400: a filter the
// release does not know must not silently widen the page to every row.
func lists[T any](s *Server, list listFunc[T], filters ...string) authedFunc {
	known := map[string]bool{"limit": true, "offset": true}
	for _, f := range filters {
		known[f] = true
	}
	return func(w http.ResponseWriter, r *http.Request, _ params, sess store.Session) {
		for name := range r.URL.Query() {
			if !known[name] {
				s.respondError(w, r, badRequest("unknown query parameter %q", name))
				return
			}
		}
		limit, offset, err := pagination(r)
		if err != nil {
			s.respondError(w, r, err)
			return
		}
		items, total, err := list(r, limit, offset, sess)
		s.reply(w, r, http.StatusOK, page{Items: items, Total: total, Limit: limit, Offset: offset}, err)
	}
}

// onRow parses {id}, runs act and answers 200 with its row;
// store.ErrNotFound becomes 404 "<what> not found".
func onRow[T any](s *Server, what string, act rowFunc[T]) authedFunc {
	return rowHandler(s, what, http.StatusOK, act)
}

// deletesRow is onRow for a delete: 204 without a body.
func deletesRow(s *Server, what string, del func(r *http.Request, id int64, sess store.Session) error) authedFunc {
	return rowHandler(s, what, http.StatusNoContent, func(r *http.Request, id int64, sess store.Session) (struct{}, error) {
		return struct{}{}, del(r, id, sess)
	})
}

func rowHandler[T any](s *Server, what string, status int, act rowFunc[T]) authedFunc {
	return func(w http.ResponseWriter, r *http.Request, p params, sess store.Session) {
		id, err := pathID(p)
		if err != nil {
			s.respondError(w, r, err)
			return
		}
		v, err := act(r, id, sess)
		if errors.Is(err, store.ErrNotFound) {
			writeError(w, http.StatusNotFound, what+" not found")
			return
		}
		s.reply(w, r, status, v, err)
	}
}

// reply answers status with v as JSON (204: no body), or err through respondError.
func (s *Server) reply(w http.ResponseWriter, r *http.Request, status int, v interface{}, err error) {
	switch {
	case err != nil:
		s.respondError(w, r, err)
	case status == http.StatusNoContent:
		w.WriteHeader(status)
	default:
		writeJSON(w, status, v)
	}
}

// public serves an authedFunc that does not use the session on a route
// without authentication.
func public(h authedFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, p params) { h(w, r, p, store.Session{}) }
}
