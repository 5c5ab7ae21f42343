"""Event contracts (generated from ``proto/``) and the Kafka publish/consume layer."""
