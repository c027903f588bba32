#!/usr/bin/env bash
# Packs spconv-cu126 and the other wheels the GPU benchmarks need into one xz archive of their installed files,
# .gpux/site.tar.xz (~41 MB against ~105 MB of wheels), so that a single device call carries them beside the working
# tree and the scan instead of four calls carrying wheel parts one after the other.
#
#   EXTRA_WHEELS="fastcore<1.15 threadpoolctl plotly narwhals plyfile tqdm" bash ../shared/tools/gpu/prepare_wheels.sh   # once: wheels into .gpu1/ ...
#       (sonata_nb imports fastcore; the trainer's benchmarks import its report module: plotly, narwhals, plyfile, tqdm;
#        without them they fail at import, as on 2026-12-06 20:58 and 23:41)
#   bash bench/device_bundle.sh                    # or WHEELS=dir-of-wheels bash bench/device_bundle.sh
#   device call, carry [".gpux", ".benchdata"]:    bash .gpux/install.sh && export PYTHONPATH=/tmp/site:$PWD && ...
#
# plotly's bundled plotly.js (plotly/package_data, ~4.6 MB) is left out: the benchmarks write no report; the carried
# total (bundle + scan + tree) must stay under 64 MiB. Compression takes 3-4 minutes on 2 cores.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -n "${WHEELS:-}" ]; then
  cp "$WHEELS"/*.whl "$tmp/"
else
  ls .gpu[0-9]*/part.* >/dev/null 2>&1 || { echo "no .gpuN/part.* here: run ../shared/tools/gpu/prepare_wheels.sh first, or set WHEELS" >&2; exit 1; }
  cat $(ls .gpu[0-9]*/part.* | sort -t/ -k2) | tar -C "$tmp" -xf -
  mv "$tmp"/w/*.whl "$tmp/"
fi
mkdir -p "$tmp/site"
for w in "$tmp"/*.whl; do unzip -q -o "$w" -d "$tmp/site"; done
rm -rf "$tmp"/site/plotly/package_data "$tmp"/site/plotly-*.data
mkdir -p .gpux
tar -C "$tmp" -cf - site | xz -T0 -9e > .gpux/site.tar.xz
cat > .gpux/install.sh <<'SH'
# On the device: unpack the installed files into /tmp/site (once per machine; a warm machine keeps them)
[ -d /tmp/site/spconv ] || python3 -c "import tarfile; tarfile.open('.gpux/site.tar.xz').extractall('/tmp')"
SH
grep -qx "/.gpux/" .git/info/exclude 2>/dev/null || echo "/.gpux/" >> .git/info/exclude
du -sh .gpux/site.tar.xz
