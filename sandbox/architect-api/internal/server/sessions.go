package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/architect-team/architect-go/internal/auth"
	"github.com/architect-team/architect-go/internal/logging"
	"github.com/architect-team/architect-go/internal/redis"
	"github.com/architect-team/architect-go/internal/store"
)

// SessionCookie is the name of the session cookie.
const SessionCookie = "session"

type authedFunc func(w http.ResponseWriter, r *http.Request, p params, sess store.Session)

// authed wraps a handler that needs a valid session; 401 otherwise.
func (s *Server) authed(h authedFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, p params) {
		c, err := r.Cookie(SessionCookie)
		if err != nil || !auth.ValidToken(c.Value) {
			writeError(w, http.StatusUnauthorized, "authentication required")
			return
		}
		sess, err := s.lookupSession(r.Context(), auth.HashToken(c.Value))
		if errors.Is(err, store.ErrNotFound) {
			writeError(w, http.StatusUnauthorized, "authentication required")
			return
		}
		if err != nil {
			s.respondError(w, r, err)
			return
		}
		h(w, r, p, sess)
	}
}

func cacheKey(tokenHash string) string { return "session:" + tokenHash }

// lookupSession reads the cache first, then the database (filling the cache).
func (s *Server) lookupSession(ctx context.Context, tokenHash string) (store.Session, error) {
	if s.cache != nil {
		raw, err := s.cache.Get(ctx, cacheKey(tokenHash))
		if err == nil {
			var sess store.Session
			if json.Unmarshal([]byte(raw), &sess) == nil && sess.ExpiresAt.After(time.Now()) && sess.TokenHash == tokenHash {
				s.cacheHits.Add(1)
				return sess, nil
			}
		} else if !errors.Is(err, redis.ErrNil) {
			s.log.Warn("session cache read failed", logging.Fields{"error": err})
		}
		s.cacheMisses.Add(1)
	}
	sess, err := s.store.SessionByHash(ctx, tokenHash)
	if err != nil {
		return sess, err
	}
	s.cacheSession(ctx, sess)
	return sess, nil
}

func (s *Server) cacheSession(ctx context.Context, sess store.Session) {
	if s.cache == nil {
		return
	}
	ttl := s.cfg.CacheTTL
	if left := time.Until(sess.ExpiresAt); left < ttl {
		ttl = left
	}
	if ttl < time.Second {
		return
	}
	b, _ := json.Marshal(sess)
	if err := s.cache.Set(ctx, cacheKey(sess.TokenHash), string(b), ttl); err != nil {
		s.log.Warn("session cache write failed", logging.Fields{"error": err})
	}
}

// createSession stores a new session and returns its token.
func (s *Server) createSession(ctx context.Context, user store.User) (string, store.Session, error) {
	token, err := auth.NewToken()
	if err != nil {
		return "", store.Session{}, err
	}
	sess := store.Session{
		TokenHash: auth.HashToken(token),
		UserID:    user.ID,
		Username:  user.Username,
		ExpiresAt: time.Now().Add(s.cfg.SessionTimeout).UTC().Truncate(time.Microsecond),
	}
	if err := s.store.CreateSession(ctx, sess); err != nil {
		return "", store.Session{}, err
	}
	s.cacheSession(ctx, sess)
	return token, sess, nil
}

// destroySession removes a session from the database and the cache.
func (s *Server) destroySession(ctx context.Context, tokenHash string) error {
	if err := s.store.DeleteSession(ctx, tokenHash); err != nil {
		return err
	}
	if s.cache != nil {
		if _, err := s.cache.Del(ctx, cacheKey(tokenHash)); err != nil {
			// The database row is gone; a stale cache entry would outlive it
			// for up to CACHE_TTL, so this is an error, not a warning.
			return err
		}
	}
	return nil
}

func (s *Server) sessionCookie(token string, maxAge int) *http.Cookie {
	return &http.Cookie{
		Name:     SessionCookie,
		Value:    token,
		Path:     "/",
		MaxAge:   maxAge,
		HttpOnly: s.cfg.SessionCookieHTTPOnly,
		Secure:   s.cfg.SessionCookieSecure,
		SameSite: http.SameSiteStrictMode,
	}
}

// dummyHash keeps login timing similar for unknown users.
var dummyHash, _ = auth.HashPassword("not-a-real-password", auth.DefaultIterations)

// SeedUser makes sure username exists with password (the smoke-test user).
// An existing user whose hash already matches is left alone.
func SeedUser(ctx context.Context, st store.Store, username, password string) (store.User, bool, error) {
	u, hash, err := st.UserByUsername(ctx, username)
	if err == nil {
		if ok, _ := auth.VerifyPassword(hash, password); ok {
			return u, false, nil
		}
	} else if !errors.Is(err, store.ErrNotFound) {
		return store.User{}, false, err
	}
	newHash, err := auth.HashPassword(password, auth.DefaultIterations)
	if err != nil {
		return store.User{}, false, err
	}
	u, err = st.UpsertUser(ctx, username, newHash)
	return u, err == nil, err
}
