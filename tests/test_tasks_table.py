"""One name per task: the command line, the loaders, the Hub variants, the demo and the web demo read one table."""

import minivlm_hf
from minivlm_hf.cli import build_parser
from minivlm_hf.hub.model_card import TASK_TAGS, TASK_TITLES
from minivlm_hf.hub.variants import ARCHITECTURE_TASKS, TASK_MODELS
from minivlm_hf.hub.variants import TASKS as INIT_TASKS
from minivlm_hf.io.loading import TASK_ARCHITECTURES
from minivlm_hf.registration import remote_auto_classes
from minivlm_hf.serve.models import ARCHITECTURE_TASKS as SERVED
from minivlm_hf.tasks import TASK_NAMES, TASKS, task_of_architecture
from minivlm_hf.training.demo import AUTO_CLASSES
from minivlm_hf.training.recipes import STAGES


def _choices(parser, command, dest):
    sub = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices[command]
    return next(a.choices for a in sub._actions if a.dest == dest)


def test_every_entry_point_names_the_tasks_of_the_table():
    parser = build_parser()
    assert list(_choices(parser, "train", "stage")) == list(TASK_NAMES) == list(STAGES)
    assert set(_choices(parser, "init", "task")) == set(INIT_TASKS) == set(TASK_NAMES)
    assert list(TASK_ARCHITECTURES) == list(TASK_NAMES) == list(AUTO_CLASSES)
    assert set(SERVED.values()) == set(TASK_NAMES) - {"pretrain"}
    assert set(TASK_TITLES) == set(TASK_TAGS) == set(TASK_MODELS) == set(TASK_NAMES)


def test_each_task_names_a_real_class_and_the_auto_class_that_loads_it():
    auto = {cls.__name__: name for cls, name in remote_auto_classes().items()}
    for name, task in TASKS.items():
        assert hasattr(minivlm_hf, task.architecture)
        assert auto[task.architecture] == task.auto_class == AUTO_CLASSES[name]
        assert task_of_architecture(task.architecture) == name == ARCHITECTURE_TASKS[task.architecture]
        assert TASK_MODELS[name] == (task.architecture, task.auto_class, task.pipeline_tag)
    assert task_of_architecture("MiniVLMModel") is None and task_of_architecture("BertModel") is None
