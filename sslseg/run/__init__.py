"""From a config to a finished run: composition and recipes (cli, recipes), checks, the fit (experiment, fitting),
stages, checkpoints, loggers and callbacks, the console."""
