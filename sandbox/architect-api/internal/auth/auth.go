// Package auth hashes passwords (PBKDF2-HMAC-SHA256, written here from RFC
// 8018) and makes session tokens.
package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// DefaultIterations is the PBKDF2 work factor for new hashes.
const DefaultIterations = 20000

const scheme = "pbkdf2-sha256"

// PBKDF2 derives keyLen bytes from password and salt (RFC 8018 section 5.2)
// with HMAC-SHA256 as the pseudo-random function.
func PBKDF2(password, salt []byte, iterations, keyLen int) []byte {
	prf := hmac.New(sha256.New, password)
	hLen := prf.Size()
	blocks := (keyLen + hLen - 1) / hLen
	out := make([]byte, 0, blocks*hLen)
	var idx [4]byte
	u := make([]byte, hLen)
	t := make([]byte, hLen)
	for block := 1; block <= blocks; block++ {
		binary.BigEndian.PutUint32(idx[:], uint32(block))
		prf.Reset()
		prf.Write(salt)
		prf.Write(idx[:])
		u = prf.Sum(u[:0])
		copy(t, u)
		for i := 1; i < iterations; i++ {
			prf.Reset()
			prf.Write(u)
			u = prf.Sum(u[:0])
			for j := range t {
				t[j] ^= u[j]
			}
		}
		out = append(out, t...)
	}
	return out[:keyLen]
}

// HashPassword returns "pbkdf2-sha256$<iterations>$<salt hex>$<key hex>" with
// a random 16-byte salt.
func HashPassword(password string, iterations int) (string, error) {
	if iterations < 1 {
		iterations = DefaultIterations
	}
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	key := PBKDF2([]byte(password), salt, iterations, 32)
	return fmt.Sprintf("%s$%d$%s$%s", scheme, iterations, hex.EncodeToString(salt), hex.EncodeToString(key)), nil
}

// ErrBadHash means a stored hash could not be parsed.
var ErrBadHash = errors.New("auth: malformed password hash")

// VerifyPassword reports whether password matches the stored hash, in
// constant time with respect to the key.
func VerifyPassword(stored, password string) (bool, error) {
	parts := strings.Split(stored, "$")
	if len(parts) != 4 || parts[0] != scheme {
		return false, ErrBadHash
	}
	iterations, err := strconv.Atoi(parts[1])
	if err != nil || iterations < 1 || iterations > 10000000 {
		return false, ErrBadHash
	}
	salt, err1 := hex.DecodeString(parts[2])
	want, err2 := hex.DecodeString(parts[3])
	if err1 != nil || err2 != nil || len(want) == 0 {
		return false, ErrBadHash
	}
	got := PBKDF2([]byte(password), salt, iterations, len(want))
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// NewToken returns a random 32-byte token, hex encoded (64 characters).
func NewToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// HashToken is what is stored for a session token: hex SHA-256. A database
// or cache dump therefore holds no usable cookie.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// ValidToken reports whether s looks like a token from NewToken.
func ValidToken(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}
