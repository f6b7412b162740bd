// Package migrations embeds the SQL schema migrations.
//
// Files are named NNN_name.up.sql and NNN_name.down.sql; every migration has
// both. They are applied in version order, each in its own transaction.
package migrations

import "embed"

// FS holds every *.sql file of this directory.
//
//go:embed *.sql
var FS embed.FS
