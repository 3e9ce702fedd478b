"""The run-folder contract: names, atomic files, status and liveness, prediction records."""
