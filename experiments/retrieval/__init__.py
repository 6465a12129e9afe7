"""Image-caption retrieval with order embeddings on COCO (the paper's Tables 7 and 8)."""
