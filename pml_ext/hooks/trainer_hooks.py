"""AdaptiveController's PML-trainer side: the two hooks a trainer takes, and saving with the models."""
from __future__ import annotations

from typing import Any, Callable

__all__ = ["PMLTrainerHooks"]


class PMLTrainerHooks:
    """Mixin for a controller with ``observe()``, ``step()`` and ``state_dict()``: plugs it into
    PML's trainers and ``HookContainer`` (records, model saving, resuming)."""

    def attach(self, trainer: Any, name: str = "adaptive_controller") -> None:
        """Put the controller in ``trainer.adaptive_controllers[name]``.

        A ``HookContainer`` wrapped by :meth:`wrap_hook_container` saves and loads the
        objects of that dict with the models (``<name>_<epoch>.pth``), so call this
        before ``hooks.load_latest_saved_models(trainer, folder)`` when resuming.
        """
        controllers = getattr(trainer, "adaptive_controllers", None)
        if not isinstance(controllers, dict):
            controllers = {}
            trainer.adaptive_controllers = controllers
        controllers[name] = self

    def wrap_hook_container(self, hooks: Any = None, end_of_epoch_hook: Callable | None = None,
                            name: str = "adaptive_controller") -> tuple[Callable, Callable]:
        """``(end_of_iteration_hook, end_of_epoch_hook)`` for a PML trainer.

        The iteration hook calls :meth:`observe`, then ``hooks.end_of_iteration_hook``.
        The epoch hook calls :meth:`step`, logs the controller with ``hooks.record_keeper``
        (group ``<name>_AdaptiveController``, x = the epoch), then runs
        ``end_of_epoch_hook`` (typically ``hooks.end_of_epoch_hook(tester, ...)``) and
        returns its verdict (False stops training). The step comes first so the models
        saved by that hook go with the setting of the next epoch.

        Args:
            hooks: a PML ``logging_presets.HookContainer`` or None. Its
                ``saveable_trainer_objects`` gains ``"adaptive_controllers"``.
            end_of_epoch_hook: the container's epoch hook, already built, or None.
            name: key of the controller in ``trainer.adaptive_controllers`` and in logs.
        """
        if hooks is not None:
            saveable = getattr(hooks, "saveable_trainer_objects", None)
            if isinstance(saveable, list) and "adaptive_controllers" not in saveable:
                saveable.append("adaptive_controllers")

        def end_of_iteration_hook(trainer: Any) -> None:
            self.observe()
            if hooks is not None:
                hooks.end_of_iteration_hook(trainer)

        def end_of_epoch_hook_(trainer: Any) -> bool:
            self.attach(trainer, name)
            self.step()
            record_keeper = getattr(hooks, "record_keeper", None)
            if record_keeper is not None:
                record_keeper.update_records({name: self}, trainer.epoch)
            if end_of_epoch_hook is None:
                return True
            return end_of_epoch_hook(trainer)

        return end_of_iteration_hook, end_of_epoch_hook_
