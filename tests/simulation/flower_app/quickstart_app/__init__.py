"""quickstart-app: a Flower / PyTorch app."""
