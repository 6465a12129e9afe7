"""Machine translation with Nematus' RNNSearch (GRU encoder, conditional GRU decoder), scored with sacrebleu."""
