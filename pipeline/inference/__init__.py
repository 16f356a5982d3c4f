"""Using a model: predict, the inference package, the HTTP server and the self-contained runtime ``asc_infer``."""
