# The head experiment with the sigmoid head (independent Bernoulli per token, BCE); all else as softmax.
include("shakespeare_char_softmax.py")

out_dir = "out-heads/sigmoid"
head = "sigmoid"
