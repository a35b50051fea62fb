"""Comparing and searching over runs: the main job that runs each method's experiment and
prints one comparison table (:class:`~.comparison_runner.ComparisonRunner`), PB's Bayesian
search over config ranges with its report (:class:`~.bayesian_search.BayesianSearch`), and
the text tables both print. The top of the runner: it starts experiments through
``runner.run``, and nothing in the runner imports it.
"""
