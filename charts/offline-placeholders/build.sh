#!/usr/bin/env bash
# Package the placeholder charts into charts/postfleet/charts/ (see README.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
HELM=${HELM:-helm}
for dep in nats postgresql; do
  "$HELM" package "$here/$dep" --destination "$here/../postfleet/charts"
done
