#!/usr/bin/env bash
# The GPU machine's check, as one call (see README "GPU path"): install what its image lacks, run the CUDA tests,
# the network-only throughput, `selfcheck` over real photos and every learned profile, a processes-per-GPU sweep
# and a profile of one GPU decode. Carries: .whl (imagecodecs, constriction, crc32c wheels for its Python 3.12)
# and .devdata/dev (dev photos). Everything lands in $OUT; each stage has its own time limit.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log() { echo "=== $(date -u +%T) $*"; }
{
log setup
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
# pixark itself without pip: the package layout of pyproject.toml as links (pixark.codec = codec/, ...)
mkdir -p /tmp/pkg/pixark && cp pixark/__init__.py /tmp/pkg/pixark/
for d in codec pipeline jobs; do ln -sfn "$PWD/$d" /tmp/pkg/pixark/$d; done
export PYTHONPATH=/tmp/pkg:/tmp/site
nvidia-smi -L; python3 -c "import torch, numba, numpy; print('torch', torch.__version__, 'numba', numba.__version__,
'numpy', numpy.__version__, torch.cuda.get_device_name())"; nproc
log netbench
timeout 60 python3 infra/gpu/netbench.py cuda --json > "$OUT/netbench.json"; cat "$OUT/netbench.json"
log pytest
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_quant.py \
  tests/test_mspsm.py::test_gpu_streams_equal_cpu_streams tests/test_msr.py::test_gpu_decode_of_cpu_stream -ra
log selfcheck
timeout 240 python3 -m pixark.jobs.selfcheck .devdata/dev --device cuda --limit 80 --per-profile 6 --side 2048 \
  --cpu-workers 14 --device-workers 8 --json > "$OUT/selfcheck.json"
echo "selfcheck exit $?"; python3 -c "
import json; d = json.load(open('$OUT/selfcheck.json')); print(d['verdict'], d['device_name'], d['megapixels'],
'Mpx; device aggregate', d['device_aggregate_mps'], 'MP/s; failures', d['failures'])
for r in d['profiles']: print(r)"
for n in 1 16; do
  log "sweep: $n device processes"
  timeout 100 python3 -m pixark.jobs.selfcheck .devdata/dev/cid22 --device cuda --spec mspsm --limit 24 --side 0 \
    --cpu-workers 14 --device-workers $n --json > "$OUT/sweep-$n.json"
  python3 -c "import json; d = json.load(open('$OUT/sweep-$n.json')); print(d['verdict'], d['device_workers'],
'processes:', d['device_aggregate_mps'], 'MP/s encode+decode;', d['profiles'][0])"
done
log profile
timeout 90 python3 -c "
import cProfile, pstats, io, numpy as np, torch
import pixark.codec as pc
px = pc.load(open(sorted(__import__('glob').glob('.devdata/dev/gb82/*.png'))[0], 'rb').read()).pixels
s = pc.encode(px, 'mspsm', device='cuda'); pc.decode(s, device='cuda')
for what, fn in (('encode', lambda: pc.encode(px, 'mspsm', device='cuda')), ('decode', lambda: pc.decode(s, device='cuda'))):
    pr = cProfile.Profile(); pr.enable(); fn(); torch.cuda.synchronize(); pr.disable()
    b = io.StringIO(); pstats.Stats(pr, stream=b).sort_stats('tottime').print_stats(18); print(what, px.shape, b.getvalue())
" > "$OUT/profile.txt" 2>&1; head -60 "$OUT/profile.txt"
log done
} 2>&1 | tee "$OUT/run.log"
