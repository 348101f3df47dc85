"""The opacus pattern: each client trains with Opacus DP-SGD (PrivacyEngine) and reports its epsilon, FedAvg ServerApp."""
