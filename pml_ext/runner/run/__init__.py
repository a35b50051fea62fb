"""Running an experiment: :class:`~.experiment_runner.ExperimentRunner` reads and checks a
config, fixes one frozen :class:`~.run_context.RunContext` per process (rank, world size,
device, seed, folders, flags), and hands it to one :class:`~.scheme_run.SchemeRun` per split
scheme, which builds, trains, evaluates and checkpoints. Here too: the end-of-epoch updates,
torch.distributed (shards, DDP, waiting for rank 0), evaluating saved models, interrupts,
console output, and every write into PML's trainer, tester and hooks
(:mod:`.pml_internals`). It uses ``runner.objects``, ``runner.state`` and ``runner.config``.
"""
