"""The quickstart-sklearn pattern: a scikit-learn LogisticRegression per client, FedAvg of its coefficients."""
