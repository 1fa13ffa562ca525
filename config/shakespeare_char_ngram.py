# The head experiment with the sigmoid head trained on *sets* of right answers: after each context, every
# character that followed the same 4 characters (ngram_k, by default 4) anywhere in the train split (about 10
# of the 65 on average), not only the one that did. Softmax cannot be trained on this; all else as
# shakespeare_char_softmax.py.
include("shakespeare_char_softmax.py")

out_dir = "out-heads/ngram"
head = "sigmoid"
sigmoid_targets = "ngram"
