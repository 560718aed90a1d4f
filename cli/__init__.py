"""The command line (`atelier ...`), the demo and orchestration across stages: the top layer."""
