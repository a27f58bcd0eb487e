"""`make demo`: a generated LSVQ-like corpus served from loopback and ingested through Dagster."""
