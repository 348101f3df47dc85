"""SecAgg+ secure aggregation: pure protocol arithmetic and the client/server steps.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", CCS 2017; Bell et al., "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020. The ClientApp adapter lives in
``edge_client/secagg_client.py``, the coordinator's in ``coordinator/secagg_exchange.py``.
"""

from privacy.secagg.config import SecAggConfig, SecAggParams

__all__ = ["SecAggConfig", "SecAggParams"]
