"""Platform pieces every service shares: settings, logging, auth, metrics, tracing, DB, app."""
