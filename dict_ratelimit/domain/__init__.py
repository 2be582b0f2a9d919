"""Pure domain logic: no Dagster, SQL or gRPC imports live here (a test enforces it)."""
