"""Generated protobuf modules for the ``billing_events.v1`` Kafka contracts.

The ``*_pb2.py`` / ``*_pb2.pyi`` files here are generated from ``proto/`` by
``scripts/proto-gen``; do not edit them by hand (``scripts/proto-check`` fails
in CI if they drift).
"""
