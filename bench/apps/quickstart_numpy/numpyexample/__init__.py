"""The quickstart-numpy pattern: NumPy arrays trained by a ClientApp, FedAvg ServerApp."""
