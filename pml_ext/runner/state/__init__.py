"""What a run keeps, on disk and in memory: the checkpoint store (atomic saves, resume from
the last complete epoch), the run's state beside the models (sampler, miners, controllers,
random generators and the one per-epoch seeding rule), the experiment folder's lock and
guards, the record-keeper tables and the experiment's metrics report, and the main job's
folder. It sits beside ``runner.run``, which uses it; it imports only ``runner.config``.
"""
