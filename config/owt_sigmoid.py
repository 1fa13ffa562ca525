# GPT-2 124M on OpenWebText with the sigmoid/BCE head; everything else as config/owt_gpt2.py.
#   torchrun --standalone --nproc_per_node=8 train.py config/owt_sigmoid.py
import os
exec(open(os.path.join(os.path.dirname(__file__), "owt_gpt2.py")).read())

out_dir = "out-owt-sigmoid"
head = "sigmoid"
