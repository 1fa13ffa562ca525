# The output-head experiment (the study and its results: docs/heads.md): the quickstart's model and data on a
# shorter schedule.
# The sigmoid and bayes configs run this file and change only `head` (ngram: the sigmoid head on sets of
# right answers); compare with evaluate.py:
#   for h in softmax sigmoid bayes ngram; do for s in 1 2 3; do
#     python train.py config/shakespeare_char_$h.py --seed=$s --out_dir=out-heads/$h-$s
#     python evaluate.py --out_dir=out-heads/$h-$s --set_k=4; done; done
#   python evaluate.py --compare out-heads/*
# head: softmax, the default.
include("shakespeare_char_adamw.py")

out_dir = "out-heads/softmax"
max_iters = 2000  # 3.1M tokens, ~2.5 minutes on 2 cores
lr_decay_iters = 2000
eval_interval = 250
