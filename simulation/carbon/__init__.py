"""Carbon accounting for simulated clients: hourly intensity traces (``trace``), the
shipped sample traces (``sample_traces``) and per-client energy and CO2 (``accounting``)."""
