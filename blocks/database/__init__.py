"""The staging database's blocks and adaptors, one module each.

- ``postgres``: the ``PostgresDatabase`` block (settings, connections, pg tool environment);
- ``backup_storage``: ``BackupStorage``, the filesystem block the backups are streamed to;
- ``pg_binaries``: which pg_dump/pg_restore/psql can talk to a server;
- ``errors``: PostgreSQL's failures (psycopg, pg tools) as the pipeline's errors.

The block and the storage are importable from here, as they were from ``blocks.database``.
"""

from blocks.database.backup_storage import BackupStorage, StoredFile
from blocks.database.postgres import PostgresDatabase

__all__ = ["BackupStorage", "PostgresDatabase", "StoredFile"]
