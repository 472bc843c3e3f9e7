"""The PostgreSQL engine of the storage seam: for teams whose replicas share one database.

`storage.PostgresStorage` is the `Storage`; `database` owns the asyncpg pool and turns driver errors into the
seam's; `schema` applies the numbered SQL files under `migrations/`. The schema lives in the first schema of
the connections' search_path, which a URL may set (`?search_path=name,public`).
"""
