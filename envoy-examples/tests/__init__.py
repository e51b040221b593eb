"""End-to-end tests against a real Envoy running the filter: a package of its own, run by
scripts/test.sh with `python -m unittest discover -s envoy-examples/tests -t envoy-examples
-p '*_test.py'`. The top-level directory (envoy-examples/) is on the path then, so the demo's
helpers (mint, render, tour, upstream) are imported as they are, without path edits."""
