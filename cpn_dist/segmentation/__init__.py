"""Stage 3: DeepLab on the pseudo labels — model, training task, multi-scale inference with CRF."""
