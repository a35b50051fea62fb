"""Building objects from a merged config: the registry that turns class names into classes
(users' registrations, then pml_ext, PML, torch and torchvision), the object factory that
builds models, losses, miners, samplers, optimizers and controllers, PB's model and trainer
conventions, the data sets (bundled, image folders, feature files) and the split manager
with its checks. It reads configs (``runner.config``) and nothing above it: it neither
trains nor writes an experiment folder.
"""
