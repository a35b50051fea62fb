"""Reading configs: a powerful-benchmarker config folder (one YAML file per category) becomes
one merged :class:`~.experiment_config.ExperimentConfig`, with the command line's
``--key value`` overrides and PB's ``~APPLY~``/``~SWAP~``/``~OVERRIDE~`` flags applied
(:mod:`.config_merge`), Bayesian search ranges found or rejected (:mod:`.search_space`), and
every error a :class:`~.config_error.ConfigError` naming the file and key. Nothing here builds
an object or touches an experiment folder; it imports nothing else of the runner.
"""
