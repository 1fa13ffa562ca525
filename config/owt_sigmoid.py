# GPT-2 124M on OpenWebText with the sigmoid/BCE head; everything else as config/owt_gpt2.py.
#   torchrun --standalone --nproc_per_node=8 train.py config/owt_sigmoid.py
include("owt_gpt2.py")

out_dir = "out-owt-sigmoid"
head = "sigmoid"
