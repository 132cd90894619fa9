#!/usr/bin/env bash
# Lints the Helm chart and checks what it renders for each charts/chunksnap/ci/*.yaml
# (charts/tests/check_rendered.py), then tests the node installer (charts/tests/install_test.sh).
# Installs the pinned helm first when needed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
chart="$root/charts/chunksnap"
helm="${HELM:-$root/target/tools/helm}"
[[ -x "$helm" ]] || bash "$root/scripts/install-helm.sh" >/dev/null
python3 -c 'import yaml, tomllib' 2>/dev/null || {
    echo "chart-lint: needs python3 >= 3.11 with PyYAML (apt-get install python3-yaml)" >&2
    exit 1
}

"$helm" lint --strict "$chart"
shopt -s nullglob
cases=("$chart"/ci/*.yaml)
(( ${#cases[@]} > 0 )) || { echo "chart-lint: no values files in $chart/ci" >&2; exit 1; }
for values in "${cases[@]}"; do
    name="$(basename "$values" .yaml)"
    "$helm" lint --strict "$chart" -f "$values" >/dev/null
    "$helm" template chunksnap "$chart" --namespace kube-system -f "$values" \
        | python3 "$root/charts/tests/check_rendered.py" "$name"
done

# The node installer the chart ships, against a fake host.
bash "$root/charts/tests/install_test.sh"
