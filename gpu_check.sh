#!/usr/bin/env bash
# Every GPU check in one go, in under 10 minutes on one GPU: needs PyTorch with CUDA, transformers, tiktoken and
# pytest (not `datasets`: the tests read the bundled Tiny Shakespeare).
#
#   bash gpu_check.sh [RESULTS_DIR] [bench.py settings...]      # default RESULTS_DIR: gpu_results
#
# 1. machine.txt  the GPU, driver, torch and CUDA versions
# 2. tests.txt    the CUDA tests (tests/test_cuda.py): every head in bf16, compile vs eager, the fused loss
#                 against the unfused one, the KV cache in fp32 and bf16, fp16 with the GradScaler, resume,
#                 torchrun with nccl, the padded vocabulary
# 3. grid.txt     bench.py --what grid at GPT-2 124M's shape: 12 x 1024 tokens a step, GPT-2's 50,257
#                 outputs, the training dtype (bf16), each head eager and compiled, and softmax and bayes eager
#                 without the fused loss (the A/B of heads.FusedCE): ms/iter, tokens/s, MFU, peak memory;
#                 then sampling tokens/s without the KV cache, with it, and compiled
# 4. hellaswag.txt bench.py --what hellaswag: ms per HellaSwag example with GPT-2 124M, the context cached and
#                 the plain rows, and the 10,042 examples' time at that rate
# 5. train.txt    the real training loop, not only the bench: Tiny Shakespeare (the bundled copy) for 1,000
#                 steps with nanoGPT's GPU recipe (6 x 384, 64 x 256 tokens a step, compiled); on an H200 on
#                 4 Dec 2026 this reached val 1.5285 in 45 s, and nanoGPT's own train.py 1.5217 in 60 s
# Extra arguments go to bench.py (e.g. --device=cpu --n_layer=2 ... to try the script without a GPU).
# A step that fails or runs out of time does not stop the next; summary.txt has each step's exit status.
set -u
cd "$(dirname "$0")"
OUT=${1:-gpu_results}
shift $(( $# > 0 ? 1 : 0 ))
mkdir -p "$OUT"
: > "$OUT/summary.txt"

step() {  # name, seconds, command...
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    echo "$name: exit $? in $(( SECONDS - start )) s" | tee -a "$OUT/summary.txt"
}

step machine 60 bash -c 'nvidia-smi; python -c "import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else \"no GPU\")"'
step tests 260 python -m pytest -q -p no:cacheprovider tests/test_cuda.py
step grid 440 python bench.py config/owt_gpt2.py --what=grid --vocab_size=50257 --gradient_accumulation_steps=1 \
    --batch_size=12 --block_size=1024 --bench_iters=10 --warmup=3 --sample_tokens=200 --repeats=3 "$@"
step hellaswag 120 python bench.py config/owt_gpt2.py --what=hellaswag --vocab_size=50257 --repeats=8 "$@"
step train 150 bash -c 'python prepare_data.py shakespeare_char && python train.py --dataset=shakespeare_char \
    --out_dir=/tmp/gpu_check_train --n_layer=6 --n_head=6 --n_embd=384 --block_size=256 --batch_size=64 \
    --gradient_accumulation_steps=1 --dropout=0.2 --bias=False --learning_rate=1e-3 --max_iters=1000 \
    --lr_decay_iters=5000 --min_lr=1e-4 --beta2=0.99 --warmup_iters=100 --eval_interval=500 --eval_iters=200 \
    --log_interval=100 --compile=True --device=cuda'
cat "$OUT/grid.txt" "$OUT/hellaswag.txt"
tail -n 4 "$OUT/train.txt"
