#!/usr/bin/env bash
# Regenerates the measurements table in docs/TARGETS.md: runs
# scripts/test-targets.sh (which writes target/targets/table.md; pass
# --no-run to reuse the last one) and puts the table between the
# `targets-table` markers of docs/TARGETS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" != "--no-run" ]; then
    scripts/test-targets.sh
fi
TABLE=target/targets/table.md
[ -f "$TABLE" ] || { echo "no $TABLE: run scripts/test-targets.sh first"; exit 1; }
python3 - "$TABLE" docs/TARGETS.md <<'EOF'
import sys
table, doc = sys.argv[1], sys.argv[2]
begin, end = "<!-- targets-table:begin -->", "<!-- targets-table:end -->"
text = open(doc).read()
i, j = text.index(begin) + len(begin), text.index(end)
text = text[:i] + "\n" + open(table).read().strip() + "\n" + text[j:]
open(doc, "w").write(text)
EOF
echo "updated docs/TARGETS.md"
