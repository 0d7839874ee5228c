"""What is planned: the architecture table, catalogs, specs, the tensor inventory."""
