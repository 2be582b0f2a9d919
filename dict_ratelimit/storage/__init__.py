"""PostgreSQL: engine, embedded server, migrations, partitions and repositories."""
