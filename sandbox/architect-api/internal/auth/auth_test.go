package auth

import (
	"encoding/hex"
	"strings"
	"testing"
)

// Test vectors for PBKDF2-HMAC-SHA256 (as published alongside RFC 7914 and
// widely reproduced).
func TestPBKDF2Vectors(t *testing.T) {
	cases := []struct {
		pw, salt string
		iter, n  int
		want     string
	}{
		{"password", "salt", 1, 32, "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b"},
		{"password", "salt", 2, 32, "ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43"},
		{"password", "salt", 4096, 32, "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a"},
		{"passwordPASSWORDpassword", "saltSALTsaltSALTsaltSALTsaltSALTsalt", 4096, 40, "348c89dbcbd32b2f32d814b8116e84cf2b17347ebc1800181c4e2a1fb8dd53e1c635518c7dac47e9"},
		{"passwd", "salt", 1, 64, "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"},
	}
	for _, c := range cases {
		got := hex.EncodeToString(PBKDF2([]byte(c.pw), []byte(c.salt), c.iter, c.n))
		if got != c.want {
			t.Errorf("PBKDF2(%q,%q,%d) = %s, want %s", c.pw, c.salt, c.iter, got, c.want)
		}
	}
}

func TestHashAndVerify(t *testing.T) {
	h, err := HashPassword("s3cret", 100)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "pbkdf2-sha256$100$") || strings.Contains(h, "s3cret") {
		t.Fatalf("bad hash %s", h)
	}
	h2, _ := HashPassword("s3cret", 100)
	if h == h2 {
		t.Fatal("salt must be random")
	}
	if ok, err := VerifyPassword(h, "s3cret"); !ok || err != nil {
		t.Fatalf("verify: %v %v", ok, err)
	}
	if ok, _ := VerifyPassword(h, "wrong"); ok {
		t.Fatal("wrong password accepted")
	}
	if d, _ := HashPassword("x", 0); !strings.HasPrefix(d, "pbkdf2-sha256$20000$") {
		t.Fatalf("default iterations: %s", d)
	}
	for _, bad := range []string{"", "md5$1$aa$bb", "pbkdf2-sha256$x$aa$bb", "pbkdf2-sha256$1$zz$bb", "pbkdf2-sha256$1$aa$", "pbkdf2-sha256$0$aa$bb"} {
		if _, err := VerifyPassword(bad, "x"); err != ErrBadHash {
			t.Errorf("%q: want ErrBadHash, got %v", bad, err)
		}
	}
}

func TestTokens(t *testing.T) {
	a, err := NewToken()
	if err != nil || len(a) != 64 || !ValidToken(a) {
		t.Fatalf("token %q %v", a, err)
	}
	b, _ := NewToken()
	if a == b {
		t.Fatal("tokens must differ")
	}
	if HashToken(a) == a || len(HashToken(a)) != 64 || HashToken(a) != HashToken(a) {
		t.Fatal("hash")
	}
	if ValidToken("abc") || ValidToken(strings.Repeat("z", 64)) {
		t.Fatal("invalid tokens accepted")
	}
}
