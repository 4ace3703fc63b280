"""Models: the backbones, the in-graph layers, and loading a trained model to classify images."""
