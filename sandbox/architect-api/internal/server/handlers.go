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

// checkSeverity accepts one of store.Severities.
func checkSeverity(v string) error {
	for _, s := range store.Severities {
		if v == s {
			return nil
		}
	}
	return badRequest("severity must be one of %s", strings.Join(store.Severities, ", "))
}

// eventFilters are the query parameters GET /api/v1/events takes besides limit and offset.
var eventFilters = []string{"severity"}

func (s *Server) createEvent(r *http.Request, req *eventRequest, _ store.Session) (store.Event, error) {
	var e store.Event
	var err error
	if e.Type, err = requiredString("type", req.Type, 1, 100); err != nil {
		return e, err
	}
	if e.Source, err = requiredString("source", req.Source, 1, 100); err != nil {
		return e, err
	}
	e.Severity = store.DefaultSeverity
	if req.Severity != nil {
		if err := checkSeverity(*req.Severity); err != nil {
			return e, err
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
		return e, badRequest("payload must be a JSON object")
	}
	return s.store.CreateEvent(r.Context(), e)
}

func (s *Server) listEvents(r *http.Request, limit, offset int, _ store.Session) ([]store.Event, int64, error) {
	f := store.EventFilter{Limit: limit, Offset: offset}
	if sev := r.URL.Query().Get("severity"); sev != "" {
		if err := checkSeverity(sev); err != nil {
			return nil, 0, err
		}
		f.Severity = sev
	}
	return s.store.ListEvents(r.Context(), f)
}

func (s *Server) getEvent(r *http.Request, id int64, _ store.Session) (store.Event, error) {
	return s.store.GetEvent(r.Context(), id)
}

func (s *Server) deleteEvent(r *http.Request, id int64, _ store.Session) error {
	return s.store.DeleteEvent(r.Context(), id)
}

// --- errors ---

type errorRequest struct {
	Kind    *string `json:"kind"`
	Message *string `json:"message"`
	Stack   *string `json:"stack"`
}

func (s *Server) createError(r *http.Request, req *errorRequest, _ store.Session) (store.ErrorReport, error) {
	var e store.ErrorReport
	var err error
	if e.Kind, err = requiredString("kind", req.Kind, 1, 100); err != nil {
		return e, err
	}
	if e.Message, err = requiredString("message", req.Message, 1, 10000); err != nil {
		return e, err
	}
	if e.Stack, err = optionalString("stack", req.Stack, 50000); err != nil {
		return e, err
	}
	return s.store.CreateError(r.Context(), e)
}

func (s *Server) listErrors(r *http.Request, limit, offset int, _ store.Session) ([]store.ErrorReport, int64, error) {
	var resolved *bool
	if v := r.URL.Query().Get("resolved"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, 0, badRequest("resolved must be true or false")
		}
		resolved = &b
	}
	return s.store.ListErrors(r.Context(), limit, offset, resolved)
}

func (s *Server) resolveError(r *http.Request, id int64, _ store.Session) (store.ErrorReport, error) {
	return s.store.ResolveError(r.Context(), id)
}

func (s *Server) handleAggregateErrors(w http.ResponseWriter, r *http.Request, _ params, _ store.Session) {
	groups, err := s.store.AggregateErrors(r.Context())
	s.reply(w, r, http.StatusOK, map[string]interface{}{"groups": groups}, err)
}

// --- notifications ---

type notificationRequest struct {
	Title *string `json:"title"`
	Body  *string `json:"body"`
}

func (s *Server) createNotification(r *http.Request, req *notificationRequest, sess store.Session) (store.Notification, error) {
	title, err := requiredString("title", req.Title, 1, 200)
	if err != nil {
		return store.Notification{}, err
	}
	body, err := optionalString("body", req.Body, 5000)
	if err != nil {
		return store.Notification{}, err
	}
	return s.store.CreateNotification(r.Context(), sess.UserID, title, body)
}

func (s *Server) listNotifications(r *http.Request, limit, offset int, sess store.Session) ([]store.Notification, int64, error) {
	return s.store.ListNotifications(r.Context(), sess.UserID, limit, offset)
}

func (s *Server) readNotification(r *http.Request, id int64, sess store.Session) (store.Notification, error) {
	return s.store.MarkNotificationRead(r.Context(), sess.UserID, id)
}

func (s *Server) deleteNotification(r *http.Request, id int64, sess store.Session) error {
	return s.store.DeleteNotification(r.Context(), sess.UserID, id)
}
