"""Jobs: the on-disk queue, sweep expansion, executors and the worker that runs them."""
