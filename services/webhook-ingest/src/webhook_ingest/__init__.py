"""webhook_ingest."""
