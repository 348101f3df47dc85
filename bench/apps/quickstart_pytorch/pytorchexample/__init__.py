"""pytorchexample: the quickstart-pytorch pattern on offline CIFAR-10-shaped data."""
