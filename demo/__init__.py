"""Demo stand-ins (NOT user-facing): tiny random models of the real architectures for tests and the embedded
default of ``scripts/run_example.sh``, and a stand-in text encoder where a real umt5-xxl cannot be tiny.
Their output is not meaningful imagery. Nodes here are registered only with ``FRAMEMEMORY_DEMO=1``."""
