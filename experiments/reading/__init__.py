"""CNN / Daily Mail reading comprehension with the bidirectional Attentive Reader (the paper's Table 6)."""
