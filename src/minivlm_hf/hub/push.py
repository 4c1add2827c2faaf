"""`minivlm-hf push`: upload a MiniVLM checkpoint folder to the Hub (or any Hub-compatible endpoint).

Everything is checked before the first request: the repo id has a namespace, the folder holds safetensors weights,
the weights match the model its `config.json` describes (names and shapes, read from the safetensors headers), and
the model code can be shipped. The commit is assembled in memory (the folder is only read, never written): weights,
configs with the complete `auto_map` (and `custom_pipelines` for VQA), processor / tokenizer files, the remote-code
files, metrics and training records, and a generated model card.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
CONFIG_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
)
RECORD_FILES = (
    "all_results.json",
    "eval_results.json",
    "test_results.json",
    "train_results.json",
    "metrics.json",
    "trainer_state.json",
    "training_config.json",
    "train_config.json",
    "training_args.json",
    "minivlm_init.json",
)
MAX_LISTED_PER_KIND = 4


class PushError(ValueError):
    """A refusal or failure with a message meant for the user (the CLI prints it in one line)."""


@dataclass
class CheckpointCheck:
    """What `check_checkpoint` found: the model class and config, the weight files and the model (meta device)."""

    folder: Path
    architecture: str
    model_class: type
    config: object
    model: object
    weight_files: list[str]
    warnings: list[str] = field(default_factory=list)


@dataclass
class PushResult:
    repo_id: str
    revision: str
    commit: str
    commit_url: str
    pr_url: str | None
    files: list[str]
    endpoint: str
    changed: bool = True

    def summary(self) -> dict:
        return {
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "changed": self.changed,
            "commit_url": self.commit_url,
            "pr_url": self.pr_url,
            "endpoint": self.endpoint,
            "files": self.files,
        }


# ----------------------------------------------------------------------------------------------------------------
# Checks (no network)
# ----------------------------------------------------------------------------------------------------------------


def check_repo_id(repo_id: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if "/" not in repo_id:
        raise PushError(
            f"repo id {repo_id!r} has no namespace: use 'namespace/name' (your user name or an organisation), "
            f"e.g. 'my-user/{repo_id}'"
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise PushError(f"invalid repo id {repo_id!r}: {err}") from err
    if repo_id.count("/") != 1:
        raise PushError(f"invalid repo id {repo_id!r}: expected exactly 'namespace/name'")
    return repo_id


def local_file(folder: Path, name: str) -> Path | None:
    """``folder / name`` if it exists as a regular file that resolves inside ``folder`` (None if absent). A path
    outside the folder (absolute, ``..``, a symlink out of it) or something that is not a regular file is refused:
    only the folder's own files are ever uploaded."""
    from ..io.checkpoints import inside

    path = inside(folder, name, resolve=False) if isinstance(name, str) else None
    if path is None:
        raise PushError(f"refusing to push {folder}: {name!r} is not a file inside the folder")
    if not os.path.lexists(path):
        return None
    try:
        path.resolve(strict=True).relative_to(folder.resolve())
    except (ValueError, OSError):
        raise PushError(f"refusing to push {folder}: {name} is a link to {os.path.realpath(path)}, outside the "
                        "folder") from None
    if not path.is_file():
        raise PushError(f"refusing to push {folder}: {name} is not a regular file")
    return path


def weight_files(folder: Path) -> list[str]:
    """The safetensors files of a checkpoint folder (single file or sharded with an index)."""
    if local_file(folder, WEIGHTS_NAME):
        return [WEIGHTS_NAME]
    index = local_file(folder, WEIGHTS_INDEX_NAME)
    if index:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise PushError(f"refusing to push {folder}: {WEIGHTS_INDEX_NAME} is not a valid index ({err})") from err
        for shard in shards:
            if not isinstance(shard, str) or not shard.endswith(".safetensors"):
                raise PushError(f"refusing to push {folder}: {WEIGHTS_INDEX_NAME} lists {shard!r}, not a "
                                ".safetensors shard")
        missing = [s for s in shards if not local_file(folder, s)]
        if missing:
            raise PushError(f"refusing to push {folder}: shards listed in {WEIGHTS_INDEX_NAME} are missing: {missing}")
        return [WEIGHTS_INDEX_NAME] + shards
    others = sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    hint = (
        f" (found {', '.join(others)}: pickled weights are not published; re-save with model.save_pretrained(), "
        "which writes safetensors)"
        if others
        else " (save the model with model.save_pretrained(folder) or build one with `minivlm-hf init`)"
    )
    raise PushError(f"refusing to push {folder}: no model weights ({WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}){hint}")


