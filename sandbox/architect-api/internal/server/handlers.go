package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/architect-team/architect-go/internal/auth"
	"github.com/architect-team/architect-go/internal/logging"
	"github.com/architect-team/architect-go/internal/store"
)

type userBody struct {
	User store.User `json:"user"`
}

// --- auth ---

type loginRequest struct {
	Username *string `json:"username"`
	Password *string `json:"password"`
}

func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request, _ params) {
	ip := ClientIP(r)
	d, err := s.limiter.Allow(r.Context(), "login:"+ip)
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	if !d.Allowed {
		w.Header().Set("Retry-After", strconv.Itoa(d.RetryAfterSeconds()))
		s.log.Warn("login rate limited", logging.Fields{"client_ip": ip})
		writeError(w, http.StatusTooManyRequests, "too many login attempts, try again later")
		return
	}
	var req loginRequest
	if err := decodeJSON(r, &req); err != nil {
		s.respondError(w, r, err)
		return
	}
	username, err := requiredString("username", req.Username, 1, 100)
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	password, err := requiredString("password", req.Password, 1, 1024)
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	user, hash, err := s.store.UserByUsername(r.Context(), username)
	if errors.Is(err, store.ErrNotFound) {
		_, _ = auth.VerifyPassword(dummyHash, password)
		writeError(w, http.StatusUnauthorized, "invalid credentials")
		return
	}
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	if ok, _ := auth.VerifyPassword(hash, password); !ok {
		writeError(w, http.StatusUnauthorized, "invalid credentials")
		return
	}
	token, _, err := s.createSession(r.Context(), user)
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	http.SetCookie(w, s.sessionCookie(token, int(s.cfg.SessionTimeout.Seconds())))
	s.log.Info("login", logging.Fields{"user_id": user.ID, "client_ip": ip})
	writeJSON(w, http.StatusOK, userBody{User: user})
}

func (s *Server) handleLogout(w http.ResponseWriter, r *http.Request, _ params) {
	if c, err := r.Cookie(SessionCookie); err == nil && auth.ValidToken(c.Value) {
		if err := s.destroySession(r.Context(), auth.HashToken(c.Value)); err != nil {
			s.respondError(w, r, err)
			return
		}
	}
	http.SetCookie(w, s.sessionCookie("", -1))
	writeJSON(w, http.StatusOK, map[string]string{"status": "logged out"})
}

func (s *Server) handleMe(w http.ResponseWriter, _ *http.Request, _ params, sess store.Session) {
	writeJSON(w, http.StatusOK, userBody{User: store.User{ID: sess.UserID, Username: sess.Username}})
}

// --- events ---

type eventRequest struct {
	Type     *string         `json:"type"`
	Source   *string         `json:"source"`
	Severity *string         `json:"severity"`
	Payload  json.RawMessage `json:"payload"`
}

func validSeverity(v string) bool {
	for _, s := range store.Severities {
		if v == s {
			return true
		}
	}
	return false
}

func (s *Server) handleCreateEvent(w http.ResponseWriter, r *http.Request, _ params, _ store.Session) {
	var req eventRequest
	if err := decodeJSON(r, &req); err != nil {
		s.respondError(w, r, err)
		return
	}
	var e store.Event
	var err error
	if e.Type, err = requiredString("type", req.Type, 1, 100); err != nil {
		s.respondError(w, r, err)
		return
	}
	if e.Source, err = requiredString("source", req.Source, 1, 100); err != nil {
		s.respondError(w, r, err)
		return
	}
	e.Severity = store.DefaultSeverity
	if req.Severity != nil {
		if !validSeverity(*req.Severity) {
			s.respondError(w, r, badRequest("severity must be one of %s", strings.Join(store.Severities, ", ")))
			return
		}
		e.Severity = *req.Severity
	}
	payload := bytes.TrimSpace(req.Payload)
	switch {
	case len(payload) == 0 || bytes.Equal(payload, []byte("null")):
		e.Payload = json.RawMessage("{}")
	case payload[0] == '{':
		e.Payload = json.RawMessage(payload)
	default:
		s.respondError(w, r, badRequest("payload must be a JSON object"))
		return
	}
	created, err := s.store.CreateEvent(r.Context(), e)
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, created)
}

