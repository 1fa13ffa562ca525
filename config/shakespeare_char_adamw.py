# The quickstart with AdamW for every parameter, as it was before Muon: 4,200 steps in the same ~5 minutes
# (docs/results.md, "AdamW and Muon on the quickstart"). The output-head and LLaMA experiments build on this.
# python train.py config/shakespeare_char_adamw.py
include("shakespeare_char.py")

out_dir = "out-shakespeare-char-adamw"
optimizer = "adamw"
max_iters = 4200
lr_decay_iters = 4200  # = max_iters
eval_interval = 300  # 15 evaluations
