"""The command line (`atelier ...`) and the orchestration of stages: the top layer."""
