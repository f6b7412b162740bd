package migrations

import (
	"io/fs"
	"strings"
	"testing"
)

func TestEveryUpHasADown(t *testing.T) {
	ups, _ := fs.Glob(FS, "*.up.sql")
	downs, _ := fs.Glob(FS, "*.down.sql")
	if len(ups) == 0 || len(ups) != len(downs) {
		t.Fatalf("%d up files, %d down files", len(ups), len(downs))
	}
	for _, up := range ups {
		down := strings.TrimSuffix(up, ".up.sql") + ".down.sql"
		if _, err := fs.Stat(FS, down); err != nil {
			t.Errorf("%s has no %s", up, down)
		}
	}
}
