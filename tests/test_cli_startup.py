"""Start-up cost: the command line parses (and rejects) its arguments without importing torch or transformers, and
`import minivlm_hf` stays light yet registers every Auto class before transformers can be used.

Each check runs in a fresh interpreter: the test process itself has long imported torch and transformers.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from minivlm_hf.cli import COMMAND_MODULES

HEAVY = ("torch", "transformers", "torchvision", "timm", "numpy", "PIL", "datasets", "evaluate")
LAZY_SUBMODULES = ("data", "training", "benchmark", "hub", "export", "fast", "metrics", "convert", "inference")


def _run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args, "-c", code], capture_output=True, text=True, timeout=300)


def _imported_modules(importtime_stderr: str) -> set[str]:
    """Module names of `python -X importtime` output ("import time: self | cumulative | name")."""
    lines = importtime_stderr.splitlines()
    return {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}


def test_parser_help_and_bad_arguments_import_no_torch():
    code = f"""
import contextlib, io, json, sys
from minivlm_hf.cli import COMMAND_MODULES, build_parser, main

codes, err = {{}}, io.StringIO()
for argv in [[], ["--help"], *([name, "--help"] for name in COMMAND_MODULES), ["caption"], ["no-such-command"],
             ["answer", "x.png", "--model", "m", "--top-k", "three"]]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err if not argv else io.StringIO()):
        try:
            codes[" ".join(argv)] = main(argv)
        except SystemExit as exit:
            codes[" ".join(argv)] = exit.code
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(json.dumps({{"codes": codes, "heavy": heavy, "no_command_stderr": err.getvalue()}}))
"""
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["heavy"] == []
    codes = report["codes"]
    assert codes["--help"] == 0
    assert codes[""] == 2 and all(name in report["no_command_stderr"] for name in COMMAND_MODULES)  # as `hf` does
    for name in COMMAND_MODULES:
        assert codes[f"{name} --help"] == 0, name
    assert codes["caption"] == 2 and codes["no-such-command"] == 2  # argparse: usage + one-line error
    assert codes["answer x.png --model m --top-k three"] == 2


def test_console_script_help_imports_no_torch():
    script = Path(sys.executable).with_name("minivlm-hf")
    if not script.exists():
        pytest.skip("minivlm-hf console script not installed next to this interpreter")
    result = subprocess.run([sys.executable, "-X", "importtime", str(script), "--help"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for name in COMMAND_MODULES:
        assert name in result.stdout
    imported = _imported_modules(result.stderr)
    assert "minivlm_hf.cli" in imported  # the importtime output was parsed
    assert not {m for m in imported if m.split(".")[0] in HEAVY}


# How the package registers itself, as `minivlm_hf.registration` declares it.
_EXPECTED_REGISTRATION = r"""
import json, sys
{first_import}
before = sorted(m for m in ("torch", "transformers") if m in sys.modules)
from transformers import (AutoModel, AutoModelForImageTextToText, AutoModelForObjectDetection,
                          AutoModelForPreTraining, AutoModelForVisualQuestionAnswering)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING
from transformers.pipelines import PIPELINE_REGISTRY
import minivlm_hf as M

found = {{
    "config": [CONFIG_MAPPING["minivlm"] is M.MiniVLMConfig, CONFIG_MAPPING["minivlm_tee"] is M.TEEConfig],
    "models": [
        AutoModel._model_mapping[M.TEEConfig] is M.TEEModel,
        AutoModelForObjectDetection._model_mapping[M.TEEConfig] is M.TEEForObjectDetection,
        AutoModel._model_mapping[M.MiniVLMConfig] is M.MiniVLMModel,
        AutoModelForPreTraining._model_mapping[M.MiniVLMConfig] is M.MiniVLMForPreTraining,
        AutoModelForImageTextToText._model_mapping[M.MiniVLMConfig] is M.MiniVLMForImageCaptioning,
        AutoModelForVisualQuestionAnswering._model_mapping[M.MiniVLMConfig] is M.MiniVLMForQuestionAnswering,
    ],
    "image_processor": [
        IMAGE_PROCESSOR_MAPPING[config] == {{"torchvision": M.MiniVLMImageProcessor, "pil": M.MiniVLMImageProcessorPil}}
        for config in (M.TEEConfig, M.MiniVLMConfig)
    ],
    "processor": [PROCESSOR_MAPPING[M.MiniVLMConfig] is M.MiniVLMProcessor],
    "pipeline": [PIPELINE_REGISTRY.check_task("minivlm-vqa")[1]["impl"].__name__ == "MiniVLMVQAPipeline"],
    "remote_code": {{cls.__name__: cls.__dict__.get("_auto_class") for cls in (
        M.TEEConfig, M.MiniVLMConfig, M.TEEModel, M.TEEForObjectDetection, M.MiniVLMModel, M.MiniVLMForPreTraining,
        M.MiniVLMForImageCaptioning, M.MiniVLMForQuestionAnswering, M.MiniVLMForImageTextRetrieval,
        M.MiniVLMForVisualReasoning, M.MiniVLMImageProcessor, M.MiniVLMProcessor)}},
}}
lazy = sorted(name for name in {lazy!r} if f"minivlm_hf.{{name}}" in sys.modules)
print(json.dumps({{"before": before, "found": found, "lazy_loaded": lazy}}))
"""

EXPECTED_AUTO_CLASS = {
    "TEEConfig": "AutoConfig", "MiniVLMConfig": "AutoConfig", "TEEModel": "AutoModel",
    "TEEForObjectDetection": "AutoModelForObjectDetection", "MiniVLMModel": "AutoModel",
    "MiniVLMForPreTraining": "AutoModelForPreTraining", "MiniVLMForImageCaptioning": "AutoModelForImageTextToText",
    "MiniVLMForQuestionAnswering": "AutoModelForVisualQuestionAnswering", "MiniVLMForImageTextRetrieval": "AutoModel",
    "MiniVLMForVisualReasoning": "AutoModel", "MiniVLMImageProcessor": "AutoImageProcessor",
    "MiniVLMProcessor": "AutoProcessor",
}


@pytest.mark.parametrize(
    "first_import, imports_transformers",
    [
        ("import minivlm_hf", False),  # registered when transformers is first imported
        ("import transformers; import minivlm_hf", True),  # registered at once
        ("import minivlm_hf.modeling.modeling_minivlm_tee", True),  # a model file first (e.g. unpickling)
    ],
)
def test_import_registers_every_auto_class(first_import, imports_transformers):
    result = _run_python(_EXPECTED_REGISTRATION.format(first_import=first_import, lazy=LAZY_SUBMODULES))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert ("transformers" in report["before"]) is imports_transformers
    if first_import == "import minivlm_hf":
        assert report["before"] == []  # neither torch nor transformers
    found = report["found"]
    for kind in ("config", "models", "image_processor", "processor", "pipeline"):
        assert all(found[kind]), (kind, found[kind])
    assert found["remote_code"] == EXPECTED_AUTO_CLASS
    assert report["lazy_loaded"] == []  # data, training, benchmark, ... load only when used


def test_lazy_attributes():
    import minivlm_hf
    from minivlm_hf.modeling.configuration_minivlm import MiniVLMConfig

    assert minivlm_hf.MiniVLMConfig is MiniVLMConfig
    assert minivlm_hf.data.__name__ == "minivlm_hf.data"
    assert {"MiniVLMConfig", "TEEForObjectDetection", "data", "training"} <= set(dir(minivlm_hf))
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        minivlm_hf.NoSuchThing  # noqa: B018
