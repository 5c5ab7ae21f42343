#!/usr/bin/env bash
# The go-live runbook: `deploy/go-live.sh <preflight|smoke|webhook|canary|rollback|full> [--dry-run] ...`
# (`billing go-live --help` lists the options; deploy/helm/README.md walks through a go-live).
set -euo pipefail
exec "$(dirname "$0")/../scripts/run" billing go-live "$@"
