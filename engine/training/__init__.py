"""Training: protocols, studies and the training of one (backbone, fold)."""
