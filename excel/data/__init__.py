"""Data: where dataset files are, the dataset of one split, training augmentation, the data order."""
