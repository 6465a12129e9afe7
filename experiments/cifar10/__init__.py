"""CIFAR-10 with ConvPool-CNN-C, the weight-normalisation paper's protocol (the paper's Table 10)."""