def read_safetensors_shapes(folder: Path, files: list[str]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the safetensors headers only (no tensor data is read)."""
    import struct

    shapes: dict[str, tuple[int, ...]] = {}
    for name in files:
        if not name.endswith(".safetensors"):
            continue
        path = folder / name
        try:
            with open(path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > 100_000_000:
                    raise ValueError("header too large")
                header = json.loads(f.read(length))
        except (OSError, ValueError, struct.error) as err:
            raise PushError(f"refusing to push {folder}: {name} is not a readable safetensors file ({err})") from err
        for key, info in header.items():
            if key != "__metadata__":
                shapes[key] = tuple(info["shape"])
    return shapes


def _model_classes() -> dict[str, type]:
    from ..registration import REMOTE_AUTO_CLASSES

    return {cls.__name__: cls for cls in REMOTE_AUTO_CLASSES}


def check_checkpoint(folder: str | Path) -> CheckpointCheck:
    """Refuse folders that cannot be published; build the model of `config.json` on the meta device and compare
    its state dict with the safetensors headers (names and shapes)."""
    import torch

    from ..registration import register_auto_classes

    register_auto_classes()
    folder = Path(folder)
    if not folder.is_dir():
        raise PushError(f"refusing to push {folder}: not a folder")
    files = weight_files(folder)
    for name in CONFIG_FILES + TOKENIZER_FILES + RECORD_FILES + ("README.md",):
        local_file(folder, name)  # refuses links out of the folder and non-regular files before anything is read
    config_path = local_file(folder, "config.json")
    if config_path is None:
        raise PushError(f"refusing to push {folder}: no config.json")
    try:
        config_dict = json.loads(config_path.read_text())
    except ValueError as err:
        raise PushError(f"refusing to push {folder}: config.json is not valid JSON ({err})") from err
    architectures = config_dict.get("architectures") or []
    classes = _model_classes()
    if not architectures or architectures[0] not in classes:
        raise PushError(
            f"refusing to push {folder}: config.json architectures={architectures} is not a MiniVLM model "
            f"(expected one of {', '.join(sorted(classes))})"
        )
    architecture = architectures[0]
    model_class = classes[architecture]
    config_class = model_class.config_class
    if config_dict.get("model_type") != config_class.model_type:
        raise PushError(
            f"refusing to push {folder}: config.json model_type={config_dict.get('model_type')!r} does not match "
            f"{architecture} ({config_class.model_type!r})"
        )
    try:
        config = config_class.from_pretrained(folder)
    except Exception as err:  # invalid field values: name them
        raise PushError(f"refusing to push {folder}: config.json is not a valid {config_class.__name__}: {err}") from err
    try:
        with torch.device("meta"):
            model = model_class(config)
    except Exception as err:
        raise PushError(f"refusing to push {folder}: cannot build {architecture} from config.json: {err}") from err

    stored = read_safetensors_shapes(folder, files)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    shapes = [
        f"{key}: weights {list(stored[key])} vs config {list(shape)}"
        for key, shape in expected.items()
        if key in stored and stored[key] != shape
    ]
    missing = [f"missing {key} {list(shape)}" for key, shape in expected.items() if key not in stored and key not in tied]
    unexpected = [f"unexpected {key} {list(stored[key])}" for key in stored if key not in expected]
    if shapes or missing or unexpected:
        listed = [item for group in (shapes, missing, unexpected) for item in group[:MAX_LISTED_PER_KIND]]
        total = len(shapes) + len(missing) + len(unexpected)
        more = f" (and {total - len(listed)} more)" if total > len(listed) else ""
        raise PushError(
            f"refusing to push {folder}: the weights do not match the {architecture} that config.json describes "
            f"({len(shapes)} shape mismatch(es), {len(missing)} missing, {len(unexpected)} unexpected tensor(s)): "
            + "; ".join(listed)
            + more
        )
    check = CheckpointCheck(folder, architecture, model_class, config, model, files)
    if config.model_type == "minivlm" and not (folder / "processor_config.json").is_file():
        check.warnings.append(
            "no processor_config.json: AutoProcessor will fall back to the tokenizer; save the processor "
            "(processor.save_pretrained(folder)) to publish it"
        )
    if config.model_type == "minivlm_tee" and not (folder / "preprocessor_config.json").is_file():
        check.warnings.append("no preprocessor_config.json: the image processor will not be published")
    return check


# ----------------------------------------------------------------------------------------------------------------
# Assembling the commit (in memory)
# ----------------------------------------------------------------------------------------------------------------


def _dump(data) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def _fixed_image_processor_dict(data: dict, model_type: str) -> dict:
    from ..modeling.remote_code_minivlm import IMAGE_PROCESSOR_CLASSES, PROCESSOR_CLASS

    data = dict(data)
    auto_map = dict(data.get("auto_map") or {})
    auto_map["AutoImageProcessor"] = dict(IMAGE_PROCESSOR_CLASSES)
    if model_type == "minivlm":
        auto_map["AutoProcessor"] = PROCESSOR_CLASS
    data["auto_map"] = auto_map
    return data


def remote_code_files(check: CheckpointCheck) -> dict[str, Path]:
    """`{filename: path}` of the model code to ship: the folder's copy when present, else the installed package's
    (the closure of the model module's relative imports, which includes the processor and pipeline files)."""
    import sys

    from transformers.dynamic_module_utils import get_relative_import_files

    module_file = Path(sys.modules[check.model_class.__module__].__file__)
    needed = [module_file] + [Path(p) for p in get_relative_import_files(module_file)]
    files = {}
    for path in needed:
        local = local_file(check.folder, path.name)
        files[path.name] = local if local is not None else path
    return files


def build_operations(check: CheckpointCheck, repo_id: str, card: bytes | None = None) -> list:
    """The commit's `CommitOperationAdd`s (generated files as bytes, the others read from the folder)."""
    from huggingface_hub import CommitOperationAdd

    from ..modeling.remote_code_minivlm import complete_auto_map
    from .model_card import collect_card_inputs, is_template, render_card

    folder = check.folder
    ops: dict[str, object] = {}

    def add(path_in_repo: str, content):
        ops[path_in_repo] = content

    for name in check.weight_files:
        add(name, local_file(folder, name))

    config_dict = json.loads((folder / "config.json").read_text())
    auto_map = complete_auto_map(check.model)  # the meta model's config: the folder's config.json is not touched
    config_dict["auto_map"] = auto_map
    pipelines = getattr(check.model.config, "custom_pipelines", None)
    if pipelines:
        config_dict["custom_pipelines"] = pipelines
    else:
        config_dict.pop("custom_pipelines", None)
    add("config.json", _dump(config_dict))
    if (folder / "generation_config.json").is_file():
        add("generation_config.json", folder / "generation_config.json")

    model_type = check.config.model_type
    if (folder / "preprocessor_config.json").is_file():
        data = json.loads((folder / "preprocessor_config.json").read_text())
        add("preprocessor_config.json", _dump(_fixed_image_processor_dict(data, model_type)))
    if (folder / "processor_config.json").is_file():
        data = json.loads((folder / "processor_config.json").read_text())
        from ..modeling.remote_code_minivlm import PROCESSOR_CLASS

        data["auto_map"] = {**(data.get("auto_map") or {}), "AutoProcessor": PROCESSOR_CLASS}
        if isinstance(data.get("image_processor"), dict):
            data["image_processor"] = _fixed_image_processor_dict(data["image_processor"], model_type)
        add("processor_config.json", _dump(data))
    for name in TOKENIZER_FILES + RECORD_FILES:
        if local_file(folder, name):
            add(name, folder / name)
    for name, path in remote_code_files(check).items():
        add(name, path)

    if card is None:
        readme = folder / "README.md"
        text = readme.read_text() if readme.is_file() else None
        if text is not None and not is_template(text):
            card = text.encode()  # the user's own card: published as it is
        else:
            inputs = collect_card_inputs(folder, repo_id, model=check.model)
            card = render_card(inputs, template=text).encode()
    add("README.md", card)
    return [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=content if isinstance(content, bytes) else str(content))
        for name, content in sorted(ops.items())
    ]


# ----------------------------------------------------------------------------------------------------------------
# Upload
# ----------------------------------------------------------------------------------------------------------------


def _http_status(err) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _explain(err, endpoint: str, token_given: bool, action: str) -> PushError:
    status = _http_status(err)
    if status == 401:
        how = "the token was refused" if token_given else "no token was sent"
        return PushError(
            f"the Hub at {endpoint} refused to {action} (401 Unauthorized: {how}); pass --token, set HF_TOKEN, "
            "or run `hf auth login` (the token needs write access)"
        )
    if status == 403:
        return PushError(f"the Hub at {endpoint} refused to {action} (403 Forbidden: no write access to this repo)")
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    return PushError(f"could not {action} on {endpoint}: {message}")


def push_checkpoint(
    folder: str | Path,
    repo_id: str,
    revision: str | None = None,
    private: bool = False,
    create_pr: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Check `folder`, then create the repo (exist_ok), the branch (`revision`) and one commit (or PR)."""
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    check_repo_id(repo_id)
    if revision is not None and (not revision or revision.startswith("refs/") or re.search(r"\s|\.\.", revision)):
        raise PushError(f"invalid branch name {revision!r}")
    check = check_checkpoint(folder)  # refusals happen here, before any request
    operations = build_operations(check, repo_id)
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    api = HfApi(endpoint=endpoint, token=token)
    token_given = bool(token) or get_token() is not None  # --token, HF_TOKEN or the stored login
    errors: tuple = (HfHubHTTPError, OSError)
    try:  # the HTTP client of huggingface_hub 2.x (connection errors are not OSErrors there)
        import httpx2

        errors += (httpx2.HTTPError,)
    except ImportError:
        pass
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        repo_id = getattr(url, "repo_id", None) or repo_id
    except errors as err:
        raise _explain(err, endpoint, token_given, f"create the repo {repo_id}") from err
    if revision and revision != "main":
        try:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        except errors as err:
            raise _explain(err, endpoint, token_given, f"create the branch {revision} of {repo_id}") from err
    message = commit_message or f"Upload {check.architecture} with minivlm-hf"
    try:
        head = api.repo_info(repo_id, revision=revision or "main").sha
    except errors:
        head = None
    try:
        info = api.create_commit(
            repo_id,
            operations=operations,
            commit_message=message,
            revision=revision,
            create_pr=create_pr,
        )
    except errors as err:
        raise _explain(err, endpoint, token_given, f"upload to {repo_id}") from err
    return PushResult(
        repo_id=repo_id,
        revision=revision or "main",
        commit=info.oid,
        commit_url=info.commit_url,
        pr_url=info.pr_url,
        files=[op.path_in_repo for op in operations],
        endpoint=endpoint,
        # huggingface_hub skips a commit whose files are all unchanged (and then opens no PR)
        changed=not (info.oid == head and not info.pr_url),
    )


__all__ = ["CheckpointCheck", "PushError", "PushResult", "check_checkpoint", "check_repo_id", "push_checkpoint"]
