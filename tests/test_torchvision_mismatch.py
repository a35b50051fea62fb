"""torchvision built for another torch: a clear error by default; the schema workaround only when
switched on, with a warning.

The broken install is made for real in a child process (whose ``sys.modules`` and operator
registry the test may spoil): torch refuses to load torchvision's compiled library, as it
does beside a torch build the library was not compiled for, and ``import torchvision``
then fails with torchvision's own error ("operator torchvision::nms does not exist").
Oracles: that error text, the installed versions read from package metadata, and what the
child observes of torch's operator registry and the log.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torchvision")

SWITCH = "PML_EXT_TORCHVISION_SCHEMA_WORKAROUND"

CHILD = textwrap.dedent("""
    import importlib.metadata, json, logging, sys
    import torch

    load_library = torch.ops.load_library

    def refuse(path):
        if "torchvision" in str(path):
            raise OSError("libc10_cuda.so: cannot open shared object file: No such file or directory")
        return load_library(path)

    torch.ops.load_library = refuse
    try:
        import torchvision  # noqa: F401
        plain_import = "imported"
    except RuntimeError as exc:
        plain_import = str(exc)
    for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
        del sys.modules[name]

    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append((record.levelname, record.getMessage()))
    logging.getLogger("pml_ext").addHandler(handler)

    from pml_ext.runner.config.config_error import ConfigError
    from pml_ext.runner.objects.registry import Registry
    from pml_ext.runner.objects.vision import import_torchvision

    def outcome(call):
        try:
            value = call()
            return ["ok", getattr(value, "__name__", type(value).__name__)]
        except ConfigError as exc:
            return [type(exc).__name__, str(exc)]

    def declared(op):
        try:
            getattr(torch.ops.torchvision, op)
            return True
        except (AttributeError, RuntimeError):
            return False

    result = {"plain_import": plain_import, "vision_version": importlib.metadata.version("torchvision"),
              "torch_version": torch.__version__, "first": outcome(import_torchvision),
              "second": outcome(import_torchvision), "resnet": outcome(lambda: Registry().get("model", "resnet18", "f.yaml", "models.trunk")),
              "mlp": outcome(lambda: Registry().get("model", "MLP")),
              "linear": outcome(lambda: Registry().get("model", "Linear")),
              "nms_declared": declared("nms"), "records": records}
    if result["first"][0] == "ok":
        model = import_torchvision().models.resnet18(num_classes=3)
        result["resnet_output"] = list(model.eval()(torch.zeros(1, 3, 32, 32)).shape)
        try:
            torch.ops.torchvision.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
            result["nms_call"] = "ran"
        except Exception as exc:  # noqa: BLE001 - any failure is the expected outcome
            result["nms_call"] = type(exc).__name__
    print(json.dumps(result))
""")


def run_child(switch: str | None) -> dict:
    env = dict(os.environ)
    env.pop(SWITCH, None)
    if switch is not None:
        env[SWITCH] = switch
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("switch", [None, "0"])
def test_a_broken_torchvision_is_a_clear_error_naming_the_fix_and_the_switch(switch):
    result = run_child(switch)
    assert result["plain_import"] == "operator torchvision::nms does not exist"  # the real failure mode
    kind, message = result["first"]
    assert kind == "TorchvisionMismatch"
    assert f"torchvision {result['vision_version']} was built for another torch" in message
    assert f"this is torch {result['torch_version']}" in message
    assert "Install matching builds" in message and "operator torchvision::nms does not exist" in message
    assert f"{SWITCH}=1" in message
    assert result["second"] == result["first"]  # not retried: the same error, no new state
    # A lookup that may need torchvision says why it failed; other lookups still work.
    kind, message = result["resnet"]
    assert kind == "ConfigError" and message.startswith(
        "f.yaml: models.trunk: unknown model 'resnet18' (torchvision, where it may be, cannot be imported: ")
    assert f"{SWITCH}=1" in message
    assert result["mlp"] == ["ok", "MLP"] and result["linear"] == ["ok", "Linear"]
    # Nothing global changed and nothing was worked around.
    assert not result["nms_declared"]
    assert result["records"] == []


def test_the_switch_declares_the_schemas_with_a_warning_and_the_models_work():
    result = run_child("1")
    assert result["first"] == ["ok", "torchvision"] and result["resnet"] == ["ok", "resnet18"]
    assert result["resnet_output"] == [1, 3]
    assert result["nms_declared"]  # the schema exists without a kernel: calling it fails loudly
    assert result["nms_call"] not in ("ran", None)
    warnings = [message for level, message in result["records"] if level == "WARNING"]
    assert len(warnings) == 1 and f"{SWITCH}=1" in warnings[0] and "torchvision::nms" in warnings[0]
