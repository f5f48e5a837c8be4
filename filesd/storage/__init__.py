"""The storage backends: metadata (SQLite, PostgreSQL) and blobs (a directory, S3), behind the
narrow Protocols of `base.py`; the decisions they share are made once in `rules.py` and
`metadata.py`."""
