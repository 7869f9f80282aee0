#!/bin/bash
# The README's "Your own data" walk-throughs, each step through the CLI alone, from the repository
# root with kgrec's venv active: every command's output goes to runs/walk/STEP.txt (stderr to
# STEP.err), ending with its exit status and wall time. MovieLens-100k is read from
# ../shared/data/ml-100k-kg (RecBole's atomic files; never committed), the shop from the demo tables.
set -u
ML=${ML:-../shared/data/ml-100k-kg}
W=${W:-runs/walk}
mkdir -p "$W"
step() { local name=$1; shift; echo "\$ $*" > "$W/$name.txt"; local s; s=$(date +%s); "$@" >> "$W/$name.txt" 2> "$W/$name.err"; echo "exit $? after $(( $(date +%s) - s )) s" >> "$W/$name.txt"; }

# 0. the demo store (made by `kgrec demo`) with the text prior off, for the README's ablation
step demo-prior0 kgrec evaluate --store runs/demo/store --out "$W/demo-prior0" --models text-zero-shot,graph-only,fused --text-prior 0 --cache runs/demo/text-cache --no-progress

# 1. RecBole atomic files with a knowledge graph (.kg + .link), and the same without those two files
step ml-ingest kgrec ingest "$ML" --store "$W/ml100k/store" --no-progress
mkdir -p "$W/ml100k-nokg-files" && cp "$ML"/ml-100k.inter "$ML"/ml-100k.item "$ML"/ml-100k.user "$W/ml100k-nokg-files/"
step ml-nokg-ingest kgrec ingest "$W/ml100k-nokg-files" --store "$W/ml100k-nokg/store" --no-progress
step ml-nokg-evaluate kgrec evaluate --store "$W/ml100k-nokg/store" --out "$W/ml100k-nokg/report" --models popularity,lightgcn,text-zero-shot,graph-only,fused --no-progress
step ml-evaluate kgrec evaluate --store "$W/ml100k/store" --out "$W/ml100k/report" --models popularity,lightgcn,text-zero-shot,graph-only,fused --no-progress
step ml-train kgrec train --store "$W/ml100k/store" --out "$W/ml100k/artifact" --no-progress
step ml-recommend kgrec recommend 1 -a "$W/ml100k/artifact" -k 5
step ml-explain kgrec explain 1 50 -a "$W/ml100k/artifact"

# 2. a shop's CSV exports with its own column names, and a search log with judgements
step shop-export python docs/examples/shop_export.py "$W/shop-files"
step shop-ingest kgrec ingest "$W/shop-files" --config docs/examples/shop.toml --store "$W/shop/store" --no-progress
step shop-evaluate kgrec evaluate --store "$W/shop/store" --out "$W/shop/report" --models popularity,bm25,text-zero-shot,graph-only,fused --no-progress
step shop-train kgrec train --store "$W/shop/store" --out "$W/shop/artifact" --no-progress
step shop-search kgrec search "oscilloscope probes" -a "$W/shop/artifact" -k 5
customer=$(sed -n 2p "$W/shop-files/orders.csv" | cut -d, -f1)
step shop-recommend kgrec recommend "$customer" -a "$W/shop/artifact" -k 5

# 3. the demo catalogue with its categories and brands as RecBole KG triples instead of product fields
#    (benchmarks/model_quality.py's converter), for the README's fields-vs-triples comparison
W2=${W2:-runs/walk2}
mkdir -p "$W2"
python -c "import sys; from pathlib import Path; sys.path.insert(0, 'benchmarks'); import model_quality as m; m.scientific_as_recbole(m.DATA['scientific'], Path('$W2/scientific-kg-files'))"
W=$W2 step sci-kg-ingest kgrec ingest "$W2/scientific-kg-files" --store "$W2/scientific-kg/store" --no-progress
W=$W2 step sci-kg-evaluate kgrec evaluate --store "$W2/scientific-kg/store" --out "$W2/scientific-kg/report" --models text-zero-shot,graph-only,fused --no-progress
