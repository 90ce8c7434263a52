#!/usr/bin/env bash
# Launch a beam-filter command on Google Cloud Dataflow: `beam-filter COMMAND --dataflow ARGS...`.
#
#   ./run_dataflow.sh [run|score|select|reshard] --recipe R --input 'gs://...' --output gs://... \
#       --project P --region R --bucket gs://B [--gpu-type nvidia-l4] [--dry-run --job-file job.json]
#
# Every option is beam-filter's own (`beam-filter run --help`, docs/dataflow.md): this wrapper parses
# nothing. For the older form it also accepts `--command run|score` and drops a `--` separator.
# Environment: PYTHON (interpreter with beam_filter installed; default ./.venv/bin/python or python3).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$HERE/.venv/bin/python" ]]; then PYTHON="$HERE/.venv/bin/python"; else PYTHON=python3; fi
fi

command=run
case "${1:-}" in
  run|score|select|reshard) command="$1"; shift ;;
esac
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --command) command="${2:-}"; shift $(( $# >= 2 ? 2 : 1 )) ;;
    --) shift ;;
    *) args+=("$1"); shift ;;
  esac
done
exec "$PYTHON" -m beam_filter.cli "$command" --dataflow "${args[@]}"
