"""Data: reading X-ray files and image folders into an imported, fingerprinted dataset and its folds."""
