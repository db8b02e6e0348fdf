"""PyTorch Lightning recipes: `python -m recipes fit --config configs/...`."""