func (s *Server) handleListEvents(w http.ResponseWriter, r *http.Request, _ params, _ store.Session) {
	limit, offset, err := pagination(r)
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	f := store.EventFilter{Limit: limit, Offset: offset}
	if sev := r.URL.Query().Get("severity"); sev != "" {
		if !validSeverity(sev) {
			s.respondError(w, r, badRequest("severity must be one of %s", strings.Join(store.Severities, ", ")))
			return
		}
		f.Severity = sev
	}
	items, total, err := s.store.ListEvents(r.Context(), f)
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page{Items: items, Total: total, Limit: limit, Offset: offset})
}

func (s *Server) handleGetEvent(w http.ResponseWriter, r *http.Request, p params, _ store.Session) {
	id, err := pathID(p)
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	e, err := s.store.GetEvent(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, "event not found")
		return
	}
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, e)
}

func (s *Server) handleDeleteEvent(w http.ResponseWriter, r *http.Request, p params, _ store.Session) {
	id, err := pathID(p)
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	err = s.store.DeleteEvent(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, "event not found")
		return
	}
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// --- errors ---

type errorRequest struct {
	Kind    *string `json:"kind"`
	Message *string `json:"message"`
	Stack   *string `json:"stack"`
}

func (s *Server) handleCreateError(w http.ResponseWriter, r *http.Request, _ params) {
	var req errorRequest
	if err := decodeJSON(r, &req); err != nil {
		s.respondError(w, r, err)
		return
	}
	var e store.ErrorReport
	var err error
	if e.Kind, err = requiredString("kind", req.Kind, 1, 100); err != nil {
		s.respondError(w, r, err)
		return
	}
	if e.Message, err = requiredString("message", req.Message, 1, 10000); err != nil {
		s.respondError(w, r, err)
		return
	}
	if e.Stack, err = optionalString("stack", req.Stack, 50000); err != nil {
		s.respondError(w, r, err)
		return
	}
	created, err := s.store.CreateError(r.Context(), e)
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, created)
}

func (s *Server) handleListErrors(w http.ResponseWriter, r *http.Request, _ params, _ store.Session) {
	limit, offset, err := pagination(r)
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	var resolved *bool
	if v := r.URL.Query().Get("resolved"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			s.respondError(w, r, badRequest("resolved must be true or false"))
			return
		}
		resolved = &b
	}
	items, total, err := s.store.ListErrors(r.Context(), limit, offset, resolved)
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page{Items: items, Total: total, Limit: limit, Offset: offset})
}

func (s *Server) handleResolveError(w http.ResponseWriter, r *http.Request, p params, _ store.Session) {
	id, err := pathID(p)
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	e, err := s.store.ResolveError(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, "error not found")
		return
	}
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, e)
}

func (s *Server) handleAggregateErrors(w http.ResponseWriter, r *http.Request, _ params, _ store.Session) {
	groups, err := s.store.AggregateErrors(r.Context())
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]interface{}{"groups": groups})
}

// --- notifications ---

type notificationRequest struct {
	Title *string `json:"title"`
	Body  *string `json:"body"`
}

func (s *Server) handleCreateNotification(w http.ResponseWriter, r *http.Request, _ params, sess store.Session) {
	var req notificationRequest
	if err := decodeJSON(r, &req); err != nil {
		s.respondError(w, r, err)
		return
	}
	title, err := requiredString("title", req.Title, 1, 200)
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	body, err := optionalString("body", req.Body, 5000)
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	n, err := s.store.CreateNotification(r.Context(), sess.UserID, title, body)
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, n)
}

func (s *Server) handleListNotifications(w http.ResponseWriter, r *http.Request, _ params, sess store.Session) {
	limit, offset, err := pagination(r)
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	items, total, err := s.store.ListNotifications(r.Context(), sess.UserID, limit, offset)
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page{Items: items, Total: total, Limit: limit, Offset: offset})
}

func (s *Server) handleReadNotification(w http.ResponseWriter, r *http.Request, p params, sess store.Session) {
	id, err := pathID(p)
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	n, err := s.store.MarkNotificationRead(r.Context(), sess.UserID, id)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, "notification not found")
		return
	}
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, n)
}

func (s *Server) handleDeleteNotification(w http.ResponseWriter, r *http.Request, p params, sess store.Session) {
	id, err := pathID(p)
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	err = s.store.DeleteNotification(r.Context(), sess.UserID, id)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, "notification not found")
		return
	}
	if err != nil {
		s.respondError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
