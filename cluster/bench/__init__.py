"""`owc bench`: the load driver, load scenarios (package data under scenarios/), the
scenario runner, the report writer and the comparison stack. The benchmarks under
loadtests/ build on these; nothing here imports loadtests."""
